"""Where a stage's build process runs (here, a Ray task, a Slurm job) and how a worker sees the
project's files (`--worker-files shared|remote`, `[forge] worker_files`).

shared (the default): every runner runs the same command, `python -m forgebuild.engine.worker CONTEXT.json`,
through the one launcher (`launcher.run_logged`), with paths on this machine's filesystem and the stage
log as its output, and returns its exit status;
the executor does everything else (ingest, cache, records, the remote cache) as for a local build, so
a failure on a worker reads like a local one: the log tail, nothing cached, dependents skipped. The
project and .forge must be visible where the command runs: one machine, or a shared filesystem.

- local: a child process of forgebuild (the default).
- ray: a Ray task with the stage's resources (its `resources` table, the rest from its rule's `resources`
  hook: CPUs from `threads`, GPUs from `device = "cuda"` and a model's `launch.processes`),
  on the cluster at RAY_ADDRESS or a local one (`ray.init()`).
- slurm: a job through submitit, with the same resources; submitit's AutoExecutor uses Slurm
  where `sbatch` exists and runs the job locally elsewhere (how it is tested here).

remote (Ray only): the workers share nothing with this workspace but the remote cache. The Ray job
carries the project folder as its runtime_env working_dir (without .forge, .git and the local store);
each stale target is a Ray task with its resources that copies that folder to a fresh one of its own
and runs there `python -m forgebuild build TARGET --remote URL --require-remote --json -f FORGEFILE`.
That build fetches the dependencies (the executor pushed them first), builds the target and pushes
it. The task returns its exit code, JSON events and stage log; the executor writes the log into its
own stage log, then fetches the artifact for its own key from the remote, checked like any fetch
(digests, provenance), or raises the worker's failure as a local build would. The remote is then
required (unreachable, it stops the build rather than letting it go on locally). A local build ignores
the setting: it has the project at hand.

Slurm is shared-only: submitit hands each job its pickled function and takes back its result through
a folder that this process and the job must both see, so a Slurm job has a shared filesystem anyway.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from forgebuild.engine.launcher import SAFE_PATH, log_tail, run_logged
from forgebuild.errors import BadInput, RuleFailed, UsageError

WORKER_FILES = ("shared", "remote")


def resources(target) -> dict:
    """What a stage asks of a worker: its `resources` table, the rest derived by its rule (hook `resources`)."""
    from forgebuild.rules import hooks, load_rule

    declared = target.resources
    derived = hooks(load_rule(target.kind)).resources(target.runtime)
    found = {"cpus": declared.get("cpus", derived["cpus"]), "gpus": declared.get("gpus", derived["gpus"])}
    if "memory_gb" in declared:
        found["memory_gb"] = declared["memory_gb"]
    return found


def described(needs: dict) -> str:
    memory = f", {needs['memory_gb']:g} GB" if "memory_gb" in needs else ""
    return f"{needs['cpus']} CPUs, {needs['gpus']} GPUs{memory}"


def ray_options(needs: dict) -> dict:
    options = {"num_cpus": needs["cpus"], "num_gpus": needs["gpus"]}
    if "memory_gb" in needs:  # Ray reserves memory in bytes (a scheduling promise, not a limit)
        options["memory"] = int(needs["memory_gb"] * 1e9)
    return options


# ------------------------------------------------------------------ shared: the project's own folders

class RayRunner:
    name = "ray"
    worker_files = "shared"

    def __init__(self, workspace_dir: str):
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self.task = ray.remote(run_logged)
        self.ray = ray

    def run(self, argv, log_path, cwd, env, needs: dict, key: str) -> int:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"# runner: ray task ({described(needs)})\n")
        ref = self.task.options(**ray_options(needs)).remote(argv, log_path, cwd, env, key=key)
        return self.ray.get(ref)


class SlurmRunner:
    name = "slurm"
    worker_files = "shared"

    def __init__(self, workspace_dir: str):
        import submitit

        self.submitit = submitit
        self.folder = os.path.join(workspace_dir, "submitit")

    def run(self, argv, log_path, cwd, env, needs: dict, key: str) -> int:
        executor = self.submitit.AutoExecutor(folder=self.folder)
        memory = {"mem_gb": needs["memory_gb"]} if "memory_gb" in needs else {}
        executor.update_parameters(cpus_per_task=needs["cpus"], gpus_per_node=needs["gpus"], timeout_min=24 * 60,
                                   **memory)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"# runner: {executor.cluster} job ({described(needs)})\n")
        job = executor.submit(run_logged, argv, log_path, cwd, env, key=key)
        return job.result()


# ------------------------------------------------------------------ remote: a copy per task, the remote cache between

def check_remote_files(executor: str, remote) -> None:
    """Usage errors of --worker-files remote on a cluster executor, before anything is built."""
    if executor == "slurm":
        raise UsageError("--worker-files remote works with --executor ray only: submitit passes each job and its "
                         "result through a folder shared with the jobs, so Slurm jobs read the project through the "
                         "shared filesystem (--worker-files shared)")
    if remote is None:
        raise UsageError("--worker-files remote needs a remote cache (--remote, FORGE_REMOTE or [forge] remote): "
                         "workers and this workspace exchange artifacts through it")
    if not remote.push_enabled:  # the worker reads the same Forgefile: it could not push its artifact either
        raise UsageError("--worker-files remote writes to the remote cache (dependencies out, artifacts back): "
                         "drop --no-push or [forge] push = false")


def upload_excludes(project: str, private: list[str]) -> list[str]:
    """What the Ray job leaves out of the project it uploads (gitignore patterns): this workspace's own
    state (the worker makes its own), and the local store when it lives inside the project."""
    found = [".forge/", ".git/"]
    for folder in private:
        rel = os.path.relpath(folder, project) if folder else ".."
        if not rel.startswith("..") and rel != ".":
            found.append(f"/{rel}/")
    return found


def parse_events(stdout: str) -> list[dict]:
    """The worker's JSON Lines; anything else on its stdout is not an event."""
    found = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            found.append(event)
    return found


