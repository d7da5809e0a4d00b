"""Trackers: `track = { mlflow = true, tensorboard = true }` streams a training stage's curve and an
eval's metrics, in runs named by the action key; read back with MLflow's own client and
TensorBoard's own EventAccumulator, through the real CLI."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import tinylab
from conftest import ENV, Project

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TRACK = "track = { mlflow = true, tensorboard = true }"
FORGEFILE = """
[forge]
seed = 11
FORGE_TRACK

[corpus.stdlib]
sources = ["text/*.txt"]
holdout = 0.25

[tokenizer.bpe]
corpus = "corpus:stdlib"
vocab_size = 300

[model.tiny]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
corpus = "corpus:stdlib"
seq_len = 32
arch = { family = "llama", hidden = 32, layers = 1, heads = 2 }
train = { lr = 3e-3, steps = 24, batch_size = 4 }
threads = 1
checkpoint_every = 4
log_every = 1
MODEL_TRACK

[model.nan]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
corpus = "corpus:stdlib"
seq_len = 32
arch = { family = "llama", hidden = 32, layers = 1, heads = 2 }
train = { lr = 1e30, steps = 4, batch_size = 4, max_grad_norm = 0.0 }
threads = 1

[eval.ppl]
models = ["model:tiny"]
benchmarks = [{ name = "holdout", kind = "perplexity", corpus = "corpus:stdlib", seq_len = 32 }]
limit = 8
bootstrap = 200
threads = 1
EVAL_TRACK
"""


def forgefile(forge_track: str = "", eval_track: str = "", model_track: str = "") -> str:
    return (FORGEFILE.replace("FORGE_TRACK", forge_track).replace("EVAL_TRACK", eval_track)
            .replace("MODEL_TRACK", model_track))


def keys(lab: Project) -> dict[str, str]:
    return {e["target"]: e["key"] for e in lab.events("status")[:-1]}


def runs_of(client, key: str, experiment: str = "tracked") -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], filter_string=f"tags.`forgebuild.key` = '{key}'")


def loss_steps(client, run) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, "loss")]


def tensorboard_steps(folder: str, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder)
    events.Reload()
    return [s.step for s in events.Scalars(tag)]


def kill_after(lab: Project, line: str, *args: str) -> None:
    """Start a build and SIGKILL its whole process group once the stage log shows `line`."""
    log = os.path.join(lab.root, ".forge/logs/model/tiny.log")
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", *args], cwd=lab.root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (os.path.exists(log) and line in open(log, encoding="utf-8").read()):
            assert time.time() < deadline and proc.poll() is None, f"'{line}' never appeared in {log}"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_tracked_stage_streams_its_curve_a_killed_one_continues_its_run_and_a_cache_hit_logs_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    lab = Project(str(tmp_path / "tracked"))
    tinylab.write_stdlib_text(lab.root, files=16, max_chars=2000)
    lab.forgefile(forgefile())
    lab.build("tokenizer:bpe")  # a stage's key is known once its inputs are built
    untracked = keys(lab)
    # the project's default for every model and eval; the eval's own track wins: its URI, its experiment
    lab.forgefile(forgefile(TRACK, 'track = { mlflow = "sqlite:///evals.db", experiment = "evals" }'))
    assert keys(lab) == untracked  # runtime only: tracking never enters a key
    key = untracked["model:tiny"]

    kill_after(lab, "step 10/24", "model:tiny")  # past the checkpoint at step 8 (a busy machine: maybe 12)
    client = MlflowClient(f"sqlite:///{lab.root}/.forge/mlflow.db")
    (killed,) = runs_of(client, key)
    assert killed.info.status == "RUNNING" and loss_steps(client, killed)[:8] == list(range(1, 9))

    # with a stage that fails beside it (-j 2: both open the store at once)
    built = lab.build("eval:ppl", "model:nan", "-k", "-j", "2", expect=1, timeout=300)
    assert (built["model:tiny"], built["model:nan"]) == ("built", "failed")
    resumed = int(re.search(r"resuming from checkpoint-(\d+)", lab.read(".forge/logs/model/tiny.log")).group(1))
    assert 8 <= resumed < 24
    (run,) = runs_of(client, key)  # the same run, its curve continued: one point per step
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert loss_steps(client, run) == list(range(1, 25))
    with open(os.path.join(lab.root, ".forge/out/model/tiny/training_log.jsonl"), encoding="utf-8") as f:
        trained = [row["loss"] for row in map(json.loads, f) if "loss" in row]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == pytest.approx(trained, rel=1e-6)
    assert run.data.tags["forgebuild.target"] == "model:tiny" and run.data.params["train.lr"] == "0.003"
    assert run.data.params["arch.hidden"] == "32" and "threads" not in run.data.params
    # TensorBoard: the steps trained again after the checkpoint replace the killed build's (purged)
    board = os.path.join(lab.root, ".forge/tensorboard/model-tiny", key[:16])
    assert tensorboard_steps(board, "train/loss") == list(range(1, 25))
    assert tensorboard_steps(board, "eval/loss") == [24]  # pretrain's holdout loss, after training ended
    event_files = sorted(glob.glob(os.path.join(board, "events.out.tfevents.*")))

    evals = MlflowClient(f"sqlite:///{lab.root}/evals.db")  # a relative URI: from the Forgefile's folder
    (scored,) = runs_of(evals, keys(lab)["eval:ppl"], "evals")
    assert scored.data.tags["forgebuild.model"] == "model:tiny" and scored.info.status == "FINISHED"
    metrics = scored.data.metrics
    assert metrics["holdout.perplexity.low"] <= metrics["holdout.perplexity"] <= metrics["holdout.perplexity.high"]
    assert not os.path.exists(os.path.join(lab.root, ".forge/tensorboard/eval-ppl"))  # mlflow only, as asked

    (failed,) = runs_of(client, keys(lab)["model:nan"])  # a NaN loss: the run says so
    assert failed.info.status == "FAILED" and failed.data.tags["forgebuild.target"] == "model:nan"

    # a cache hit runs no build: no new run, no new point, no new event file
    assert set(lab.build("eval:ppl").values()) == {"cached"}
    experiment = client.get_experiment_by_name("tracked").experiment_id
    assert len(client.search_runs([experiment])) == 2 and len(runs_of(evals, keys(lab)["eval:ppl"], "evals")) == 1
    assert loss_steps(client, runs_of(client, key)[0]) == list(range(1, 25))
    assert sorted(glob.glob(os.path.join(board, "events.out.tfevents.*"))) == event_files
    # and turning tracking off leaves every built target fresh
    lab.forgefile(forgefile())
    status = lab.events("status")[:-1]
    assert {e["target"]: e["state"] for e in status} == {**dict.fromkeys(untracked, "fresh"), "model:nan": "missing"}
    assert {e["target"]: e["key"] for e in status}["model:tiny"] == key


def test_a_bad_track_is_a_forgefile_error(tmp_path):
    lab = Project(str(tmp_path))
    lab.write("text/a.txt", "a line\n")
    lab.forgefile(forgefile(eval_track='track = { mlflow = "", wandb = true }',
                            model_track='track = { mlflow = 1, tensorboard = "../elsewhere" }'))
    proc = lab.run("status", expect=2)
    assert proc.stderr.splitlines() == [
        "Forgefile.toml:24: error: model:tiny: key 'track.mlflow': expected true or false or a string, got integer 1",
        "Forgefile.toml:24: error: model:tiny: key 'track.tensorboard': '../elsewhere' is outside the project "
        "folder: name a folder inside it",
        "Forgefile.toml:41: error: eval:ppl: key 'track.mlflow': empty: write true for the default place, or name one",
        "Forgefile.toml:41: error: eval:ppl: key 'track.wandb': unknown key",
    ]
