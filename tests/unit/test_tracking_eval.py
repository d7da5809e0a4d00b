"""An eval's results through `track` (forgebuild/rules/model/tracking.py log_eval), in this process:
one MLflow run per eval key and model, each metric with its interval, and TensorBoard scalars; a
build of the same key run again (killed after it logged) adds nothing. Read back with MLflow's own
client and TensorBoard's EventAccumulator."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

REPORT = {"results": {
    "model:a": {"sums.exact_match": {"value": 0.5, "low": 0.25, "high": 0.75, "n": 8},
                "holdout.perplexity": {"value": float("inf"), "low": None, "high": None, "n": 0}},
    "model:b[lr=0.001]": {"sums.exact_match": {"value": 0.875, "low": 0.625, "high": 1.0, "n": 8},
                          "holdout.perplexity": {"value": 12.5, "low": 11.0, "high": 14.0, "n": 3}},
}}


def eval_context(root: str, track: dict):
    from forgebuild.rules import eval as eval_rule

    params = eval_rule.Params.model_validate({
        "models": ["model:a", "model:b[lr=0.001]"], "benchmarks": ["bench/sums.jsonl"], "track": track})
    return SimpleNamespace(params=params, key="ab" * 32, target="eval:sweep", project_dir=root,
                           workspace_dir=os.path.join(root, ".forge"), digest_of=lambda a: "d-" + a)


def test_each_model_gets_a_run_of_its_results_once(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from forgebuild.rules.model.tracking import log_eval

    root = str(tmp_path / "proj")
    os.makedirs(root)
    ctx = eval_context(root, {"mlflow": True, "tensorboard": "runs"})
    log_eval(ctx, REPORT)
    log_eval(ctx, REPORT)  # the same key built again: its runs hold the metrics already

    client = MlflowClient(f"sqlite:///{root}/.forge/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("proj").experiment_id])
    by_model = {run.data.tags["forgebuild.model"]: run for run in runs}
    assert sorted(by_model) == ["model:a", "model:b[lr=0.001]"]
    b = by_model["model:b[lr=0.001]"]
    assert b.data.metrics == {"sums.exact_match": 0.875, "sums.exact_match.low": 0.625,
                              "sums.exact_match.high": 1.0, "holdout.perplexity": 12.5,
                              "holdout.perplexity.low": 11.0, "holdout.perplexity.high": 14.0}
    assert len(client.get_metric_history(b.info.run_id, "sums.exact_match")) == 1
    assert b.data.tags["forgebuild.key"] == "ab" * 32 and b.data.tags["forgebuild.model_digest"] == "d-model:b[lr=0.001]"
    assert b.data.params["models"] == '["model:a", "model:b[lr=0.001]"]' and "track" not in b.data.params
    # an infinite perplexity and its missing interval are left out
    assert set(by_model["model:a"].data.metrics) == {"sums.exact_match", "sums.exact_match.low", "sums.exact_match.high"}

    events = EventAccumulator(os.path.join(root, "runs", "eval-sweep", "ab" * 8, "model-b[lr=0.001]"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("holdout.perplexity.high")] == [(0, 14.0)]


def test_mlflow_true_takes_the_environment_s_tracking_uri(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from forgebuild.rules.model.tracking import log_eval

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/shared.db")
    log_eval(eval_context(str(tmp_path), {"mlflow": True, "experiment": "team"}), REPORT)
    client = MlflowClient(f"sqlite:///{tmp_path}/shared.db")
    assert len(client.search_runs([client.get_experiment_by_name("team").experiment_id])) == 2
    assert not os.path.exists(os.path.join(tmp_path, ".forge", "mlflow.db"))
