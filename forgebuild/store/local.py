"""The content-addressed store: blobs by digest, an action cache, build records.

Layout below the store's root (a folder, or any fsspec URL):

    cas/ab/<digest>        file contents, write-once, read-only
    ac/ab/<key>.json       action key -> output manifest and output digest
    records/<id>.json      build records (provenance)
    index/<group>/<member>.json  pointers to action-cache entries a build finds by listing
                           (the checkpoint prefixes of one training run, by step)
    tmp/                   where writes are staged before their atomic rename
    locks/<key>.lock       one builder per action key (local stores)

Every write lands under tmp/ first and is renamed into place, so a reader
(or a build killed half-way) never sees half an object.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid

from forgebuild.errors import StoreError
from forgebuild.hashing import file_digest, is_executable, tree_digest, walk_files

# BLAKE3-256 (hashing.py). Entries and blobs of the earlier xxh3-128 format (32 hex) are
# not read: a key of the old length is a miss, and gc removes its files.
HEX = re.compile(r"^[0-9a-f]{64}$")
# What put_record names records (time, key prefix, random part): the only ids a record may carry,
# since an id becomes a file name and records arrive from remotes.
RECORD_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{12}-[0-9a-f]{6}$")
# An index member's name: it becomes a file name, so letters, digits, '-' and '_' only.
MEMBER = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def safe_path(path) -> bool:
    """A relative posix path that stays inside the folder an artifact is assembled in: the one rule for
    manifests read here and for entries a remote serves (cache/documents.py)."""
    return (isinstance(path, str) and bool(path) and not path.startswith("/") and "\\" not in path
            and "\0" not in path and not any(p in ("", ".", "..") for p in path.split("/")))


def validate_manifest(entry, where: str) -> list[dict]:
    """The manifest's file list, after checking it cannot write outside an artifact."""
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list) or not HEX.match(str(entry.get("digest", ""))):
        raise StoreError(f"{where}: not a valid action-cache entry")
    if "provenance" in entry and not HEX.match(str(entry["provenance"])):
        raise StoreError(f"{where}: bad provenance digest")
    for item in entry["files"]:
        path = item.get("path", "") if isinstance(item, dict) else ""
        if not safe_path(path):
            raise StoreError(f"{where}: unsafe path {path!r} in manifest")
        if not HEX.match(str(item.get("digest", ""))) or not isinstance(item.get("size"), int):
            raise StoreError(f"{where}: bad file entry for {path!r}")
    return entry["files"]


