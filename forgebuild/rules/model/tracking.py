"""The `track` runtime param at build time: a training stage's curve and an eval's metrics, streamed
to MLflow and to TensorBoard event files. Build-only (imported inside build); mlflow and tensorboard
are imported only when a target asks for them.

Identity. A run is found by its tags before one is made: `forgebuild.key` (the action key) and
`forgebuild.target` (the address), plus `forgebuild.model` for an eval's run of one model. A build
killed and started again has the same key, so it reopens the same run and the curve goes on. It
resumes from its last checkpoint and trains again the steps the killed build had logged after it:
of those, MLflow keeps the points already stored (only steps past the last stored one are logged,
so the history holds one point per step; on a CPU the values trained again are the same bit for
bit) and TensorBoard keeps the new ones (the writer purges the events from the checkpoint's next
step on, TensorBoard's own restart rule). A cache hit runs no build, so it logs nothing. A run's
params are the target's identity params, flattened (`train.lr`), logged once when it is made.

Where. `mlflow = true`: MLFLOW_TRACKING_URI when set, else the project's own store, SQLite in
`.forge/mlflow.db` (MLflow 3's default backend; its file store is deprecated), artifacts beside it
in `.forge/mlartifacts`; a string is the tracking URI. The experiment is `track.experiment`, else
the Forgefile folder's name. `tensorboard = true`: `.forge/tensorboard/`; a string: that folder of
the project; inside it, `<address, ':' as '-'>/<key[:16]>/`, one folder per key, so a resumed build
appends to its own.

The training curve goes through transformers' own MLflowCallback and TensorBoardCallback, pointed
at that run and folder; logging is synchronous (a killed build loses no point it trained).
"""
from __future__ import annotations

import atexit
import fcntl
import json
import math
import os
import re

from forgebuild.rules import identity_params

# A build never reaches the network on its own: no usage reports from MLflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

KEY_TAG, TARGET_TAG, MODEL_TAG = "forgebuild.key", "forgebuild.target", "forgebuild.model"
NOT_IN_A_NAME = re.compile(r"[^\w./ :-]")  # what MLflow refuses in a param or metric name


def training_callbacks(ctx) -> list:
    """The Trainer callbacks that stream this stage's log where `track` says (none without it); each
    logs on rank 0 only, as transformers' own do."""
    track = getattr(ctx.params, "track", None)
    if track is None:
        return []
    from transformers.integrations import MLflowCallback, TensorBoardCallback

    class KeyedMLflowCallback(MLflowCallback):
        """transformers' MLflow logger, in the run of this action key instead of a new one per process."""

        def setup(self, args, state, model):
            if state.is_world_process_zero:
                store, run_id, self.logged_until = keyed_run(ctx, {})
                self._ml_flow.set_tracking_uri(store.tracking_uri)
                if self._ml_flow.active_run() is not None:  # left open by a stage that failed in this process
                    self._ml_flow.end_run("FAILED")
                self._ml_flow.start_run(run_id=run_id)
                # on_train_end ends the run FINISHED; a stage that raises (a NaN loss) never gets there, and
                # mlflow's own exit handler would call it FINISHED too. This one runs first (last registered).
                atexit.register(lambda: self._ml_flow.active_run() and self._ml_flow.end_run("FAILED"))
            self._auto_end_run, self._async_log, self._initialized = True, False, True

        def on_log(self, args, state, control, logs, model=None, **kwargs):
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero and state.global_step > self.logged_until:
                super().on_log(args, state, control, logs, model=model, **kwargs)

    class KeyedTensorBoardCallback(TensorBoardCallback):
        """transformers' TensorBoard logger, in this key's folder. Its writer is made at the first step
        logged (the trainer has loaded a checkpoint's state by then, not at on_train_begin), whose
        number is where a resumed build purges the killed build's events from; made again, without
        a purge, for what is logged after training ends (pretrain's last holdout loss)."""
        purged = False

        def on_train_begin(self, args, state, control, **kwargs):
            pass  # no writer yet, and none in the trainer's own folder

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.tb_writer is None:
                self.tb_writer = summary_writer(ctx, purge_step=None if self.purged else state.global_step)
                self.purged = True
            super().on_log(args, state, control, logs=logs, **kwargs)

    return ([KeyedMLflowCallback()] if track.mlflow else []) + ([KeyedTensorBoardCallback()] if track.tensorboard else [])


