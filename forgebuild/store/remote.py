"""The shared remote cache: read-through on a local miss, write-through after a build.

A remote is a store at any fsspec URL (`s3://bucket/prefix`, `file:///mnt/team/cache`,
`gs://...`) with the local store's layout. Credentials never appear in the Forgefile:
s3fs, gcsfs and the rest read their own configuration (environment, profiles).

Anyone with write access to a remote can put anything there, so a fetch trusts nothing it
reads until it has checked it (docs/remote.md, "Threat model"):

- the entry: parsed by a strict schema (`documents.Entry`: names, digests, sizes), then its
  signature (`signing`): it must be made by a key this workspace trusts, over the action
  key, the entry and the build record's digest. Unsigned or untrusted: nothing is downloaded.
- the blobs the local store lacks, in parallel threads: the remote object's size must equal
  the manifest's before a byte is read, and no more than that is read; each lands in a
  temporary file that must hash to its digest before it enters the local store.
- the tree digest, recomputed from the manifest's (path, executable, digest) triples, must be
  the entry's digest: an `artifacts/<digest>` folder is then only ever the files it names.
- the provenance statement (schema, then `provenance.problem`: this key, these materials,
  these digests) and the build record (schema, and the digest the signature names).

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
import uuid
from concurrent.futures import ThreadPoolExecutor

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

    @property
    def store(self):
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
        record = self._fetch_record(entry, where)
        if self.disabled:
            return None
        sizes = {f["digest"]: f["size"] for f in entry["files"]}
        sizes.setdefault(entry["provenance"], None)  # a statement's size is not declared: DOC_LIMIT bounds it
        missing = sorted(d for d in sizes if not local.has_blob(d))
        with ThreadPoolExecutor(THREADS) as pool:
            for found in pool.map(lambda d: self._fetch_blob(d, sizes[d], where, local), missing):
                if found is False:
                    return None  # the remote went away mid-fetch: build locally
        self._check_tree(entry, where, local)
        self._check_provenance(key, target, local, mat, entry, where)
        if record is not None and local.get_record(record["id"]) is None:
            local.put_record_as(record)
        local.put_action(key, entry)  # last: the entry is the commit point
        return entry

    def _read_doc(self, path: str, what: str, missing_ok: bool = False) -> bytes | None:
        """A JSON document's bytes, refused when larger than DOC_LIMIT (without reading it whole). Through
        open(), not a ranged cat_file: S3 servers answer a range past an object's end differently."""
        return self._io(what, self._read_bounded, path, DOC_LIMIT, what, missing_ok=missing_ok)

    def _read_bounded(self, path: str, limit: int, what: str) -> bytes:
        from forgebuild.store.documents import Untrusted

        with self.store.fs.open(path, "rb") as f:
            size = self._size_of(f, path)
            if size > limit:
                raise Untrusted(f"{what} is {size} bytes, more than {limit}: refused without reading it")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise Untrusted(f"{what} sent more than {limit} bytes: refused")
        return data

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

    def _fetch_blob(self, digest: str, size: int | None, where: str, local) -> bool:
        from forgebuild.store.documents import Untrusted

        tmp = os.path.join(local.root, "tmp", f"fetch-{uuid.uuid4().hex}")
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        what = f"{where}: blob {digest}"
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

        limit = DOC_LIMIT if size is None else size
        with self.store.fs.open(path, "rb") as src:
            there = self._size_of(src, path)
            if there > limit or (size is not None and there != size):
                self.bad_blobs.add(os.path.basename(path))
                raise Untrusted(f"{what} is {there} bytes, the manifest says {limit}: refused without downloading it")
            got = 0
            with open(tmp, "wb") as dst:
                while chunk := src.read(min(CHUNK, limit - got + 1)):
                    got += len(chunk)
                    if got > limit:
                        self.bad_blobs.add(os.path.basename(path))
                        raise Untrusted(f"{what} sent more than its declared {limit} bytes: refused")
                    dst.write(chunk)
        return True

    @staticmethod
    def _check_tree(entry: dict, where: str, local) -> None:
        """The entry's digest must be the tree of its files, and each file's size its blob's."""
        from forgebuild.store.documents import Untrusted

        for f in entry["files"]:
            got = os.path.getsize(local.blob_path(f["digest"]))
            if got != f["size"]:
                raise Untrusted(f"{where}: {f['path']} is {got} bytes, the manifest says {f['size']}")
        tree = tree_digest((f["path"], f.get("x", False), f["digest"]) for f in entry["files"])
        if tree != entry["digest"]:
            raise Untrusted(f"{where}: its digest {entry['digest']} is not the digest of its files ({tree})")

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

        try:
            data = self._read_doc(self.store.action_path(key), f"remote entry {key}", missing_ok=True)
            return documents.parse(documents.Entry, data, key) if data is not None else None
        except documents.Untrusted:
            return None

    def _vouched(self, key: str, entry: dict) -> bool:
        from forgebuild.store import signing

        signature = entry.get("signature")
        return signature is not None and signing.check(signature, key, entry, self.trusted()) is None

