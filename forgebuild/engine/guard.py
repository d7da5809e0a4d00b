"""A stage must not change what it was handed: its input files are stat()ed before it runs and after.

A dependency's artifact reaches a stage as `.forge/artifacts/<digest>/`, hardlinks of the store's
blobs (a 10 GB model is not copied for each reader), so a command that appends to
`{in.a}/data.txt` writes into the blob itself; file modes do not stop a build running as root.
After the stage each input file is stat()ed again (a few microseconds a file). A changed size,
mtime, ctime or inode is confirmed by re-hashing, since a ctime also moves when another reader's
artifact links the same blob; a real change fails the stage. A damaged blob is dropped with the
dependency's action-cache entry, so the next build rebuilds the dependency instead of serving
the damaged bytes; the materialised folder is removed either way. A project file the stage
changed leaves nothing to repair, but nothing built from it is cached. The results of cached
sub-steps (`ctx.memo`) are hardlinks too: the build process notes each file's stat as it hands
one to the rule (`handed.jsonl` in the scratch folder), and they are checked the same way.

Standard library and the store only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from forgebuild.engine.scratch import read_handed
from forgebuild.hashing import file_digest
from forgebuild.store.workspace import remove_tree


@dataclass
class Watched:
    path: str
    rel: str  # as the message names it: the path inside the artifact, or project-relative
    digest: str  # what the bytes must hash to
    owner: str | None  # the dependency's address, or "memo KEY"; None for a project file
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
        # owner -> (its action key, its output digest, what it is to the stage, what repairing it means)
        self.owners: dict[str, tuple[str, str, str, str]] = {}
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
        self.owners[address] = (last["key"], digest, f"its input {address}",
                                f"{address}'s damaged output was dropped from the cache and rebuilds on the next build")
        folder = self.ws.artifact_dir(digest)
        for item in entry["files"]:
            path = os.path.join(folder, *item["path"].split("/"))
            self.files.append(Watched(path, item["path"], item["digest"], address, _stat(path)))

    def watch_handed(self, scratch_folder: str) -> None:
        """The cached sub-steps' results the stage was handed, with their stat at the time (see context.memo)."""
        for key, name, digest, rel, expected, stat in read_handed(scratch_folder):
            self.owners[f"memo {key}"] = (key, digest, f"the result of its cached step {name}",
                                          "the damaged result was dropped from the cache and is made again on the "
                                          "next build")
            path = os.path.join(self.ws.artifact_dir(digest), *rel.split("/"))
            self.files.append(Watched(path, rel, expected, f"memo {key}", tuple(stat)))

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
            rels = ", ".join(dict.fromkeys(w.rel for w in changed if w.owner == owner))
            parts.append(f"the stage changed {self.owners[owner][2]} ({rels}): a stage must not write into its inputs; "
                         + self._repair(owner, [w for w in changed if w.owner == owner]))
        for w in changed:
            if w.owner is None:
                parts.append(f"the stage changed its input {w.rel}: a stage must not write into its inputs; "
                             "nothing was cached")
        return "; ".join(parts)

    def _repair(self, owner: str, changed: list[Watched]) -> str:
        key, digest, _, dropped = self.owners[owner]
        remove_tree(self.ws.artifact_dir(digest))  # made again from the blobs, or by the rebuild
        damaged = [d for d in dict.fromkeys(w.digest for w in changed) if self._blob_damaged(d)]
        if not damaged:
            return "its materialised copy was removed and is made again from the cache"
        for blob in damaged:
            self.store.remove_blob(blob)
        self.store.remove_action(key)
        return dropped

    def _blob_damaged(self, digest: str) -> bool:
        path = self.store.blob_path(digest)
        try:
            return file_digest(path) != digest
        except FileNotFoundError:
            return False