def log_eval(ctx, report: dict) -> None:
    """An eval's results, one run (and one TensorBoard folder) per model: each metric's value, and
    its 95% interval as NAME.low and NAME.high; undefined or infinite values are left out."""
    track = getattr(ctx.params, "track", None)
    if track is None:
        return
    for address, results in report["results"].items():
        values = {}
        for metric, stat in results.items():
            for suffix, field in (("", "value"), (".low", "low"), (".high", "high")):
                value = stat.get(field)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    values[NOT_IN_A_NAME.sub("_", metric + suffix)] = float(value)
        if track.mlflow:
            tags = {MODEL_TAG: address, "forgebuild.model_digest": ctx.digest_of(address) or ""}
            store, run_id, logged_until = keyed_run(ctx, tags)
            if logged_until < 0:  # points already there: logged by a build of this key killed after it
                store.log_batch(run_id, metrics=metric_rows(values))
            store.set_terminated(run_id)
        if track.tensorboard:
            writer = summary_writer(ctx, model=address, purge_step=0)  # a rebuild replaces what a killed one wrote
            for name, value in values.items():
                writer.add_scalar(name, value, 0)
            writer.close()


# ------------------------------------------------------------------ MLflow

def keyed_run(ctx, extra_tags: dict):
    """(client, run_id, the last step it has a metric at, -1 when none): the run of this key (and of
    this model, for an eval), made with its tags and params if no build of the key made it yet."""
    store, experiment = open_store(ctx)
    tags = {KEY_TAG: ctx.key, TARGET_TAG: ctx.target, **extra_tags}
    # the key is hex: safe in a filter; an address may hold quotes, so the rest is matched here
    runs = store.search_runs([experiment], filter_string=f"tags.`{KEY_TAG}` = '{ctx.key}'", max_results=1000)
    found = [run for run in runs if all(run.data.tags.get(k) == v for k, v in tags.items())]
    if not found:
        run = store.create_run(experiment, run_name=extra_tags.get(MODEL_TAG, ctx.target), tags=tags)
        store.log_batch(run.info.run_id, params=param_rows(identity_params(ctx.params)))
        return store, run.info.run_id, -1
    run = found[0]
    steps = [point.step for name in run.data.metrics for point in store.get_metric_history(run.info.run_id, name)]
    return store, run.info.run_id, max(steps, default=-1)


def open_store(ctx):
    """(MlflowClient, experiment id). The first build to use the project's own store creates it
    (MLflow's migrations, ~1.5 s) under a lock: parallel stages (-j) would otherwise race to make
    its tables and the experiment."""
    import logging

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    track = ctx.params.track
    uri = track.mlflow if isinstance(track.mlflow, str) else os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative: to the project
        uri = "sqlite:///" + os.path.join(os.path.abspath(ctx.project_dir), uri[len("sqlite:///"):])
    artifacts = None
    if not uri:
        uri = "sqlite:///" + os.path.join(ctx.workspace_dir, "mlflow.db")
        artifacts = os.path.join(ctx.workspace_dir, "mlartifacts")
    name = track.experiment or os.path.basename(os.path.abspath(ctx.project_dir))
    os.makedirs(ctx.workspace_dir, exist_ok=True)
    with open(os.path.join(ctx.workspace_dir, "mlflow.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = MlflowClient(uri)
        found = store.get_experiment_by_name(name)
        if found is None:
            try:
                return store, store.create_experiment(name, artifact_location=artifacts)
            except MlflowException:  # another machine's build made it first
                found = store.get_experiment_by_name(name)
    return store, found.experiment_id


def flattened(values: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 0.001}} -> {"train.lr": 0.001}; a list is kept whole, as JSON."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def param_rows(params: dict) -> list:
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    rows = []
    for name, value in flattened(params).items():
        text = value if isinstance(value, str) else json.dumps(value)
        rows.append(Param(NOT_IN_A_NAME.sub("_", name)[:MAX_ENTITY_KEY_LENGTH], text[:MAX_PARAM_VAL_LENGTH]))
    return rows


def metric_rows(values: dict, step: int = 0) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(name, value, now, step) for name, value in values.items()]


# ------------------------------------------------------------------ TensorBoard

def summary_writer(ctx, model: str | None = None, purge_step: int | None = None):
    """A writer in `<tensorboard folder>/<address>/<key[:16]>/` (and `/<model>` for an eval)."""
    from torch.utils.tensorboard import SummaryWriter

    chosen = ctx.params.track.tensorboard
    base = os.path.join(ctx.project_dir, chosen) if isinstance(chosen, str) else os.path.join(ctx.workspace_dir, "tensorboard")
    parts = [ctx.target, ctx.key[:16]] + ([model] if model else [])
    return SummaryWriter(log_dir=os.path.join(base, *(part.replace(":", "-") for part in parts)), purge_step=purge_step)
