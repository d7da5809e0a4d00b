"""Forgefile.lock, `build --frozen` and `verify` (re-hash the cache, or rebuild and compare)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from conftest import Project

PIPELINE = """
[run.prepare]
cmd = "echo prepare >> runs.txt && python3 scripts/prep.py {in.raw} {out}/corpus.txt {params.repeat}"
inputs = { raw = "data/raw.txt", script = "scripts/prep.py" }
params = { repeat = 1 }

[run.count]
cmd = "echo count >> runs.txt && wc -w < {in.corpus}/corpus.txt | tr -d ' ' > {out}/count.txt"
inputs = { corpus = "run:prepare" }

[run.other]
cmd = "echo other >> runs.txt && cp {in.src} {out}/copy.txt"
inputs = { src = "data/other.txt" }
"""

PREP = """
import sys
raw, out, repeat = sys.argv[1:]
open(out, "w").write(open(raw).read().lower() * int(repeat))
"""

FROZEN_HINT = "(if the changes are intended: build without --frozen, then `forgebuild lock`)"


@pytest.fixture
def pipeline(project):
    project.write("data/raw.txt", "The quick brown fox\n")
    project.write("data/other.txt", "other\n")
    project.write("scripts/prep.py", PREP)
    project.forgefile(PIPELINE)
    assert set(project.build().values()) == {"built"}
    project.runs()
    return project


def _status(project) -> dict:
    return {t["target"]: t for t in project.events("status")[-1]["targets"]}


def _lock(project) -> dict:
    return json.loads(project.read("Forgefile.lock"))


# ------------------------------------------------------------------ lock

def test_lock_records_every_key_digest_material_and_the_toolchain(pipeline):
    from importlib.metadata import version

    proc = pipeline.run("lock")
    assert proc.stdout == "wrote Forgefile.lock (3 targets)\n"
    text = pipeline.read("Forgefile.lock")
    assert text.endswith("}\n")
    lock = json.loads(text)
    assert lock["format"] == 1 and lock["forgefile"] == "Forgefile.toml"
    assert lock["toolchain"]["torch"] == version("torch")
    assert {"python", "forgebuild", "transformers", "trl", "peft", "tokenizers", "pyarrow"} <= set(lock["toolchain"])
    status = _status(pipeline)
    assert {a: (t["key"], t["digest"]) for a, t in lock["targets"].items()} == {
        a: (t["key"], t["digest"]) for a, t in status.items()}
    prepare = lock["targets"]["run:prepare"]["material"]
    assert prepare["params"]["params"] == {"repeat": 1}
    assert [entry[1] for entry in prepare["inputs"]["inputs.raw"]] == ["data/raw.txt"]
    count = lock["targets"]["run:count"]["material"]
    assert count["inputs"]["inputs.corpus"] == [["target", "run:prepare", status["run:prepare"]["digest"]]]
    summary = pipeline.events("lock")[-1]
    assert summary["ok"] and summary["written"] is False and len(summary["targets"]) == 3


def test_relock_writes_identical_bytes(pipeline):
    pipeline.run("lock")
    path = os.path.join(pipeline.root, "Forgefile.lock")
    before, mtime = open(path, "rb").read(), os.stat(path).st_mtime_ns
    assert pipeline.run("lock").stdout == "Forgefile.lock is up to date (3 targets)\n"
    assert open(path, "rb").read() == before and os.stat(path).st_mtime_ns == mtime
    os.unlink(path)
    pipeline.run("lock")
    assert open(path, "rb").read() == before  # written from scratch: the same bytes


def test_lock_refuses_targets_that_are_not_built(pipeline):
    pipeline.forgefile(PIPELINE.replace("repeat = 1", "repeat = 2"))
    proc = pipeline.run("lock", expect=1)
    assert proc.stderr == (
        "forgebuild: cannot lock run:prepare: it is stale (param params.repeat 1 -> 2)\n"
        "forgebuild: cannot lock run:count: it is stale (dependency run:prepare is stale)\n"
        "forgebuild: build them first: forgebuild run:prepare run:count\n")
    assert not os.path.exists(os.path.join(pipeline.root, "Forgefile.lock"))
    summary = pipeline.events("lock", expect=1)[-1]
    assert summary["ok"] is False and summary["unbuilt"] == ["run:prepare", "run:count"]
    pipeline.run("lock", "run:other")  # the fresh part of the graph can be locked on its own
    assert set(_lock(pipeline)["targets"]) == {"run:other"}


def test_lock_of_named_targets_keeps_the_other_entries(pipeline):
    pipeline.run("lock")
    other = _lock(pipeline)["targets"]["run:other"]
    pipeline.write("data/raw.txt", "A new text\n")
    pipeline.run("run:count")
    pipeline.write("data/other.txt", "not built yet\n")  # run:other is stale now: `lock run:count` leaves it
    assert pipeline.run("lock", "run:count").stdout == "wrote Forgefile.lock (3 targets, 2 changed)\n"
    lock = _lock(pipeline)["targets"]
    assert lock["run:other"] == other
    assert lock["run:count"]["key"] == _status(pipeline)["run:count"]["key"]


def test_lock_keeps_declared_variables_by_digest_only(project):
    project.forgefile("""
        [run.flagged]
        cmd = "echo $FORGE_TEST_TOKEN | wc -c > {out}/n"
        pass_env = ["FORGE_TEST_TOKEN"]
    """)
    project.run(env={"FORGE_TEST_TOKEN": "s3cret-value"})
    project.run("lock", env={"FORGE_TEST_TOKEN": "s3cret-value"})
    assert "s3cret" not in project.read("Forgefile.lock")
    value = _lock(project)["targets"]["run:flagged"]["material"]["env"]["vars"]["FORGE_TEST_TOKEN"]
    assert value.startswith("xxh3:")
    project.run("--frozen", env={"FORGE_TEST_TOKEN": "s3cret-value"})
    proc = project.run("--frozen", expect=1, env={"FORGE_TEST_TOKEN": "other"})
    assert proc.stderr.splitlines()[0] == \
        "forgebuild: run:flagged differs from Forgefile.lock: environment FORGE_TEST_TOKEN changed"
    assert "s3cret" not in proc.stderr + proc.stdout
    proc = project.run("--frozen", expect=1)  # not set at all
    assert proc.stderr.splitlines()[0] == \
        "forgebuild: run:flagged differs from Forgefile.lock: environment FORGE_TEST_TOKEN unset"


# ------------------------------------------------------------------ --frozen

def test_frozen_passes_on_an_unchanged_project(pipeline):
    pipeline.run("lock")
    assert set(pipeline.build("--frozen").values()) == {"cached"}
    assert pipeline.run("--frozen").stdout.startswith("nothing to do: 3 targets up to date")
    assert pipeline.runs() == []


def test_frozen_builds_a_fresh_checkout_that_matches_the_lock(pipeline, tmp_path_factory):
    """Nothing built yet: a dependent is keyed with its dependency's locked output."""
    pipeline.run("lock")
    clone = str(tmp_path_factory.mktemp("clone"))
    for rel in ("Forgefile.toml", "Forgefile.lock", "data", "scripts"):
        src = os.path.join(pipeline.root, rel)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(clone, rel))
    there = Project(clone)
    assert set(there.build("--frozen").values()) == {"built"}
    assert {a: t["key"] for a, t in _status(there).items()} == {a: t["key"] for a, t in _lock(pipeline)["targets"].items()}


