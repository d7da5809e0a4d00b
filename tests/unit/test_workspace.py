"""workspace.py in process: artifacts materialised read-only from the store, the stable out/ link,
each target's last build, scratch folders and the build history."""
from __future__ import annotations

import os
import stat

import pytest

from forgebuild.store.local import Store
from forgebuild.errors import StoreError
from forgebuild.store.workspace import Workspace


def stored(tmp_path, files: dict[str, str], executable=()) -> tuple[Workspace, Store, dict]:
    """A workspace whose store holds a tree of `files`: (workspace, store, its manifest)."""
    ws = Workspace(str(tmp_path))
    store = Store(ws.dir)
    src = tmp_path / "src"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
        if rel in executable:
            (src / rel).chmod(0o755)
    return ws, store, store.ingest_tree(str(src))


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_materialise_links_a_read_only_folder_of_hardlinked_blobs(tmp_path):
    ws, store, entry = stored(tmp_path, {"a.txt": "a", "sub/b.txt": "b", "run.sh": "#!/bin/sh\n"}, {"run.sh"})
    link = ws.materialise("run:x", entry, store)
    assert link == str(tmp_path / ".forge/out/run/x")
    assert os.readlink(link) == os.path.join("..", "..", "artifacts", entry["digest"])  # relative: the project may move
    assert ws.is_materialised("run:x", entry["digest"])
    folder = ws.artifact_dir(entry["digest"])
    a = {f["path"]: f["digest"] for f in entry["files"]}
    assert os.path.samefile(os.path.join(folder, "a.txt"), store.blob_path(a["a.txt"]))
    assert mode(os.path.join(folder, "a.txt")) == 0o444 and mode(store.blob_path(a["a.txt"])) == 0o444
    # an executable gets its own copy: the shared blob stays 0444
    assert mode(os.path.join(folder, "run.sh")) == 0o555
    assert not os.path.samefile(os.path.join(folder, "run.sh"), store.blob_path(a["run.sh"]))
    assert mode(folder) == mode(os.path.join(folder, "sub")) == 0o555
    assert sorted(os.listdir(ws.path("artifacts"))) == [entry["digest"]]  # no temporary folder left


def test_two_targets_share_one_folder_and_switching_back_moves_only_the_link(tmp_path):
    ws, store, one = stored(tmp_path, {"a.txt": "one"})
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2/a.txt").write_text("two")
    two = store.ingest_tree(str(tmp_path / "src2"))
    ws.materialise("run:x", one, store)
    ws.materialise("run:y", one, store)
    assert os.path.realpath(ws.out_link("run:x")) == os.path.realpath(ws.out_link("run:y"))
    ws.materialise("run:x", two, store)
    assert ws.is_materialised("run:x", two["digest"]) and not ws.is_materialised("run:x", one["digest"])
    inode = os.stat(ws.artifact_dir(one["digest"])).st_ino
    ws.materialise("run:x", one, store)
    assert os.stat(ws.artifact_dir(one["digest"])).st_ino == inode  # the folder was kept, not made again
    assert open(os.path.join(ws.out_link("run:x"), "a.txt")).read() == "one"


def test_a_missing_blob_is_a_store_error_naming_the_target_and_remedy(tmp_path):
    ws, store, entry = stored(tmp_path, {"a.txt": "a"})
    blob = store.blob_path(entry["files"][0]["digest"])
    os.unlink(blob)
    with pytest.raises(StoreError) as e:
        ws.materialise("run:x", entry, store)
    assert str(e.value) == (f"{blob}: run:x: blob {entry['files'][0]['digest']} of a.txt is missing from the cache; "
                            "rebuild it with `forgebuild -B run:x`")
    assert not os.path.exists(ws.out_link("run:x")) and os.listdir(ws.path("artifacts")) == []


def test_last_build_round_trips_and_a_damaged_state_is_no_state(tmp_path):
    ws = Workspace(str(tmp_path))
    assert ws.last_build("model:sft.v2") is None
    ws.record_build("model:sft.v2", {"key": "k", "digest": "d"})
    assert ws.last_build("model:sft.v2") == {"key": "k", "digest": "d"}
    assert os.path.exists(tmp_path / ".forge/state/targets/model/sft.v2.json")
    (tmp_path / ".forge/state/targets/model/sft.v2.json").write_text("{cut")
    assert ws.last_build("model:sft.v2") is None  # then explain says "never built" rather than crash


def test_paths_scratch_and_history(tmp_path):
    ws = Workspace(str(tmp_path))
    assert ws.log_path("run:a") == str(tmp_path / ".forge/logs/run/a.log")
    assert ws.work("k1") == str(tmp_path / ".forge/work/k1")
    first, second = ws.scratch("k1"), ws.scratch("k1")
    assert first != second and os.path.basename(first).startswith("k1.")
    os.makedirs(first)
    os.makedirs(ws.scratch("k10"))  # another key that starts with the same characters
    assert ws.leftover_scratch("k1") == [first]
    assert ws.display(str(tmp_path / "data/x")) == os.path.join("data", "x")
    assert ws.display("/elsewhere/x") == "/elsewhere/x"
    assert ws.history() == []
    ws.append_log({"event": "built", "target": "run:a"})
    ws.append_log({"event": "cached", "target": "run:b"})
    assert [(e["event"], e["target"]) for e in ws.history()] == [("built", "run:a"), ("cached", "run:b")]
    assert all(isinstance(e["time"], float) for e in ws.history())