def build_in_copy(args: list[str], address: str, trusted: str = "") -> dict:
    """The Ray task. Its cwd is the job's working_dir, which Ray unpacks once per node and shares between
    tasks: each build gets a fresh copy of its own, removed afterwards (once the artifact is on the remote,
    nothing in it is needed). The interpreter is this worker's own, not the head's path."""
    import socket
    import tempfile

    from forgebuild.store.workspace import Workspace, remove_tree

    folder = tempfile.mkdtemp(prefix="forge-worker-")
    copy = os.path.join(folder, "project")
    try:
        shutil.copytree(os.getcwd(), copy, symlinks=True)
        # The worker trusts the head's key (the dependencies it pushed); the head trusts the worker's
        # fresh key, which comes back over Ray's own channel (`signer`), for the entry it asked for.
        proc = subprocess.run([sys.executable, *args], cwd=copy, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False, env={**os.environ, **SAFE_PATH, "FORGE_TRUSTED_KEYS": trusted})
        try:
            with open(Workspace(copy).log_path(address), encoding="utf-8", errors="replace") as f:
                log = f.read()
        except OSError:  # it stopped before the build started (a bad install, an unreachable remote)
            log = ""
        try:
            with open(os.path.join(Workspace(copy).dir, "keys", "signing.pub"), encoding="utf-8") as f:
                signer = f.read().strip()
        except OSError:  # it pushed nothing
            signer = ""
        return {"code": proc.returncode, "events": parse_events(proc.stdout), "log": log, "stderr": proc.stderr,
                "host": socket.gethostname(), "signer": signer}
    finally:
        remove_tree(folder)