class LocalFS:
    """The slice of fsspec's filesystem interface the store uses, on plain os calls.

    fsspec's own LocalFileSystem does the same but costs ~30-50 ms of imports
    (asyncio among them) and ~0.3 ms more per blob: most of a small build's
    fixed cost here. Any other URL goes through fsspec itself.
    """

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def mv(self, src: str, dst: str) -> None:
        shutil.move(src, dst)  # os.rename within one filesystem: atomic, nothing copied

    def pipe_file(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def put_file(self, local: str, path: str) -> None:
        shutil.copyfile(local, path)

    def cat_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open(self, path: str, mode: str = "rb"):
        return open(path, mode)  # the builtin: a method's body does not see the class's names

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def glob(self, pattern: str) -> list[str]:
        import glob

        return sorted(glob.glob(pattern))

    def rm_file(self, path: str) -> None:
        os.unlink(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)


# Object stores write an object whole or not at all (an interrupted upload is never visible), so
# objects go straight to their final name there: a rename would be a second full copy.
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")


class Store:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.local = "://" not in root or root.startswith("file://")
        if root.startswith("file://"):
            self.root = root[len("file://"):]
        self.atomic_put = False
        if self.local:  # plain os calls: the no-op fast path must not import fsspec
            self.fs = LocalFS()
        else:  # resolve the URL now: fsspec strips the protocol from paths
            import fsspec

            self.fs, self.root = fsspec.url_to_fs(self.root)
            self.root = self.root.rstrip("/")
            protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
            self.atomic_put = protocol in OBJECT_STORES

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def blob_path(self, digest: str) -> str:
        return self._path("cas", digest[:2], digest)

    def action_path(self, key: str) -> str:
        return self._path("ac", key[:2], f"{key}.json")

    # ---------------------------------------------------------------- writes

    def _tmp(self) -> str:
        return self._path("tmp", uuid.uuid4().hex)

    def _publish(self, tmp: str, final: str) -> None:
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(tmp, final)

    def _staged(self, write) -> str:
        """A temporary name under tmp/ that `write(tmp)` fills. A write that fails (a full disk) takes its
        partial file with it: a failed build leaves nothing in the store."""
        tmp = self._tmp()
        self.fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        try:
            write(tmp)
        except BaseException:
            try:
                self.fs.rm_file(tmp)
            except OSError:
                pass  # never created
            raise
        return tmp

    def _write_json(self, final: str, obj) -> None:
        data = json.dumps(obj, sort_keys=True, indent=1).encode()
        if self.atomic_put:
            self.fs.pipe_file(final, data)
            return
        self._publish(self._staged(lambda tmp: self.fs.pipe_file(tmp, data)), final)

    def has_blob(self, digest: str) -> bool:
        return self.fs.exists(self.blob_path(digest))

    def put_file(self, path: str, digest: str) -> bool:
        """Move a local file into the store under its digest; False (a no-op) if the blob exists."""
        final = self.blob_path(digest)
        if self.has_blob(digest):
            return False

        def write(tmp: str) -> None:
            if self.local:
                self.fs.mv(path, tmp)  # a rename on the same filesystem: a 200 MB output is not copied
                os.chmod(tmp, 0o444)
            else:
                self.fs.put_file(path, tmp)

        self._publish(self._staged(write), final)
        return True

    def copy_in(self, path: str, digest: str, check: bool = True) -> bool:
        """Copy a file (a blob of another store) in under its digest; the source stays where it is.
        `check=False` when the caller already knows the blob is missing (one request less).
        False when the blob was there already."""
        if check and self.has_blob(digest):
            return False
        final = self.blob_path(digest)
        if self.atomic_put:
            self.fs.put_file(path, final)
            return True

        def write(tmp: str) -> None:
            self.fs.put_file(path, tmp)
            if self.local:
                os.chmod(tmp, 0o444)

        self._publish(self._staged(write), final)
        return True

    def put_record_as(self, record: dict) -> None:
        """A record under its own id (one fetched from, or pushed to, another store)."""
        if not isinstance(record.get("id"), str) or not RECORD_ID.match(record["id"]):
            raise StoreError(f"build record id {str(record.get('id'))[:80]!r} is not a record id: refused")
        self._write_json(self._path("records", f"{record['id']}.json"), record)

    def ingest_tree(self, folder: str, added: list | None = None) -> dict:
        """Move every file below a folder into the store; return {"digest", "files"} (the manifest).
        `added` collects the digests of the blobs that were new (to remove if the build fails later).

        Raises ValueError when the folder holds a link that leaves it.
        """
        files = []
        for rel, full, st in walk_files(folder):
            digest = file_digest(full)
            if os.path.islink(full):  # a link inside the folder: store what it points at
                resolved = full + ".forge-deref"
                shutil.copyfile(full, resolved)
                full = resolved
            if self.put_file(full, digest) and added is not None:
                added.append(digest)
            files.append({"path": rel, "digest": digest, "size": st.st_size, "x": is_executable(st.st_mode)})
        return {"digest": tree_digest((f["path"], f["x"], f["digest"]) for f in files), "files": files}

    def put_action(self, key: str, entry: dict) -> None:
        self._write_json(self.action_path(key), entry)

    def put_record(self, record: dict) -> str:
        record_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{record['key'][:12]}-{uuid.uuid4().hex[:6]}"
        record["id"] = record_id
        self._write_json(self._path("records", f"{record_id}.json"), record)
        return record_id

    def put_mark(self, group: str, member: str, data: dict) -> None:
        """One member of an index: its own file, renamed into place whole, so builds that mark at the same
        time never lose each other's members (no read-modify-write of a shared list)."""
        if not HEX.match(group) or not MEMBER.match(member):
            raise StoreError(f"index {group[:80]!r} member {member[:80]!r}: not an index name")
        self._write_json(self.mark_path(group, member), data)

    # ---------------------------------------------------------------- reads

    def marks(self, group: str) -> dict[str, dict]:
        """The members of an index and their data; a member whose file does not parse reads as {}
        (the caller verifies what a member points at anyway)."""
        if not HEX.match(group):
            return {}
        members = [path.rsplit("/", 1)[1][: -len(".json")] for path in self.fs.glob(self.mark_path(group, "*"))]
        return {member: self.get_mark(group, member) for member in members}

    def get_mark(self, group: str, member: str) -> dict:
        data = self._read(self.mark_path(group, member))
        try:
            found = json.loads(data) if data is not None else {}
        except (ValueError, RecursionError):
            return {}
        return found if isinstance(found, dict) else {}

    def _read(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def get_action(self, key: str, target: str = "") -> dict | None:
        if not HEX.match(key):  # a key of an earlier format (a workspace's last build before an upgrade)
            return None
        path = self.action_path(key)
        data = self._read(path)
        if data is None:
            return None
        where = f"{path}: {target}" if target else path
        try:
            entry = json.loads(data)
        except ValueError:
            raise StoreError(f"{where}: corrupt action-cache entry (not JSON); rebuild it with `forgebuild -B {target}`") from None
        try:
            validate_manifest(entry, where)
        except StoreError as e:
            raise StoreError(f"{e}; rebuild it with `forgebuild -B {target}`") from None
        return entry

    def get_record(self, record_id: str) -> dict | None:
        """A build record by id; None when there is none (or the id is not a record id: never a path)."""
        if not RECORD_ID.match(record_id or ""):
            return None
        path = self._path("records", f"{record_id}.json")
        data = self._read(path)
        if data is None:
            return None
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):
            raise StoreError(f"{path}: corrupt build record (not JSON)") from None
        if not isinstance(record, dict):
            raise StoreError(f"{path}: corrupt build record (not an object)")
        return record

    # ---------------------------------------------------------------- housekeeping

    def action_keys(self):
        for path in self.fs.glob(self._path("ac", "*", "*.json")):
            yield path.rsplit("/", 1)[1][: -len(".json")]

    def blob_digests(self):
        for path in self.fs.glob(self._path("cas", "*", "*")):
            yield path.rsplit("/", 1)[1]

    def mark_paths(self):
        """(group, member) of every index member."""
        for path in self.fs.glob(self._path("index", "*", "*.json")):
            group, name = path.rsplit("/", 2)[1:]
            yield group, name[: -len(".json")]

    def mark_path(self, group: str, member: str) -> str:
        return self._path("index", group, f"{member}.json")

    def remove_mark(self, group: str, member: str) -> None:
        self.fs.rm_file(self.mark_path(group, member))

    def remove_action(self, key: str) -> None:
        self.fs.rm_file(self.action_path(key))

    def remove_record(self, record_id: str) -> None:
        self.fs.rm_file(self._path("records", f"{record_id}.json"))

    def remove_blob(self, digest: str) -> int:
        path = self.blob_path(digest)
        size = self.fs.size(path)
        self.fs.rm_file(path)
        return size