def test_frozen_fails_on_a_param_edit_naming_target_and_change(pipeline):
    pipeline.run("lock")
    pipeline.forgefile(PIPELINE.replace("repeat = 1", "repeat = 2"))
    proc = pipeline.run("--frozen", expect=1)
    assert proc.stderr == (
        "forgebuild: run:prepare differs from Forgefile.lock: param params.repeat 1 -> 2\n"
        f"forgebuild: --frozen: run:prepare differs from Forgefile.lock; nothing was built {FROZEN_HINT}\n")
    assert proc.stdout == "" and pipeline.runs() == []
    events = pipeline.events("build", "--frozen", expect=1)
    assert events[0] == {"event": "frozen", "target": "run:prepare", "problem": "key",
                         "reasons": ["param params.repeat 1 -> 2"], "key": events[0]["key"],
                         "locked_key": _lock(pipeline)["targets"]["run:prepare"]["key"]}
    assert events[-1]["event"] == "summary" and events[-1]["ok"] is False and len(events[-1]["frozen"]) == 1
    # once built (without --frozen), the dependent's key differs too, and says why
    pipeline.build()
    proc = pipeline.run("--frozen", expect=1)
    assert proc.stderr.splitlines()[:2] == [
        "forgebuild: run:prepare differs from Forgefile.lock: param params.repeat 1 -> 2",
        "forgebuild: run:count differs from Forgefile.lock: dependency run:prepare rebuilt with new output"]


