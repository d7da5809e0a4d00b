"""The shared remote cache: read-through on a local miss, write-through after a build.

A remote is a store at any fsspec URL (`s3://bucket/prefix`, `file:///mnt/team/cache`,
`gs://...`) with the local store's layout. Credentials never appear in the Forgefile:
s3fs, gcsfs and the rest read their own configuration (environment, profiles).

Anyone with write access to a remote can put anything there, so a fetch trusts nothing it
reads until it has checked it (docs/remote.md, "Threat model"):

- the entry: parsed by a strict schema (`documents.Entry`: names, digests, sizes), then its
  signature (`signing`): it must be made by a key this workspace trusts, over the action
  key, the entry and the build record's digest. Unsigned or untrusted: nothing is downloaded.
- the tree digest, recomputed from the manifest's (path, executable, digest) triples, must be
  the entry's digest: an `artifacts/<digest>` folder is then only ever the files it names.
  These checks need no blob: the planner makes them too (`lookup`: state `remote`), and the
  entry it read is the one a fetch in the same process uses (one read of an entry per run).
- the blobs the local store lacks, in one pool of threads that every fetch of the process
  shares (a blob two targets name is downloaded once): the remote object's size must equal
  the manifest's before a byte is read, and no more than that is read; each lands in a
  temporary file that must hash to its digest before it enters the local store.
- the provenance statement (schema, then `provenance.problem`: this key, these materials,
  these digests) and the build record (schema, and the digest the signature names).

Each read is one request where it can be: on S3 one ranged GET (`bytes=0-LIMIT`: the server sends
at most LIMIT + 1 bytes and names the object's size in Content-Range, checked before the body is
read), never a HEAD first; a local folder is read through open().

Any failure is `Untrusted`: one warning naming the key, the target and the reason, and the
target is built here. Only a failure to connect turns the remote off ("cannot be reached").

- push: the blobs the remote lacks (in parallel), the build record, then the entry, signed
  with this workspace's key: the entry is the commit point, so a reader sees a complete
  artifact or none. Two workspaces pushing one key write the same blobs and one whole
  entry each; the last entry stands, and both are consistent. After this process refused a
  key's entry, its push writes the entry again, and the blobs that failed their checks.
- A remote that cannot be reached degrades to local-only with one warning, unless
  --require-remote (then it is an error, exit 2).
"""
from __future__ import annotations

import errno
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor, wait

from forgebuild.errors import StoreError
from forgebuild.hashing import bytes_digest, file_digest, tree_digest


class RemoteUnreachable(StoreError):
    """--require-remote and the remote cannot be reached: the build stops (exit 2)."""


THREADS = 8  # parallel transfers: object stores serve many streams; 8 fills a 1 Gb/s link with 4 MB blobs
CHUNK = 4 << 20  # download reads: the size hashing.py reads files in
# Entries, records and statements are small (a statement lists every input file: ~150 bytes each, so
# 64 MiB is ~400,000 files); anything larger is refused before it is read whole into memory.
DOC_LIMIT = 64 << 20
# Errors of one object, not of the connection: a name that is a folder, missing, a link loop.
OBJECT_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.ELOOP, errno.ENAMETOOLONG, errno.EINVAL}


