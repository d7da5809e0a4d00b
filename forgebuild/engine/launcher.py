"""The one process launcher: every process a build starts, with the same guarantees.

`run_logged` starts a command with its output appended to a log, in a process group of its own,
with the death signal set (Linux: it is killed when the process that started it dies, even by
SIGKILL). When the command exits, times out or its wait is interrupted, what is left of its group
is killed: nothing it started goes on writing into an output about to be stored. Through it run a
stage's cold worker (the executor, here or on a Ray or Slurm worker), a rule's command
(`BuildContext.run_command`) and the torchrun of `forgebuild join` on another node.

The helpers around it: `kill_running` (an interrupted build stops every command it started),
`marker` and `kill_leftovers` (what a killed earlier build left running), `log_tail` (the end of a
stage log, for a failure's report).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

# Commands started by builds of this process, so an interrupt can stop them all; and the process
# groups of stages forked by a warm worker (engine/warm.py), which are no children of this process.
RUNNING: set[subprocess.Popen] = set()
WARM_GROUPS: set[int] = set()
_running_lock = threading.Lock()

if sys.platform.startswith("linux"):
    import ctypes

    # Looked up before any fork: the child of a threaded parent must not import.
    _prctl = ctypes.CDLL(None).prctl
else:  # pragma: no cover
    _prctl = None
PR_SET_PDEATHSIG = 1

MARKER = "FORGE_ACTION_KEY"

# Build workers start in the project folder, which `python -m` would put first on sys.path: a project's
# own pydantic.py, torch.py or datasets/ would shadow the library inside the worker. Safe-path mode keeps
# it off, and torchrun's processes inherit the variable (Python 3.11+; 3.10 ignores it).
SAFE_PATH = {"PYTHONSAFEPATH": "1"}

LOG_TAIL_LINES = 20


def _child_setup() -> None:
    """In the forked child: own process group (for timeouts), and die with its parent.

    Without the death signal, a SIGKILLed forgebuild would leave its command
    running and writing into a scratch folder the next run is about to reuse.
    """
    os.setpgid(0, 0)
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass  # no process left in it: the usual case


def kill_running() -> None:
    with _running_lock:
        for proc in RUNNING:
            kill_group(proc.pid)
        for pgid in WARM_GROUPS:
            kill_group(pgid)


def hold_group(pgid: int) -> None:
    with _running_lock:
        WARM_GROUPS.add(pgid)


def release_group(pgid: int) -> None:
    with _running_lock:
        WARM_GROUPS.discard(pgid)


def run_logged(argv, log_path: str, cwd: str, env=None, shell=False, timeout=None, key=None) -> int:
    """Run a command with stdout and stderr appended to the log; return its exit status (negative:
    killed by that signal). `key` (see `marker`) tags it and everything it starts."""
    if key:
        env = {**(os.environ if env is None else env), MARKER: key}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, shell=shell, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_setup)
        with _running_lock:
            RUNNING.add(proc)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()
            log.write(f"forgebuild: killed after {timeout:g} s (timeout)\n".encode())
            return -signal.SIGKILL
        finally:
            # The stage is over when its command exits: what it left running in its process group (a
            # background `&`) could go on writing into {out}, whose files are about to become blobs.
            kill_group(proc.pid)
            with _running_lock:
                RUNNING.discard(proc)


def run_stage(argv, log_path: str, cwd: str, env=None, key=None) -> int:
    """A stage's cold build process: run_logged, with the time it was spawned in its environment (the
    records' seconds_before_first_step count from it; a warm worker's stage gets the same)."""
    env = {**(os.environ if env is None else env), "FORGE_STAGE_STARTED": str(time.time())}
    return run_logged(argv, log_path, cwd, env=env, key=key)


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a stage log, for a failure's report: the runners, join and the executor all show it."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def marker(key: str, workspace_dir: str) -> str:
    """The value that tags a build's processes: the key alone would also match a build of the
    same key in another project on this machine (two checkouts building the same base)."""
    return f"{key}@{os.path.realpath(workspace_dir)}"


def kill_leftovers(key: str) -> int:
    """Kill processes that a killed earlier build of this key left running.

    The death signal reaches only a build's direct child; its children (a shell's
    commands, a launcher's workers) would go on writing into the persistent work
    folder the next attempt resumes from. Every build process carries the key and
    workspace (see `marker`) in its environment, so they can be found in /proc (Linux). Only called while
    holding the key's lock, so no live build of this key is among them.
    """
    needle = f"{MARKER}={key}".encode()
    killed = 0
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed
