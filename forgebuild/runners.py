"""Where a stage's build process runs: here, as a task on a Ray cluster, or as a Slurm job.

Every runner runs the same command, `python -m forgebuild.worker CONTEXT.json`, with the stage
log as its output, and returns its exit status; the executor does everything else (ingest, cache,
records, the remote cache) as for a local build, so a failure on a worker reads like a local one:
the log tail, nothing cached, dependents skipped. The build's folders (the project and .forge)
must be visible where the command runs: one machine, or a shared filesystem; artifacts reach
other workspaces through the shared remote cache.

- local: a child process of forgebuild (the default).
- ray: a Ray task with the stage's resources (CPUs from its `threads`, GPUs from `device = "cuda"`
  and `launch.processes`), on the cluster at RAY_ADDRESS or a local one (`ray.init()`).
- slurm: a job through submitit, with the same resources; submitit's AutoExecutor uses Slurm
  where `sbatch` exists and runs the job locally elsewhere (how it is tested here).
"""
from __future__ import annotations

import os
import subprocess


def resources(runtime: dict) -> dict:
    """What a stage asks of a worker, from its runtime settings."""
    launch = runtime.get("launch") or {}
    processes = launch.get("processes", 1)
    cpus = max(1, runtime.get("threads") or 1) * (processes if runtime.get("device") != "cuda" else 1)
    gpus = processes if runtime.get("device") == "cuda" else 0
    return {"cpus": cpus, "gpus": gpus}


def run_command(argv: list[str], log_path: str, cwd: str, env: dict) -> int:
    """The worker side: the command with its output appended to the stage log."""
    with open(log_path, "ab") as log:
        return subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT).returncode


class RayRunner:
    name = "ray"

    def __init__(self, workspace_dir: str):
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.task = ray.remote(run_command)
        self.ray = ray

    def run(self, argv, log_path, cwd, env, needs: dict) -> int:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"# runner: ray task ({needs['cpus']} CPUs, {needs['gpus']} GPUs)\n")
        ref = self.task.options(num_cpus=needs["cpus"], num_gpus=needs["gpus"]).remote(argv, log_path, cwd, env)
        return self.ray.get(ref)


class SlurmRunner:
    name = "slurm"

    def __init__(self, workspace_dir: str):
        import submitit

        self.submitit = submitit
        self.folder = os.path.join(workspace_dir, "submitit")

    def run(self, argv, log_path, cwd, env, needs: dict) -> int:
        executor = self.submitit.AutoExecutor(folder=self.folder)
        executor.update_parameters(cpus_per_task=needs["cpus"], gpus_per_node=needs["gpus"], timeout_min=24 * 60)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"# runner: {executor.cluster} job ({needs['cpus']} CPUs, {needs['gpus']} GPUs)\n")
        job = executor.submit(run_command, argv, log_path, cwd, env)
        return job.result()


RUNNERS = {"ray": RayRunner, "slurm": SlurmRunner}


def make_runner(name: str, workspace_dir: str):
    """None for local builds (the executor's own child processes)."""
    if name == "local":
        return None
    from .errors import UsageError

    try:
        return RUNNERS[name](workspace_dir)
    except ImportError as e:
        raise UsageError(f"--executor {name} needs {e.name}: pip install {e.name}") from None
