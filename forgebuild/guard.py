"""A stage must not change what it was handed: its input files are stat()ed before it runs and after.

A dependency's artifact reaches a stage as `.forge/artifacts/<digest>/`, hardlinks of the store's
blobs (a 10 GB model is not copied for each reader), so a command that appends to
`{in.a}/data.txt` writes into the blob itself; file modes do not stop a build running as root.
After the stage each input file is stat()ed again (a few microseconds a file). A changed size,
mtime, ctime or inode is confirmed by re-hashing, since a ctime also moves when another reader's
artifact links the same blob; a real change fails the stage. A damaged blob is dropped with the
dependency's action-cache entry, so the next build rebuilds the dependency instead of serving
the damaged bytes; the materialised folder is removed either way. A project file the stage
changed leaves nothing to repair, but nothing built from it is cached.

Standard library and the store only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .hashing import file_digest
from .workspace import remove_tree


@dataclass
class Watched:
    path: str
    rel: str  # as the message names it: the path inside the artifact, or project-relative
    digest: str  # what the bytes must hash to
    owner: str | None  # the dependency's address; None for a project file
    stat: tuple | None


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class InputGuard:
    def __init__(self, project: str, ws, store, mat: dict):
        self.ws, self.store = ws, store
        self.files: list[Watched] = []
        self.keys: dict[str, tuple[str, str]] = {}  # dependency -> (its key, its output digest)
        for entries in mat["inputs"].values():
            for kind, name, digest in entries:
                if kind == "target":
                    self._watch_dependency(name, digest)
                elif not name.startswith("<"):  # `<key>/...`: an imported folder outside the project, copied
                    path = os.path.join(project, name)
                    self.files.append(Watched(path, name, digest, None, _stat(path)))

    def _watch_dependency(self, address: str, digest: str) -> None:
        last = self.ws.last_build(address) or {}
        entry = self.store.get_action(last["key"], address) if last.get("digest") == digest else None
        if entry is None:
            return
        self.keys[address] = (last["key"], digest)
        folder = self.ws.artifact_dir(digest)
        for item in entry["files"]:
            path = os.path.join(folder, *item["path"].split("/"))
            self.files.append(Watched(path, item["path"], item["digest"], address, _stat(path)))

    def changed(self) -> list[Watched]:
        found = []
        for w in self.files:
            if _stat(w.path) == w.stat:
                continue
            try:
                same = file_digest(w.path) == w.digest
            except OSError:
                same = False
            if not same:
                found.append(w)
        return found

    def check(self) -> str | None:
        """After the stage: None, or the failure's message once the damage is repaired."""
        changed = self.changed()
        if not changed:
            return None
        parts = []
        for owner in dict.fromkeys(w.owner for w in changed if w.owner):
            rels = ", ".join(w.rel for w in changed if w.owner == owner)
            parts.append(f"the stage changed its input {owner} ({rels}): a stage must not write into its inputs; "
                         + self._repair(owner, [w for w in changed if w.owner == owner]))
        for w in changed:
            if w.owner is None:
                parts.append(f"the stage changed its input {w.rel}: a stage must not write into its inputs; "
                             "nothing was cached")
        return "; ".join(parts)

    def _repair(self, owner: str, changed: list[Watched]) -> str:
        key, digest = self.keys[owner]
        remove_tree(self.ws.artifact_dir(digest))  # made again from the blobs, or by the rebuild
        damaged = [w.digest for w in changed if self._blob_damaged(w.digest)]
        if not damaged:
            return "its materialised copy was removed and is made again from the cache"
        for blob in damaged:
            self.store.remove_blob(blob)
        self.store.remove_action(key)
        return f"{owner}'s damaged output was dropped from the cache and rebuilds on the next build"

    def _blob_damaged(self, digest: str) -> bool:
        path = self.store.blob_path(digest)
        try:
            return file_digest(path) != digest
        except FileNotFoundError:
            return False