def test_frozen_fails_on_an_input_edit(pipeline):
    pipeline.run("lock")
    pipeline.write("data/other.txt", "changed\n")
    proc = pipeline.run("run:other", "--frozen", expect=1)
    assert proc.stderr.splitlines()[0] == "forgebuild: run:other differs from Forgefile.lock: input data/other.txt changed"
    assert pipeline.runs() == []
    assert pipeline.build("run:prepare", "--frozen") == {"run:prepare": "cached"}  # other targets still pass


def test_frozen_names_unlocked_targets_and_toolchain_drift(pipeline):
    pipeline.run("lock", "run:prepare")
    lock = _lock(pipeline)
    lock["toolchain"]["torch"] = "1.0.0"
    with open(os.path.join(pipeline.root, "Forgefile.lock"), "w") as f:
        json.dump(lock, f)
    from importlib.metadata import version

    proc = pipeline.run("run:count", "--frozen", expect=1)
    assert proc.stderr.splitlines() == [
        "forgebuild: run:count is not in Forgefile.lock",
        f"forgebuild: toolchain differs from Forgefile.lock: torch 1.0.0 -> {version('torch')}",
        f"forgebuild: --frozen: run:count differs from Forgefile.lock (and the toolchain); nothing was built "
        f"{FROZEN_HINT}"]


def test_frozen_without_a_lock_is_a_usage_error(pipeline):
    proc = pipeline.run("--frozen", expect=2)
    assert proc.stderr == "forgebuild: no Forgefile.lock: write it with `forgebuild lock` once the targets are built\n"
    pipeline.write("elsewhere.lock", "{}")
    proc = pipeline.run("--frozen", "--lock", "elsewhere.lock", expect=2)
    assert proc.stderr == 'forgebuild: elsewhere.lock: not a forgebuild lock file (no "targets" with keys)\n'


# ------------------------------------------------------------------ verify: re-hash

