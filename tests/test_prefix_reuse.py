"""Checkpoint-prefix reuse end to end (forgebuild/rules/model/prefix.py): tiny llamas really trained on
CPU with a warmup-stable-decay schedule. A longer run resumes from a shorter one's stable phase and ends
with the digest of the same run trained from step 0 in a project of its own; a change of anything but
the length or the decay reuses nothing; a sweep over steps trains the stable phase once; a checkpoint
that gc removed, or whose blob is gone, is a miss and the build trains from step 0.

The corpus is small (about 28 steps an epoch) so that the runs cross an epoch boundary before the
stable end they share: the data order of the second epoch must not depend on the run's length."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys

import pytest
import tinylab
from conftest import ENV, Project
from test_models import _wait_for_line  # the SIGKILL test's wait for a stage log line

WSD = 'train = { lr = 3e-3, steps = STEPS, batch_size = 8, warmup_steps = 3, schedule = "wsd", decay_steps = 10 }'
FORGEFILE = tinylab.BASE_FORGEFILE.replace(
    "train = { lr = 3e-3, steps = 30, batch_size = 8, warmup_steps = 3 }", WSD)
assert WSD in FORGEFILE


def wsd_project(root: str, steps: int, extra: str = "") -> Project:
    lab = Project(root)
    if not os.path.isdir(os.path.join(root, "text")):
        tinylab.write_stdlib_text(root, files=6)
    lab.forgefile(FORGEFILE.replace("STEPS", str(steps)) + extra)
    return lab


def built_metrics(lab: Project, *args) -> dict[str, dict]:
    """Build; the `built` event's metrics by target."""
    events = lab.events(*args, timeout=600)
    assert events[-1]["ok"], events[-1]
    return {e["target"]: e.get("metrics", {}) for e in events if e["event"] == "built"}


def digest_of(lab: Project, address: str) -> str:
    return os.path.basename(os.path.realpath(lab.run("path", address).stdout.strip()))


def key_of(lab: Project, address: str) -> str:
    return [e for e in lab.events("explain", address) if e.get("target") == address][0]["key"]


def stage_log(lab: Project, name: str = "base") -> str:
    return lab.read(f".forge/logs/model/{name}.log")


@pytest.fixture(scope="module")
def cold60(tmp_path_factory) -> str:
    """The digest of the 60-step run trained from step 0, in a project (and store) of its own."""
    lab = wsd_project(str(tmp_path_factory.mktemp("cold60")), 60)
    metrics = built_metrics(lab, "model:base")["model:base"]
    assert metrics["prefix_reused_steps"] == 0 and metrics["trained_steps"] == 60
    return digest_of(lab, "model:base")