@dataclass
class WorkerOutcome:
    """What a worker's build of one target sent back."""

    code: int
    events: list[dict] = field(default_factory=list)
    log: str = ""
    stderr: str = ""
    host: str = ""
    signer: str = ""  # the public key the worker signed its entries with

    def log_text(self, address: str, key: str) -> str:
        """The worker's stage log for the head's. Its header line repeats the head's own when the keys agree
        (then it is dropped, so a failure's tail reads as a local one). Then its warnings (a push that
        failed explains a missing artifact), and its stderr when it failed."""
        lines = self.log.splitlines(keepends=True)
        if lines and lines[0].startswith(f"# forgebuild {address} key {key} "):
            lines = lines[1:]
        text = "".join(lines)
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(f"warning: {e.get('message')}\n" for e in self.events if e.get("event") == "warning")
        if self.code != 0 and self.stderr.strip():
            text += self.stderr if self.stderr.endswith("\n") else self.stderr + "\n"
        return text

    def settled(self, address: str, key: str, log_path: str) -> dict:
        """The worker's `built` or `cached` event for the target (or a kept failure, a failed gate, whose
        artifact is on the remote too); any other outcome raises the failure a local build would."""
        mine = [e for e in self.events if e.get("target") == address and e.get("event") in ("built", "cached", "failed")]
        if not mine:
            errors = [e.get("message") for e in self.events if e.get("event") == "error"]
            message = (f"on the worker: {errors[-1]}" if errors else
                       f"the worker's forgebuild exited with code {self.code} without building {address}")
            raise RuleFailed(address, message, log_tail(log_path))
        event = mine[-1]
        differs = None
        if event.get("key") != key:
            differs = (f"the worker computed key {event.get('key')}, this workspace {key}: the worker's copy of the "
                       "project differs (files that .gitignore or .rayignore leave out do not travel with the Ray job)")
        if event["event"] == "failed" and not event.get("verdict"):
            kind = BadInput if self.code == 2 else RuleFailed  # the worker exits 2 when its stage found bad input
            raise kind(address, event.get("reason", "failed") + (f" ({differs})" if differs else ""), log_tail(log_path))
        if differs:
            raise RuleFailed(address, differs, log_tail(log_path))
        return event


class RayCopyRunner:
    """--worker-files remote on Ray: see the module's docstring."""

    name = "ray"
    worker_files = "remote"

    def __init__(self, remote, forgefile: str, private: list[str]):
        import ray

        if ray.is_initialized():  # the working_dir is the job's (a task's own must be a URI): this needs its own job
            raise UsageError("--worker-files remote starts its own Ray job (the project travels as its runtime_env), "
                             "but Ray is already initialised in this process")
        self.ray, self.remote = ray, remote
        self.forgefile = os.path.basename(forgefile)
        project = os.path.dirname(forgefile)
        # Uploaded once, now: the project as this process just planned it (a file edited during the build
        # gives the worker another key, which the executor reports).
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                     configure_logging=False,
                     runtime_env={"working_dir": project, "excludes": upload_excludes(project, private)})
        except Exception as e:  # no cluster at RAY_ADDRESS, a project over Ray's upload limit: one line, exit 2
            first = (str(e).strip().splitlines() or [""])[0]
            raise UsageError(f"cannot start a Ray job with {project} as its working_dir: {type(e).__name__}: {first}") from None
        self.task = ray.remote(build_in_copy)
        from forgebuild.store.signing import public_line

        self.trusted = public_line(remote.signer)
        # Workers meet this workspace only through the remote: going on without it cannot build anything.
        remote.require = True

    def build(self, address: str, key: str, needs: dict, log_path: str) -> WorkerOutcome:
        """Build one target on a worker; its log goes into the head's stage log at `log_path`."""
        args = ["-m", "forgebuild", "build", address, "--remote", self.remote.url, "--require-remote", "--json",
                "-f", self.forgefile]
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"# runner: ray task ({described(needs)}), in its own copy of the "
                    f"project; artifacts through {self.remote.url}\n")
        try:
            outcome = WorkerOutcome(**self.ray.get(
                self.task.options(**ray_options(needs)).remote(args, address, self.trusted)))
        except self.ray.exceptions.RayError as e:  # the task or its node died: not the stage's own failure
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"{e}\n")
            raise RuleFailed(address, f"the Ray task failed ({type(e).__name__})") from None
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(outcome.log_text(address, key))
        return outcome


RUNNERS = {"ray": RayRunner, "slurm": SlurmRunner}


def make_runner(name: str, workspace_dir: str, files: str = "shared", remote=None, forgefile: str | None = None,
                store_root: str | None = None):
    """None for local builds (the executor's own child processes), whatever `files` says: a local
    build has the project at hand."""
    if name == "local":
        return None
    try:
        if files == "remote":
            check_remote_files(name, remote)
            return RayCopyRunner(remote, forgefile, [workspace_dir, store_root])
        return RUNNERS[name](workspace_dir)
    except ImportError as e:
        raise UsageError(f"--executor {name} needs {e.name}: pip install {e.name}") from None