def test_verify_rehashes_the_cache_and_names_a_corrupt_blob(pipeline):
    proc = pipeline.run("verify")
    assert proc.stdout.splitlines()[-1].startswith("verified: 3 targets, 3 cached files match their digests (")
    corpus = os.path.join(pipeline.root, ".forge/out/run/prepare/corpus.txt")
    from forgebuild.hashing import file_digest

    digest = file_digest(corpus)
    blob = os.path.join(pipeline.root, ".forge/cas", digest[:2], digest)
    os.chmod(blob, 0o644)
    with open(blob, "w") as f:
        f.write("tampered\n")
    found = file_digest(blob)
    output = _status(pipeline)["run:prepare"]["digest"]
    rel = os.path.relpath(blob, pipeline.root)
    proc = pipeline.run("verify", expect=1)
    assert proc.stdout.splitlines() == [
        f"ok      run:other    {_status(pipeline)['run:other']['digest'][:12]}  1 file",
        f"CORRUPT run:prepare  output {output}",
        f"  corpus.txt: blob {digest} now hashes to {found}: {rel}",
        f"ok      run:count    {_status(pipeline)['run:count']['digest'][:12]}  1 file",
        "verify: 1 of 3 targets have corrupt cache entries (run:prepare)",
        f"repair: forgebuild clean && rm -f {rel} && forgebuild -B run:prepare",
    ]
    [event] = [e for e in pipeline.events("verify", "run:prepare", expect=1) if e["event"] == "verified"]
    assert event["match"] is False and event["files"][0]["problem"] == "corrupt" and event["files"][0]["found"] == found
    # the repair it prints works
    pipeline.run("clean")
    os.unlink(blob)
    pipeline.run("-B", "run:prepare")
    pipeline.run("verify")
    assert pipeline.read(".forge/out/run/prepare/corpus.txt") == "the quick brown fox\n"


def test_verify_reports_targets_that_are_not_built(pipeline):
    pipeline.write("data/other.txt", "changed\n")
    proc = pipeline.run("verify", expect=1)
    assert "stale   run:other    not built (input data/other.txt changed)" in proc.stdout
    assert proc.stdout.splitlines()[-2:] == ["verify: 1 not built (run:other)", "build: forgebuild run:other"]


# ------------------------------------------------------------------ verify --rebuild

def test_verify_rebuild_matches_a_deterministic_closure_and_leaves_no_trace(pipeline):
    pipeline.run("lock")
    history = pipeline.read(".forge/state/log.jsonl")
    links = {a: os.readlink(os.path.join(pipeline.root, ".forge/out/run", a)) for a in ("prepare", "count")}
    proc = pipeline.run("verify", "--rebuild", "run:count")
    lines = proc.stdout.splitlines()
    status = _status(pipeline)
    assert lines[:4] == ["build   run:prepare  (verify: rebuilding without caches)", lines[1],
                         "build   run:count  (verify: rebuilding without caches)", lines[3]]
    assert lines[4:6] == [f"same    run:prepare  {status['run:prepare']['digest'][:12]}",
                          f"same    run:count    {status['run:count']['digest'][:12]}"]
    assert lines[6].startswith("verified: 2 targets rebuilt bit for bit (")
    assert sorted(pipeline.runs()) == ["count", "prepare"]  # really ran again: no cache was used
    assert pipeline.read(".forge/state/log.jsonl") == history  # the workspace's own state is untouched
    assert {a: os.readlink(os.path.join(pipeline.root, ".forge/out/run", a)) for a in links} == links
    assert os.listdir(os.path.join(pipeline.root, ".forge/scratch")) == []
    assert pipeline.run("lock").stdout == "Forgefile.lock is up to date (3 targets)\n"
    events = pipeline.events("verify", "--rebuild", "run:prepare")
    assert [e["event"] for e in events] == ["rebuild", "rebuild", "verified", "summary"]
    assert events[2]["match"] is True and events[2]["digest"] == events[2]["rebuilt_digest"]


def test_verify_rebuild_lists_the_file_that_differs(project):
    project.forgefile("""
        [run.clock]
        cmd = "date +%s%N > {out}/t && echo fixed > {out}/same"

        [run.reader]
        cmd = "cat {in.clock}/same > {out}/copy"
        inputs = { clock = "run:clock" }
    """)
    project.run()
    before = project.read(".forge/out/run/clock/t")
    proc = project.run("verify", "--rebuild", expect=1)
    digest = _status(project)["run:clock"]["digest"]
    lines = proc.stdout.splitlines()
    differs = [line for line in lines if line.startswith("DIFFERS")]
    assert len(differs) == 1 and differs[0].startswith(f"DIFFERS run:clock   {digest[:12]} -> ")
    assert f"  t: changed ({len(before)} bytes; first difference on line 1)" in lines
    assert not any(line.startswith("  same") for line in lines)
    assert any(line.startswith("same    run:reader") for line in lines)  # same output from a different input
    assert lines[-1].startswith("verify: 1 of 2 targets differ after rebuilding without caches (run:clock) (")
    [event] = [e for e in project.events("verify", "--rebuild", "run:clock", expect=1) if e["event"] == "verified"]
    assert event["match"] is False and event["digest"] == digest
    assert [(f["path"], f["change"]) for f in event["files"]] == [("t", "changed")]
    assert project.read(".forge/out/run/clock/t") == before  # the workspace's output is still the first build's