def test_a_longer_run_resumes_at_the_shorter_ones_stable_end_and_ends_as_a_cold_run(tmp_path, cold60):
    lab = wsd_project(str(tmp_path), 40)
    first = built_metrics(lab, "model:base")["model:base"]
    assert first["prefix_reused_steps"] == 0 and first["trained_steps"] == 40
    assert "kept the stable-phase checkpoint (step 30) for longer runs" in stage_log(lab)
    key40 = key_of(lab, "model:base")

    lab.forgefile(FORGEFILE.replace("STEPS", "60"))
    second = built_metrics(lab, "model:base")["model:base"]
    assert (second["prefix_reused_steps"], second["trained_steps"], second["steps"]) == (30, 30, 60)
    assert second["prefix_key"] == key40 and second["prefix_target"] == "model:base"
    assert f"resuming from step 30: the stable phase of model:base (key {key40[:12]})" in stage_log(lab)
    assert digest_of(lab, "model:base") == cold60
    rows = [json.loads(line) for line in open(os.path.join(lab.root, ".forge/out/model/base/training_log.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 61))  # the reused steps are in the log
    assert [r["epoch"] for r in rows if r["step"] == 30][0] > 1  # the shared prefix crossed an epoch boundary
    assert "verified" in lab.run("verify").stdout

    # another lr is another run: nothing of the 40- or 60-step run is reused
    lab.forgefile(FORGEFILE.replace("STEPS", "70").replace("lr = 3e-3", "lr = 2e-3"))
    third = built_metrics(lab, "model:base")["model:base"]
    assert (third["prefix_reused_steps"], third["trained_steps"]) == (0, 70)
    assert "prefix_key" not in third and "stable phase of" not in stage_log(lab)


def test_a_sweep_over_steps_trains_the_stable_phase_once(tmp_path):
    """Cells of 20, 40 and 60 steps (decay 10, stable ends 10, 30, 50) built one at a time: 20 + 30 + 30
    steps trained, not 120; each cell resumed from the cell before it."""
    lab = wsd_project(str(tmp_path), 20, 'matrix = { "train.steps" = [20, 40, 60] }\n')
    metrics = built_metrics(lab, "model:base", "-j", "1")
    cells = ["model:base[steps=20]", "model:base[steps=40]", "model:base[steps=60]"]
    assert sorted(a for a in metrics if a.startswith("model:")) == sorted(cells)
    assert sum(metrics[c]["trained_steps"] for c in cells) == 80
    assert [metrics[c]["prefix_reused_steps"] for c in cells] == [0, 10, 30]
    assert [metrics[c].get("prefix_target") for c in cells] == [None, cells[0], cells[1]]
    assert "verified" in lab.run("verify").stdout


def test_a_checkpoint_gc_removed_is_a_miss_and_the_build_trains_from_step_0(tmp_path, cold60):
    lab = wsd_project(str(tmp_path), 40)
    built_metrics(lab, "model:base")
    assert len(glob.glob(os.path.join(lab.root, ".forge/index/*/30.json"))) == 1
    lab.run("clean")  # forgets the last builds: gc keeps the current Forgefile's targets only
    lab.forgefile(FORGEFILE.replace("STEPS", "60"))
    lab.run("gc", "--grace", "0")
    assert glob.glob(os.path.join(lab.root, ".forge/index/*/*.json")) == []  # the member went with its memo
    metrics = built_metrics(lab, "model:base")["model:base"]
    assert (metrics["prefix_reused_steps"], metrics["trained_steps"]) == (0, 60)
    assert digest_of(lab, "model:base") == cold60


@pytest.mark.corrupts_cache
def test_a_checkpoint_whose_blob_is_gone_is_a_miss_and_the_build_trains_from_step_0(tmp_path, cold60):
    lab = wsd_project(str(tmp_path), 40)
    built_metrics(lab, "model:base")
    [mark] = glob.glob(os.path.join(lab.root, ".forge/index/*/30.json"))
    memo_key = json.load(open(mark))["memo"]
    entry = json.load(open(os.path.join(lab.root, ".forge/ac", memo_key[:2], f"{memo_key}.json")))
    weights = [f["digest"] for f in entry["files"] if f["path"] == "model.safetensors"][0]
    lab.run("clean")  # the materialised copies go too: the store's blob is the one left
    os.unlink(os.path.join(lab.root, ".forge/cas", weights[:2], weights))
    lab.forgefile(FORGEFILE.replace("STEPS", "60"))
    metrics = built_metrics(lab, "model:base")["model:base"]
    assert (metrics["prefix_reused_steps"], metrics["trained_steps"]) == (0, 60)
    assert digest_of(lab, "model:base") == cold60


def test_a_killed_build_that_reused_a_prefix_resumes_from_its_own_later_checkpoint(tmp_path, cold60):
    lab = wsd_project(str(tmp_path), 40)
    built_metrics(lab, "model:base")
    lab.forgefile(FORGEFILE.replace("STEPS", "60") + "checkpoint_every = 5\nlog_every = 1\n")
    log = os.path.join(lab.root, ".forge/logs/model/base.log")
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", "model:base"], cwd=lab.root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_line(log, "checkpoint at step 40")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "resuming from step 30: the stable phase" in open(log, encoding="utf-8").read()
    metrics = built_metrics(lab, "model:base")["model:base"]
    assert metrics["prefix_reused_steps"] == 0 and metrics["resumed_from_step"] >= 40  # its own, not the prefix
    assert "resuming from checkpoint-" in stage_log(lab)
    assert digest_of(lab, "model:base") == cold60


@pytest.mark.parametrize("train, message", [
    ("lr = 3e-3, steps = 60, decay_steps = 10",
     "decay_steps applies to schedule = \"wsd\" only (this schedule is \"cosine\")"),
    ('lr = 3e-3, schedule = "wsd"',
     "schedule = \"wsd\" counts its decay back from the last step: set steps, or give the decay as decay_steps"),
    ('lr = 3e-3, steps = 60, schedule = "wsd", decay_steps = 10, decay_fraction = 0.5',
     "give either decay_steps or decay_fraction, not both"),
    ('lr = 3e-3, steps = 60, warmup_steps = 3, schedule = "wsd", decay_steps = 58',
     "warmup_steps 3 and a decay of 58 steps do not fit in 60 steps"),
])
def test_a_wsd_train_table_that_cannot_be_run_is_a_forgefile_error(project, train, message):
    project.write("text/a.txt", "some text\n")
    project.forgefile(FORGEFILE.replace(WSD, f"train = {{ {train} }}"))
    proc = project.run("status", "model:base", expect=2)
    line = FORGEFILE.replace(WSD, "TRAIN").split("\n").index("TRAIN") + 1  # the train table's line
    assert proc.stderr.strip() == f"Forgefile.toml:{line}: error: model:base: key 'train': {message}"
