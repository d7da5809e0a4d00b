"""The local store: atomic, content-addressed, stored once, corruption reported, gc and clean."""
from __future__ import annotations

import glob
import json
import os

import pytest

from forgebuild.hashing import StatCache, file_digest, tree_digest

ONE = """
[run.big]
cmd = "python3 -c \\"open('{out}/weights.bin', 'wb').write(bytes(range(256)) * 4096)\\" && echo run >> runs.txt"
"""


def _entries(project):
    return glob.glob(os.path.join(project.root, ".forge/ac/*/*.json"))


def test_output_is_stored_once_and_hardlinked(project):
    project.forgefile(ONE)
    project.run()
    artifact = os.path.join(project.root, ".forge/out/run/big/weights.bin")
    digest = file_digest(artifact)
    blob = os.path.join(project.root, ".forge/cas", digest[:2], digest)
    assert os.stat(artifact).st_ino == os.stat(blob).st_ino  # a hardlink, not a copy
    assert not os.stat(blob).st_mode & 0o222
    entry = json.load(open(_entries(project)[0]))
    assert entry["digest"] == tree_digest([("weights.bin", False, digest)])
    assert entry["files"] == [{"path": "weights.bin", "digest": digest, "size": 1048576, "x": False}]


def test_clean_keeps_the_cache_and_the_next_build_reuses_it(project):
    project.forgefile(ONE)
    project.run()
    project.runs()
    project.run("clean")
    assert not os.path.lexists(os.path.join(project.root, ".forge/out"))
    assert project.build() == {"run:big": "cached"}
    assert project.runs() == []
    assert os.path.isfile(os.path.join(project.root, ".forge/out/run/big/weights.bin"))
    project.run("clean", "--cache")
    assert project.build() == {"run:big": "built"}


def test_corrupt_action_entry_is_an_error_naming_it(project):
    project.forgefile(ONE)
    project.run()
    [entry] = _entries(project)
    open(entry, "w").write("{not json")
    proc = project.run("run:big", expect=2)
    rel = os.path.relpath(entry, project.root)
    assert proc.stderr == (f"forgebuild: {entry}: run:big: corrupt action-cache entry (not JSON); "
                           f"rebuild it with `forgebuild -B run:big`\n"), rel
    assert project.build("-B") == {"run:big": "built"}
    assert project.build() == {"run:big": "cached"}


@pytest.mark.corrupts_cache
def test_manifest_escaping_the_artifact_is_rejected(project):
    project.forgefile(ONE)
    project.run()
    [entry] = _entries(project)
    data = json.load(open(entry))
    data["files"][0]["path"] = "../../escape.bin"
    os.chmod(entry, 0o644)
    json.dump(data, open(entry, "w"))
    project.run("clean")
    proc = project.run(expect=2)
    assert "unsafe path '../../escape.bin' in manifest" in proc.stderr
    assert not os.path.exists(os.path.join(project.root, ".forge/escape.bin"))


def test_every_kind_of_unsafe_manifest_path_is_refused_locally_and_from_a_remote():
    """One rule (store.safe_path) for a local entry and for a remote's: a path that is not a string is
    refused too, not an AttributeError."""
    from forgebuild.store.documents import FileItem, Untrusted, parse
    from forgebuild.store.local import validate_manifest
    from forgebuild.errors import StoreError

    ok = {"path": "a/b.txt", "digest": "0" * 64, "size": 1}
    assert validate_manifest({"digest": "1" * 64, "files": [ok]}, "e") == [ok]
    for path in ("/a", "a\\b", "a/../b", "", "a//b", ".", "a\0b", "x/./y", 3, None):
        item = {**ok, "path": path}
        with pytest.raises(StoreError, match="unsafe path"):
            validate_manifest({"digest": "1" * 64, "files": [item]}, "e")
        with pytest.raises(Untrusted, match="is malformed: path"):
            parse(FileItem, json.dumps(item).encode(), "an entry")