def canonical_digest(doc: dict) -> str:
    """The digest a signature names for a JSON document (a build record): of its canonical form,
    which a parse and a re-serialisation leave unchanged."""
    return bytes_digest(json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def _object_size(answer: dict) -> int:
    """The whole object's size from a GET's answer: Content-Range's total ("bytes 0-5/6") when the server
    honoured the range, else the body's length (a server that ignored it sends the whole object)."""
    total = (answer.get("ContentRange") or "").rpartition("/")[2]
    return int(total) if total.isdigit() else int(answer.get("ContentLength") or 0)


def connection_failure(error: Exception) -> bool:
    """A failure to talk to the remote at all, as opposed to a bad object on it."""
    if isinstance(error, OSError):
        return error.errno not in OBJECT_ERRNOS and not isinstance(error, (IsADirectoryError, NotADirectoryError))
    # botocore and aiohttp raise their own connection errors
    return "connect" in type(error).__name__.lower() or "endpoint" in str(error).lower()


class Remote:
    def __init__(self, url: str, push: bool = True, require: bool = False, report=None,
                 workspace_dir: str | None = None, trusted: dict | None = None):
        """`workspace_dir` holds this workspace's signing key (keys/); `trusted` is {raw public bytes: key}
        from [forge] trusted_keys, to which this workspace's own key is added."""
        self.url, self.push_enabled, self.require = url, push, require
        self.report = report or (lambda event: None)
        self.workspace_dir, self._trusted = workspace_dir, dict(trusted or {})
        self._store = None
        self._signer = None
        self.disabled = False
        # What this process refused: its push then writes the key's entry and these blobs again (repair)
        self.refused: set[str] = set()
        self.bad_blobs: set[str] = set()
        self._entries: dict[str, dict | str | None] = {}  # key -> checked entry, None (a miss), or why refused
        self._lock = threading.RLock()  # fetches run in several threads: one store, one blob pool, one warning
        self._blob_pool = None
        self._downloads: dict = {}  # digest -> the Future of its download (shared by the targets that name it)

    @property
    def store(self):
        with self._lock:
            if self._store is None and not self.disabled:
                from forgebuild.store.local import Store

                try:
                    self._store = Store(self.url)
                except (OSError, ImportError, ValueError) as e:  # no s3fs, a URL fsspec cannot resolve
                    self._unreachable(e)
        return self._store

    def _io(self, what: str, call, *args, missing_ok: bool = False):
        """A remote call. A connection failure turns this remote off (one warning) and gives None, as does
        a missing object when `missing_ok`; any other failure is about the object (`what`): Untrusted, so
        the one target is built here."""
        from forgebuild.store.documents import Untrusted

        if self.disabled:
            return None
        try:
            return call(*args)
        except StoreError:
            raise
        except FileNotFoundError:
            if missing_ok:
                return None
            raise Untrusted(f"{what} is missing from the remote") from None
        except Exception as e:
            if connection_failure(e):
                self._unreachable(e)
                return None
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise Untrusted(f"{what} cannot be read ({type(e).__name__}: {first})") from None

    def _unreachable(self, error: Exception) -> None:
        message = f"remote {self.url} cannot be reached ({type(error).__name__}: {error})"
        if self.require:
            raise RemoteUnreachable(message)
        with self._lock:  # several fetches may find it gone at once: one says so
            if self.disabled:
                return
            self.disabled = True
        self.report({"event": "warning", "message": f"{message}; going on with the local cache only"})

    # ---------------------------------------------------------------- keys

    def trusted(self, also: str | None = None) -> dict:
        """The keys whose signatures a fetch accepts: [forge] trusted_keys, this workspace's own key
        (when it has one), and `also` (an OpenSSH line a caller vouches for: a worker it started)."""
        from forgebuild.store import signing

        found = dict(self._trusted)
        if os.path.exists(signing.private_path(self.workspace_dir or ".forge")):
            found.update(signing.trusted_keys([signing.public_line(self.signer)], "", "this workspace's key"))
        if also:
            found.update(signing.trusted_keys([also], "", "the worker's key"))
        return found

    @property
    def signer(self):
        """This workspace's private key (made on first use)."""
        if self._signer is None:
            from forgebuild.store import signing

            self._signer = signing.load_or_make(self.workspace_dir or ".forge")
        return self._signer

    # ---------------------------------------------------------------- read-through

    def fetch(self, key: str, target: str, local, mat: dict, also_trust: str | None = None) -> dict | None:
        """The remote's entry for `key`, with its blobs now in the local store; None on a miss.

        Raises Untrusted (a StoreError) when anything about the entry is wrong; see the module's docstring."""
        from forgebuild.store.documents import Untrusted

        try:
            return self._fetch(key, target, local, mat, also_trust)
        except Untrusted:
            self.refused.add(key)
            raise

    def _fetch(self, key: str, target: str, local, mat: dict, also_trust: str | None) -> dict | None:
        if self.disabled or self.store is None:
            return None
        where = f"remote entry {key} for {target}"
        entry = self.entry(key, target, also_trust)
        if entry is None:
            return None
        record = self._fetch_record(entry, where)
        if self.disabled:
            return None
        sizes = {f["digest"]: f["size"] for f in entry["files"]}
        sizes.setdefault(entry["provenance"], None)  # a statement's size is not declared: DOC_LIMIT bounds it
        if not self._fetch_blobs(sizes, where, local):
            return None  # the remote went away mid-fetch: build locally
        self._check_sizes(entry, where, local)
        self._check_provenance(key, target, local, mat, entry, where)
        if record is not None and local.get_record(record["id"]) is None:
            local.put_record_as(record)
        local.put_action(key, entry)  # last: the entry is the commit point
        return entry

    # ---------------------------------------------------------------- entries (what the planner sees too)

    def lookup(self, key: str, target: str) -> tuple[dict | None, str] | None:
        """For the planner, on a local miss: None when the remote has no entry for `key` (or cannot be
        reached: one warning); (entry, "available in URL") when it has a signed, well-formed one;
        (None, why) when the one it has is refused."""
        from forgebuild.store.documents import Untrusted

        try:
            entry = self.entry(key, target)
        except Untrusted as e:
            return None, f"not taken from {self.url}: {e}"
        return None if entry is None else (entry, f"available in {self.url}")

    def known_miss(self, key: str) -> bool:
        """Whether this process already read that the remote has no entry for `key` (a fetch would ask again)."""
        return key in self._entries and self._entries[key] is None

    def entry(self, key: str, target: str, also_trust: str | None = None) -> dict | None:
        """The remote's entry for `key`, schema, key, signature and tree digest checked (no blob read);
        None on a miss. Read once per process: the planner's read serves the fetch. An entry a worker
        just pushed (`also_trust`) is read anew: it was not there when the planner looked."""
        from forgebuild.store.documents import Untrusted

        known = self._entries.get(key, False) if also_trust is None else False
        if isinstance(known, str):
            raise Untrusted(known)
        if known is not False:
            return known
        try:
            found = self._read_entry(key, target, also_trust)
        except Untrusted as e:
            self.refused.add(key)
            self._entries[key] = str(e)
            raise
        if not self.disabled:  # a remote that went away has no answer to remember
            self._entries[key] = found
        return found

    def _read_entry(self, key: str, target: str, also_trust: str | None) -> dict | None:
        from forgebuild.store import documents

        if self.disabled or self.store is None:
            return None
        where = f"remote entry {key} for {target}"
        data = self._read_doc(self.store.action_path(key), where, missing_ok=True)
        if data is None:
            return None
        entry = documents.parse(documents.Entry, data, where)
        if entry.get("key", key) != key:
            raise documents.Untrusted(f"{where} names another key, {entry['key']}")
        self._check_signature(key, entry, where, also_trust)
        tree = tree_digest((f["path"], f.get("x", False), f["digest"]) for f in entry["files"])
        if tree != entry["digest"]:
            raise documents.Untrusted(f"{where}: its digest {entry['digest']} is not the digest of its files ({tree})")
        return entry

    # ---------------------------------------------------------------- one request a read

    def _read_doc(self, path: str, what: str, missing_ok: bool = False) -> bytes | None:
        """A JSON document's bytes, refused when larger than DOC_LIMIT (without reading it whole)."""
        return self._io(what, self._read_bounded, path, DOC_LIMIT, what, missing_ok=missing_ok)

    def _read_bounded(self, path: str, limit: int, what: str) -> bytes:
        parts: list[bytes] = []
        self._get(path, limit, None, parts.append, what)
        return b"".join(parts)

    def _get(self, path: str, limit: int, declared: int | None, sink, what: str) -> None:
        """The object at `path` into `sink`, in chunks: no more than `limit` bytes, and refused from its size,
        before a byte is read, when that is over `limit` or not `declared` (a blob's size from its manifest).
        On S3 one GET; a local folder through open(); any other fsspec store through its open()."""
        fs = self.store.fs
        if hasattr(fs, "_call_s3"):
            from fsspec.asyn import sync

            sync(fs.loop, self._get_s3, path, limit, declared, sink, what)
            return
        with fs.open(path, "rb") as f:
            self._check_size(self._size_of(f, path), limit, declared, what)
            got = 0
            while chunk := f.read(min(CHUNK, limit - got + 1)):
                got = self._take(chunk, got, limit, declared, sink, what)

    async def _get_s3(self, path: str, limit: int, declared: int | None, sink, what: str) -> None:
        """One GET, ranged to `limit` + 1 bytes (a range past the end is cut to the object: S3 answers 206 with
        what there is; an empty object has no byte 0, so a 0-byte limit asks without a range, and the reads
        below still stop after one byte too many)."""
        fs = self.store.fs
        bucket, key, _ = fs.split_path(path)
        ranged = {"Range": f"bytes=0-{limit}"} if limit else {}
        answer = await fs._call_s3("get_object", Bucket=bucket, Key=key, **ranged)
        body = answer["Body"]
        try:
            self._check_size(_object_size(answer), limit, declared, what)
            got = 0
            while chunk := await body.read(CHUNK):
                got = self._take(chunk, got, limit, declared, sink, what)
        finally:
            body.close()

    @staticmethod
    def _check_size(size: int, limit: int, declared: int | None, what: str) -> None:
        from forgebuild.store.documents import Untrusted

        if declared is not None and size != declared:
            raise Untrusted(f"{what} is {size} bytes, the manifest says {declared}: refused without downloading it")
        if size > limit:
            raise Untrusted(f"{what} is {size} bytes, more than {limit}: refused without reading it")

    @staticmethod
    def _take(chunk: bytes, got: int, limit: int, declared: int | None, sink, what: str) -> int:
        """One chunk into the sink, unless it goes past `limit` (the size the remote reported can lie: an object
        replaced mid-read, a stream that never ends)."""
        from forgebuild.store.documents import Untrusted

        got += len(chunk)
        if got > limit:
            raise Untrusted(f"{what} sent more than its declared {limit} bytes: refused" if declared is not None
                            else f"{what} sent more than {limit} bytes: refused")
        sink(chunk)
        return got

    def _size_of(self, f, path: str) -> int:
        """The object's size as its open handle knows it (fsspec files carry it; local ones: fstat)."""
        size = getattr(f, "size", None)
        if isinstance(size, int):
            return size
        try:
            return os.fstat(f.fileno()).st_size
        except (AttributeError, OSError, ValueError):
            return self.store.fs.size(path)

    def _check_signature(self, key: str, entry: dict, where: str, also_trust: str | None) -> None:
        from forgebuild.store import signing
        from forgebuild.store.documents import Untrusted

        if entry.get("signature") is None:
            raise Untrusted(f"{where} is not signed")
        found = signing.check(entry["signature"], key, entry, self.trusted(also_trust))
        if found:
            raise Untrusted(f"{where}: {found}")

    def _fetch_record(self, entry: dict, where: str) -> dict | None:
        """The entry's build record, checked against the digest its signature names."""
        from forgebuild.store import documents

        if "record" not in entry:
            return None
        what = f"{where}: build record {entry['record']}"
        data = self._read_doc(self.store._path("records", f"{entry['record']}.json"), what)
        if data is None:
            return None
        record = documents.parse(documents.Record, data, what)
        if record["id"] != entry["record"] or canonical_digest(record) != entry["signature"]["record"]:
            raise documents.Untrusted(f"{what} is not the record its signature names (tampered)")
        return record

    def _fetch_blobs(self, sizes: dict, where: str, local) -> bool:
        """The blobs of `sizes` ({digest: declared size}) that the local store lacks, through the one pool of
        THREADS downloads every fetch of this process shares: targets fetched together fill it together, and a
        blob two of them name is downloaded once. False when the remote went away meanwhile."""
        from forgebuild.store.documents import Untrusted

        with self._lock:
            if self._blob_pool is None:
                self._blob_pool = ThreadPoolExecutor(THREADS, thread_name_prefix="forge-fetch")
            jobs = []
            for digest in sorted(sizes):
                if local.has_blob(digest):  # here already, or since a refusal: built here meanwhile
                    continue
                job = self._downloads.get(digest)
                if job is None or (job.done() and job.exception() is None):  # a refusal stands for this run
                    job = self._downloads[digest] = self._blob_pool.submit(self._fetch_blob, digest, sizes[digest], local)
                jobs.append(job)
        wait(jobs)  # every one settled before a refusal is raised: none left writing into the local store
        try:
            return all([job.result() for job in jobs])
        except Untrusted as e:  # a download shared by targets names the blob; each refusal names its own entry
            raise Untrusted(f"{where}: {e}") from None

    def _fetch_blob(self, digest: str, size: int | None, local) -> bool:
        from forgebuild.store.documents import Untrusted

        tmp = os.path.join(local.root, "tmp", f"fetch-{uuid.uuid4().hex}")
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        what = f"blob {digest}"
        try:
            done = self._io(what, self._download, self.store.blob_path(digest), tmp, size, what)
            if done is None:
                return False  # the remote went away: build locally
            got = file_digest(tmp)
            if got != digest:
                self.bad_blobs.add(digest)
                raise Untrusted(f"{what} does not match its digest (the remote holds {got}): a corrupt or "
                                "tampered remote")
            local.put_file(tmp, digest)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _download(self, path: str, tmp: str, size: int | None, what: str) -> bool:
        """Copy one object into `tmp`, reading no more than its declared size (DOC_LIMIT when undeclared)."""
        from forgebuild.store.documents import Untrusted

        with open(tmp, "wb") as dst:
            try:
                self._get(path, DOC_LIMIT if size is None else size, size, dst.write, what)
            except Untrusted:  # its size was wrong: this workspace's push writes the blob again
                self.bad_blobs.add(os.path.basename(path))
                raise
        return True

    @staticmethod
    def _check_sizes(entry: dict, where: str, local) -> None:
        """Each file's size must be its blob's (the tree digest was checked with the entry)."""
        from forgebuild.store.documents import Untrusted

        for f in entry["files"]:
            got = os.path.getsize(local.blob_path(f["digest"]))
            if got != f["size"]:
                raise Untrusted(f"{where}: {f['path']} is {got} bytes, the manifest says {f['size']}")

    @staticmethod
    def _check_provenance(key: str, target: str, local, mat: dict, entry: dict, where: str) -> None:
        from forgebuild.store.provenance import problem
        from forgebuild.store import documents

        what = f"{where}: provenance {entry['provenance']}"
        with open(local.blob_path(entry["provenance"]), "rb") as f:
            data = f.read()
        documents.parse(documents.Statement, data, what)
        found = problem(json.loads(data), target, key, mat, entry)
        if found:
            raise documents.Untrusted(f"{where}: {found}")

    # ---------------------------------------------------------------- write-through

    def push(self, key: str, entry: dict, local) -> int:
        """Upload what the remote lacks, the entry last and signed; return the bytes sent."""
        from forgebuild.store import signing

        if not self.push_enabled or self.disabled or self.store is None:
            return 0
        there = None if key in self.refused else self._entry_there(key)
        if there is not None and there["files"] == entry["files"] and self._vouched(key, there):
            return 0  # the same files, signed by a trusted key: its blobs were written before it
        record = local.get_record(entry["record"]) if entry.get("record") else None
        signed = {k: v for k, v in entry.items() if k not in ("signature", "record")}
        if record is not None:
            signed["record"] = entry["record"]
        signed["signature"] = signing.sign(self.signer, key, signed, canonical_digest(record) if record else None)
        sizes = {f["digest"]: f["size"] for f in entry["files"]}
        sizes[entry["provenance"]] = os.path.getsize(local.blob_path(entry["provenance"]))
        with ThreadPoolExecutor(THREADS) as pool:  # one existence check per blob, in parallel
            present = self._io(f"remote blobs of {key}",
                               lambda: {d for d, on in zip(sizes, pool.map(self.store.has_blob, sizes)) if on})
        if present is None:
            return 0
        missing = sorted((set(sizes) - present) | (set(sizes) & self.bad_blobs))  # bad ones: replaced
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda d: self._io(f"blob {d}", self.store.copy_in, local.blob_path(d), d, False), missing))
        if self.disabled:
            return 0
        if record is not None:
            self._io(f"build record {entry['record']}", self.store.put_record_as, record)
        self._io(f"remote entry {key}", self.store.put_action, key, signed)
        return sum(sizes[d] for d in missing)

    def _entry_there(self, key: str) -> dict | None:
        """The remote's entry for `key` when it is a well-formed one (a bad one is overwritten)."""
        from forgebuild.store import documents

        known = self._entries.get(key, False)
        if known is None or isinstance(known, dict):  # read (and checked) by the planner or the fetch of this run
            return known
        try:
            data = self._read_doc(self.store.action_path(key), f"remote entry {key}", missing_ok=True)
            return documents.parse(documents.Entry, data, key) if data is not None else None
        except documents.Untrusted:
            return None

    def _vouched(self, key: str, entry: dict) -> bool:
        from forgebuild.store import signing

        signature = entry.get("signature")
        return signature is not None and signing.check(signature, key, entry, self.trusted()) is None