def test_verify_rebuild_refuses_targets_that_are_not_built(pipeline):
    pipeline.forgefile(PIPELINE.replace("repeat = 1", "repeat = 3"))
    proc = pipeline.run("verify", "--rebuild", "run:prepare", expect=1)
    assert proc.stderr == ("forgebuild: cannot verify run:prepare: it is stale (param params.repeat 1 -> 3)\n"
                           "forgebuild: build it first: forgebuild run:prepare\n")
    assert pipeline.runs() == []


def test_verify_rebuild_reports_a_stage_that_fails_to_rebuild(project):
    project.forgefile("""
        [run.once]
        cmd = "test ! -e done.txt && touch done.txt && echo x > {out}/x"
    """)
    project.run()
    proc = project.run("verify", "--rebuild", expect=1)
    assert "FAILED  run:once: command exited with code 1" in proc.stdout
    assert any(line.startswith("FAILED  run:once  not verified: rebuild failed: command exited with code 1")
               for line in proc.stdout.splitlines())
    assert proc.stdout.splitlines()[-1].startswith("verify: 1 could not be rebuilt (run:once) (")


def test_release_targets_publish_into_the_scratch_folder_when_verifying():
    from forgebuild.cli.verify import _sandboxed
    from forgebuild.planning.plan import Plan, TargetPlan

    release = TargetPlan("release:prod", "release", "1", None, {"model": "model:m", "to": "s3://bucket/prod"}, [], [])
    plan = Plan("/p/Forgefile.toml", {}, {"release:prod": release}, ["release:prod"])
    sandboxed = _sandboxed(plan, "/p/.forge/scratch/verify-x")
    assert sandboxed.targets["release:prod"].params["to"] == ".forge/scratch/verify-x/release/prod"
    assert plan.targets["release:prod"].params["to"] == "s3://bucket/prod"


# ------------------------------------------------------------------ per-tensor differences