def test_missing_blob_is_an_error_then_force_repairs(project):
    project.forgefile(ONE)
    project.run()
    project.run("clean")
    for blob in glob.glob(os.path.join(project.root, ".forge/cas/*/*")):
        os.unlink(blob)
    proc = project.run(expect=2)
    assert "is missing from the cache; rebuild it with `forgebuild -B run:big`" in proc.stderr
    assert project.build("-B") == {"run:big": "built"}


def test_gc_drops_what_no_current_target_uses(project):
    project.forgefile(ONE)
    project.run()
    project.forgefile(ONE.replace("4096", "8192"))
    project.run()
    assert len(_entries(project)) == 2
    out = project.run("gc", "--grace", "0").stdout
    assert out.startswith("removed 1 cache entries, 3 blobs")  # old weights, the old build's log and provenance
    assert len(_entries(project)) == 1
    assert project.build() == {"run:big": "cached"}
    project.forgefile(ONE)
    assert project.build() == {"run:big": "built"}  # the old output really is gone


def test_gc_grace_protects_recent_objects(project):
    project.forgefile(ONE)
    project.run()
    project.forgefile(ONE.replace("4096", "8192"))
    project.run()
    assert project.run("gc").stdout.startswith("removed 0 cache entries, 0 blobs")


def test_stat_cache_reads_an_unchanged_file_once(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1000)
    old = 1_000_000_000
    os.utime(path, (old, old))
    cache = StatCache(str(tmp_path / "stat.json"))
    first = cache.digest(str(path))
    assert cache.hashed_bytes == 1000
    assert cache.digest(str(path)) == first and cache.hashed_bytes == 1000
    cache.save()
    again = StatCache(str(tmp_path / "stat.json"))
    assert again.digest(str(path)) == first and again.hashed_bytes == 0
    path.write_bytes(b"y" * 1000)  # same size and inode; only the mtime tells
    os.utime(path, (old + 1, old + 1))
    assert again.digest(str(path)) != first and again.hashed_bytes == 1000


def test_stat_cache_rehashes_files_too_recent_to_trust(tmp_path):
    """The racy-git case: written within the mtime tick of hashing, a later same-size edit keeps the mtime."""
    path = tmp_path / "racy.txt"
    path.write_bytes(b"aaaa")
    cache = StatCache(str(tmp_path / "stat.json"))
    first = cache.digest(str(path))
    cache.save()  # one build ends...
    st = os.stat(path)
    path.write_bytes(b"bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...an edit the stat signature cannot see...
    assert StatCache(str(tmp_path / "stat.json")).digest(str(path)) != first  # ...the next build sees it


def test_the_same_store_code_runs_over_an_fsspec_filesystem(tmp_path):
    """The seam a remote cache will use: fsspec's memory:// filesystem, no local folder."""
    from forgebuild.store.local import Store

    store = Store("memory://forge-test-store")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("alpha")
    (out / "sub" / "b.bin").write_bytes(b"\0\1")
    manifest = store.ingest_tree(str(out))
    assert [f["path"] for f in manifest["files"]] == ["a.txt", "sub/b.bin"]
    assert all(store.has_blob(f["digest"]) for f in manifest["files"])
    store.put_action("0" * 64, {**manifest, "target": "run:x", "key": "0" * 64})
    assert store.get_action("0" * 64, "run:x")["digest"] == manifest["digest"]
    assert store.get_action("1" * 32) is None
    record_id = store.put_record({"key": "0" * 64, "target": "run:x"})
    assert store.get_record(record_id)["target"] == "run:x"
    assert list(store.action_keys()) == ["0" * 64]
    assert sorted(store.blob_digests()) == sorted(f["digest"] for f in manifest["files"])


def test_gc_right_after_clean_keeps_what_the_forgefile_resolves_to(project):
    project.forgefile(ONE)
    project.run()
    project.runs()
    project.run("clean")
    project.run("gc", "--grace", "0")
    assert project.build() == {"run:big": "cached"}
    assert project.runs() == []
