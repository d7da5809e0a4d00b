"""What a rule's build() gets: resolved inputs, validated params, folders, seed, a log."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field

from forgebuild.errors import BadInput, RuleFailed

# Commands started by builds of this process, so an interrupt can stop them all.
RUNNING: set[subprocess.Popen] = set()
_running_lock = threading.Lock()


if sys.platform.startswith("linux"):
    import ctypes

    # Looked up before any fork: the child of a threaded parent must not import.
    _prctl = ctypes.CDLL(None).prctl
else:  # pragma: no cover
    _prctl = None
PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """In the forked child: own process group (for timeouts), and die with forgebuild.

    Without the death signal, a SIGKILLed forgebuild would leave its command
    running and writing into a scratch folder the next run is about to reuse.
    """
    os.setpgid(0, 0)
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass  # no process left in it: the usual case


def kill_running() -> None:
    with _running_lock:
        for proc in RUNNING:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


MARKER = "FORGE_ACTION_KEY"

# Build workers start in the project folder, which `python -m` would put first on sys.path: a project's
# own pydantic.py, torch.py or datasets/ would shadow the library inside the worker. Safe-path mode keeps
# it off, and torchrun's processes inherit the variable (Python 3.11+; 3.10 ignores it).
SAFE_PATH = {"PYTHONSAFEPATH": "1"}


LOG_TAIL_LINES = 20


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


def run_logged(argv, log_path: str, cwd: str, env=None, shell=False, timeout=None, key=None) -> int:
    """Run a command with stdout and stderr appended to the log; return its exit status."""
    if key:
        env = {**(os.environ if env is None else env), MARKER: key}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, shell=shell, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_setup)
        with _running_lock:
            RUNNING.add(proc)
        try:
            code = proc.wait(timeout=timeout)
            # The stage is over when its command exits: what it left running in its process group (a
            # background `&`) could go on writing into {out}, whose files are about to become blobs.
            _kill_group(proc.pid)
            return code
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.write(f"forgebuild: killed after {timeout:g} s (timeout)\n".encode())
            return -signal.SIGKILL
        finally:
            with _running_lock:
                RUNNING.discard(proc)


@dataclass
class BuildContext:
    target: str
    kind: str
    key: str  # the action key being built
    inputs: dict  # Forgefile key path -> path (str) or paths (list), as the command sees them
    out: str  # fresh, empty output folder: everything written here is the artifact
    work: str  # kept across failed or killed runs of the same action key
    seed: int
    project_dir: str  # commands run here
    log_path: str
    raw_params: dict  # validated params, runtime ones included, as JSON
    version: str = ""  # the rule's version
    sources: dict = field(default_factory=dict)  # key path -> [{spec, kind, path, files, address?, digest?}]
    digests: dict = field(default_factory=dict)  # project-relative source path -> content digest
    dep_digests: dict = field(default_factory=dict)  # dependency address -> output digest
    store_root: str = ""
    workspace_dir: str = ""
    params: object = None  # the rule's Params instance

    def log(self, message: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(message.rstrip("\n") + "\n")

    def failure(self, message: str) -> RuleFailed:
        return RuleFailed(self.target, message)

    def bad_input(self, message: str) -> RuleFailed:
        """For data the user must fix (name the file, line and field): the build exits 2."""
        return BadInput(self.target, message)

    def run_command(self, argv, shell=False, env=None, timeout=None) -> int:
        return run_logged(argv, self.log_path, self.project_dir, env=env, shell=shell, timeout=timeout,
                          key=marker(self.key, self.workspace_dir))

    def memo(self, name: str, material: dict, produce=None) -> str | None:
        """A cached sub-step: `produce(folder)` runs only if no earlier build made the same thing.

        The result is stored like an artifact (content-addressed, atomic), keyed by
        the rule, its version, `name` and `material` (which must name everything the
        step reads, e.g. a source file's digest and the params it uses), and
        returned as a read-only folder. A corpus processes each source file this
        way, so adding one file to a thousand processes one file. Without
        `produce` it only looks: None when no earlier build made it.
        """
        from forgebuild.planning.keys import action_key

        store, ws = self._store_and_workspace()
        key = action_key({"memo": name, "rule": self.kind, "version": self.version, "material": material})
        entry = store.get_action(key, f"{self.target} ({name})")
        if entry is None:
            if produce is None:
                return None
            # Under the scratch folder, removed with it when the build ends: one rmdir per
            # step costs ~2.5 ms on this disk, seconds for a thousand-file corpus.
            folder = os.path.join(os.path.dirname(self.out), "memo", key)
            if os.path.exists(folder):
                from forgebuild.store.workspace import remove_tree

                remove_tree(folder)
            os.makedirs(folder)
            produce(folder)
            entry = {**store.ingest_tree(folder), "target": self.target, "key": key, "memo": name}
            store.put_action(key, entry)
        self._scratch_log("memos.txt").write(key + "\n")  # the build's cache entry lists them, so gc keeps them
        folder = ws.artifact(entry, store, self.target)
        self._hand_over(key, name, entry, folder)
        return folder

    def _hand_over(self, key: str, name: str, entry: dict, folder: str) -> None:
        """Note each file of a step's result as the rule gets it (a hardlink of a blob): the executor
        checks after the stage that none changed (guard.py)."""
        log = self._scratch_log("handed.jsonl")
        for item in entry["files"]:
            st = os.stat(os.path.join(folder, *item["path"].split("/")))
            log.write(json.dumps([key, name, entry["digest"], item["path"], item["digest"],
                                  [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]]) + "\n")

    def _scratch_log(self, name: str):
        """A file beside the output, opened once per process (a pool's workers append too), line-buffered."""
        logs = getattr(self, "_logs", None)
        if logs is None or logs[0] != os.getpid():
            logs = self._logs = (os.getpid(), {})
        if name not in logs[1]:
            logs[1][name] = open(os.path.join(os.path.dirname(self.out), name), "a", encoding="utf-8", buffering=1)
        return logs[1][name]

    def place(self, cached_file: str, rel: str) -> None:
        """Put a file from a memo folder or an input into the output at `rel`: a reflink where the
        filesystem has them, else a copy, never a hardlink. The build may go on writing its output
        (release writes its README.md over the model's), and through a hardlink that write would
        change the stored blob. The file is still stored once: ingesting finds its blob present."""
        from forgebuild.store.workspace import clone_file

        dst = os.path.join(self.out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        clone_file(cached_file, dst, link=False)

    def __getstate__(self):
        """For a rule's process pool: an open log handle does not cross processes."""
        state = dict(self.__dict__)
        state.pop("_logs", None)
        return state

    def _store_and_workspace(self):
        if getattr(self, "_stores", None) is None:
            from forgebuild.store.local import Store
            from forgebuild.store.workspace import Workspace

            self._stores = Store(self.store_root), Workspace(self.project_dir, self.workspace_dir)
        return self._stores

    def verdict(self, message: str) -> None:
        """Fail the build, but keep the artifact: it is stored and cached like any other, and the
        target reports this failure (exit 1) whenever it is asked for, without rebuilding. For an
        eval whose gates fail: the report is the evidence, and re-evaluating would say the same."""
        with open(os.path.join(os.path.dirname(self.out), "verdict.txt"), "w", encoding="utf-8") as f:
            f.write(message)

    def metrics(self, values: dict) -> None:
        """Measurements of this build (tokens/s, losses, scores) for its build record.

        Timings must not go into the artifact: they would change its digest on
        every build. The record keeps them; `show`, `log --json` and the
        `built` event report them. Later calls update earlier keys.
        """
        path = os.path.join(os.path.dirname(self.out), "metrics.json")
        found = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                found = json.load(f)
        found.update(values)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(found, f, sort_keys=True)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("params")
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> "BuildContext":
        return cls(**json.loads(text))