def test_compare_safetensors_reports_each_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    from forgebuild.cli.tensors import compare_safetensors
    from forgebuild.cli.verify import compare_manifests, file_lines

    base = {"same": torch.arange(6, dtype=torch.float32).reshape(2, 3), "nudged": torch.ones(4),
            "grown": torch.zeros(2, 2), "gone": torch.zeros(1), "half": torch.ones(3, dtype=torch.bfloat16),
            "nan": torch.tensor([float("nan"), 1.0])}
    other = dict(base, nudged=torch.tensor([1.0, 1.0, 1.5, 0.0]), grown=torch.zeros(3, 2),
                 half=torch.tensor([1.0, 1.0, 2.0], dtype=torch.bfloat16), fresh=torch.ones(2, dtype=torch.int64),
                 nan=torch.tensor([float("nan"), 1.0]))
    del other["gone"]
    a, b = str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")
    save_file(base, a, metadata={"format": "pt"})
    save_file(other, b, metadata={"format": "pt"})
    found = compare_safetensors(a, b)
    assert found["equal"] == 2 and found["metadata_changed"] is False  # "same" and "nan" (NaN equals NaN)
    by_name = {t["name"]: t for t in found["tensors"]}
    assert set(by_name) == {"nudged", "grown", "gone", "half", "fresh"}
    nudged = by_name["nudged"]
    assert (nudged["change"], nudged["numel"], nudged["differing"]) == ("values", 4, 2)
    assert nudged["max_abs_diff"] == 1.0
    assert nudged["l2_diff"] == pytest.approx((0.5 ** 2 + 1.0) ** 0.5)
    assert nudged["relative"] == pytest.approx(nudged["l2_diff"] / 2.0)
    assert by_name["grown"]["change"] == "shape" and by_name["grown"]["rebuilt_shape"] == [3, 2]
    assert by_name["gone"]["change"] == "removed" and by_name["fresh"]["change"] == "added"
    assert by_name["half"]["dtype"] == "bfloat16" and by_name["half"]["max_abs_diff"] == 1.0
    json.dumps(found, allow_nan=False)  # plain JSON for --json

    class Store:  # a manifest's blobs by digest, as the comparison reads them
        def blob_path(self, digest):
            return {"da": a, "db": b}[digest]

    files = compare_manifests({"files": [{"path": "model.safetensors", "digest": "da", "size": 1}]}, Store(),
                              {"files": [{"path": "model.safetensors", "digest": "db", "size": 2}]}, Store())
    lines = file_lines(files[0])
    assert lines[0] == "model.safetensors: changed (1 -> 2 bytes; 5 tensors differ, 2 equal)"
    assert "  nudged: 2 of 4 values differ; max |diff| 1, L2 1.12, relative 0.559" in lines
    assert "  grown: shape [2, 2] -> [3, 2]" in lines


def test_verify_rebuild_of_a_small_sft_model_is_bit_for_bit(recipe_project):
    p = recipe_project
    p.forgefile(p.preamble + """
        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "dataset:sft"
        max_length = 32
        train = { lr = 1e-3, steps = 3, batch_size = 8 }
        threads = 1
    """)
    p.run("model:sft", timeout=300)
    p.run("lock", "model:sft")
    events = p.events("verify", "--rebuild", "model:sft")
    verified = {e["target"]: e for e in events if e["event"] == "verified"}
    assert set(verified) == {"model:base", "dataset:sft", "model:sft"}
    assert all(e["match"] for e in verified.values()), verified
    assert events[-1]["ok"] is True
    assert set(p.build("--frozen", "model:sft").values()) == {"cached"}


def test_frozen_results_catch_a_stage_that_rebuilt_to_another_output(pipeline, capsys, monkeypatch):
    """After the build: a dependency whose rebuild differs from the locked output changes its
    reader's key, which only the build itself can show (for cmd_build to call after running)."""
    import argparse

    from forgebuild.cli import Session
    from forgebuild.engine.executor import Result
    from forgebuild.cli.lock import frozen_results

    pipeline.run("lock")
    status = _status(pipeline)
    monkeypatch.chdir(pipeline.root)
    args = argparse.Namespace(file="Forgefile.toml", lock=None, json=True)
    session = Session(args)
    events = []
    same = [Result(a, "cached", t["key"], t["digest"]) for a, t in status.items()]
    assert frozen_results(args, session, same, events.append) is False and events == []
    other = [Result("run:prepare", "built", status["run:prepare"]["key"], "0" * 32),
             Result("run:count", "built", "1" * 32, "2" * 32)]
    assert frozen_results(args, session, other, events.append) is True
    assert [(e["event"], e["target"], e["problem"]) for e in events] == [
        ("frozen", "run:prepare", "output"), ("frozen", "run:count", "key")]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("forgebuild: run:prepare differs from Forgefile.lock: same key, but it built " + "0" * 32
                      + f" and the lock has {status['run:prepare']['digest']}: the stage did not reproduce the "
                      "locked output")
    assert err[1] == "forgebuild: run:count differs from Forgefile.lock: key changed"
    assert err[2].startswith("forgebuild: --frozen: run:prepare, run:count differ from Forgefile.lock after building")
