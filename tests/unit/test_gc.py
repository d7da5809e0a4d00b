"""store/gc.py in process, over plain data: it keeps the entries it is told to keep and all they point to
(memos, blobs, provenance, the build record's log, the artifact folder, the last build's work folder),
drops the rest, counts what went, and spares what is younger than the grace."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

from forgebuild.hashing import file_digest
from forgebuild.store import gc
from forgebuild.store.local import Store
from forgebuild.store.workspace import Workspace


class Project:
    """A workspace and its store, with entries made of small trees of files."""

    def __init__(self, tmp_path):
        self.tmp, self.n = tmp_path, 0
        self.ws = Workspace(str(tmp_path))
        self.store = Store(self.ws.dir)

    def blob(self, text: str) -> str:
        path = self._file(text)
        digest = file_digest(path)
        self.store.put_file(path, digest)
        return digest

    def entry(self, key: str, files: dict[str, str], **extra) -> dict:
        """An action-cache entry under `key` for a tree of `files`, with a provenance blob (unless `memo`: a
        cached sub-step's entry has none)."""
        src = self.tmp / f"src{self._next()}"
        for rel, text in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_text(text)
        entry = {**self.store.ingest_tree(str(src)), **extra}
        if "memo" not in extra:
            entry["provenance"] = self.blob(f"statement of {key}")
        self.store.put_action(key, entry)
        return entry

    def _file(self, text: str) -> str:
        path = self.tmp / f"file{self._next()}"
        path.write_text(text)
        return str(path)

    def _next(self) -> int:
        self.n += 1
        return self.n

    def blobs(self) -> set[str]:
        return set(self.store.blob_digests())

    def folders(self, part: str) -> set[str]:
        base = self.ws.path(part)
        return set(os.listdir(base)) if os.path.isdir(base) else set()


KEPT, MEMO, OLD, STRAY = ("a" * 64), ("b" * 64), ("c" * 64), ("d" * 64)


def two_builds(tmp_path) -> tuple[Project, dict, dict]:
    """run:x's current entry (with a memo and a build record naming a log), and an older one that shares a file."""
    p = Project(tmp_path)
    p.entry(MEMO, {"step.bin": "step"}, memo="step")
    record = p.store.put_record({"key": KEPT, "target": "run:x", "log": p.blob("the build's log")})
    kept = p.entry(KEPT, {"shared.txt": "same", "new.txt": "new"}, memos=[MEMO], record=record)
    old = p.entry(OLD, {"shared.txt": "same", "old.txt": "old"})
    for entry in (old, kept):
        p.ws.materialise("run:x", entry, p.store)
    p.ws.record_build("run:x", {"key": KEPT, "digest": kept["digest"], "record": record})
    for key in (KEPT, OLD):
        os.makedirs(p.ws.work(key))
    os.makedirs(p.ws.scratch(STRAY))
    return p, kept, old


def test_keeps_what_it_is_told_and_everything_a_kept_entry_points_to(tmp_path):
    p, kept, old = two_builds(tmp_path)
    before = p.blobs()
    only_old = {f["digest"] for f in old["files"] if f["path"] == "old.txt"} | {old["provenance"]}
    stats = gc.collect(p.store, p.ws, {"run:x": KEPT}, grace=0)
    assert sorted(p.store.action_keys()) == [KEPT, MEMO]
    assert p.blobs() == before - only_old  # the file both builds share stays
    assert p.store.get_record(kept["record"])["log"] in p.blobs()
    assert p.folders("artifacts") == {kept["digest"]} and p.folders("work") == {KEPT}
    assert p.folders("scratch") == set()
    assert stats == {"actions": 1, "blobs": 2, "bytes": len("old") + len(f"statement of {OLD}"), "folders": 3,
                     "kept_actions": 2}
    assert p.ws.is_materialised("run:x", kept["digest"])


def test_keeping_nothing_drops_every_entry_and_blob(tmp_path):
    p, _, _ = two_builds(tmp_path)
    stats = gc.collect(p.store, p.ws, {}, grace=0)
    assert list(p.store.action_keys()) == [] and p.blobs() == set()
    assert stats["kept_actions"] == 0 and p.folders("artifacts") == set()


def test_a_dry_run_counts_and_removes_nothing(tmp_path):
    p, _, _ = two_builds(tmp_path)
    before = (sorted(p.store.action_keys()), p.blobs(), p.folders("artifacts"), p.folders("scratch"))
    stats = gc.collect(p.store, p.ws, {"run:x": KEPT}, dry_run=True, grace=0)
    assert (stats["actions"], stats["blobs"], stats["folders"]) == (1, 2, 3)
    assert (sorted(p.store.action_keys()), p.blobs(), p.folders("artifacts"), p.folders("scratch")) == before


def test_the_grace_spares_what_was_written_after_its_start(tmp_path, monkeypatch):
    """A build running now may own an entry no target names yet: only objects older than the grace go."""
    p, _, _ = two_builds(tmp_path)
    time.sleep(0.05)
    now = time.time()  # gc's clock: everything above is older than the grace, everything below younger
    time.sleep(0.05)
    young = p.entry(STRAY, {"running.txt": "a build running now"})
    monkeypatch.setattr(gc, "time", SimpleNamespace(time=lambda: now))
    stats = gc.collect(p.store, p.ws, {"run:x": KEPT}, grace=0.02)
    assert sorted(p.store.action_keys()) == [KEPT, MEMO, STRAY]
    assert {f["digest"] for f in young["files"]} | {young["provenance"]} <= p.blobs()
    assert (stats["actions"], stats["blobs"]) == (1, 2)
    assert gc.collect(p.store, p.ws, {"run:x": KEPT}, grace=3600)["actions"] == 0  # all young for an hour
