"""Warm workers, the client side: a stage's build process forked from a server that imported the ML
stack already (engine/zygote.py), instead of a fresh `python -m forgebuild.engine.worker` that pays
~5 s importing torch, transformers and trl before its first step.

`WarmPool.run` has `launcher.run_logged`'s signature and exit status, so it is the executor's `spawn`.
Modes (`[forge] workers`, `--workers`; runtime only, never in a key):

- cold: no server; every stage is `launcher.run_stage`.
- run (the default): one server per forgebuild run, its child, with the death signal: gone with it.
- resident: started on demand in a session of its own, it survives the build and serves later runs of
  the same project whose interpreter and environment match (its name hashes realpath(.forge),
  sys.executable and the environment minus per-stage variables); it exits after `worker_idle`
  seconds without a request. State files: .forge/workers/NAME.json (written by the server once it is
  ready), its log NAME.log beside it.

A stage whose rule imports none of the preloaded modules never waits for a server still importing (it
starts cold); one that does waits, since the server is ready sooner than a cold import would be. A
server whose code changed refuses and exits (zygote.py); the stage log says so and a new one starts.
Any failure to start or reach a server: that stage starts cold, with one warning event. Linux only
(fork, abstract unix sockets, SO_PEERCRED); elsewhere every stage is cold.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from forgebuild.engine import launcher, zygote

MODES = ("cold", "run", "resident")
# Modules whose import is the ~5 s a warm worker saves (torch and what imports it): a stage that needs one
# waits for a server still importing; one that needs only pyarrow, tokenizers or numpy (each < 0.3 s)
# starts cold rather than wait for torch's import, which it does not need.
HEAVY = frozenset({"torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "vllm", "lm_eval", "datasets"})


def preload_order(modules) -> list[str]:
    """What a server imports, in order: forgebuild's own build modules first, then the rest as given. A build
    module may set what a library reads at import: training.py sets HF_HUB_OFFLINE & co. before it imports
    transformers (preloaded bare, a model's tokenizer_config.json said local_files_only false)."""
    unique = list(dict.fromkeys(modules))
    return [m for m in unique if m.startswith("forgebuild.")] + [m for m in unique if not m.startswith("forgebuild.")]


POLL = 0.02  # seconds between connection attempts while a server imports (a ~5 s import: 250 tries)
START_LIMIT = 600.0  # seconds a stage waits for a server to finish importing before it starts cold


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(socket, "SO_PEERCRED")


def workers_dir(forge_dir: str) -> str:
    return os.path.join(forge_dir, "workers")


def server_env() -> dict:
    return {**os.environ, **launcher.SAFE_PATH, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}


def server_name(forge_dir: str, mode: str) -> str:
    """Resident: one per project, interpreter and environment; run: this process's own."""
    env = sorted(zygote.comparable_env(server_env()).items())
    seed = [os.path.realpath(forge_dir), sys.executable, env]
    if mode != "resident":
        seed += [os.getpid(), time.time()]
    return hashlib.sha256(json.dumps(seed).encode()).hexdigest()[:16]


class Unavailable(Exception):
    """No server can take the stage: it starts cold (the message goes into a warning)."""


class WarmPool:
    def __init__(self, forge_dir: str, project_dir: str, modules: list[str], kinds: list[str],
                 heavy_kinds: set[str], mode: str = "run", idle: float = 900.0, report=None):
        self.forge_dir, self.project_dir = forge_dir, project_dir
        self.modules, self.kinds, self.heavy_kinds = preload_order(modules), sorted(kinds), set(heavy_kinds)
        self.mode, self.idle = mode, idle
        self.report = report or (lambda event: None)
        self.name = server_name(forge_dir, mode)
        self.state_file = os.path.join(workers_dir(forge_dir), f"{self.name}.json")
        self.proc: subprocess.Popen | None = None  # the server this pool started, if any
        self.env: dict | None = None  # its environment
        self.generation = 0  # how many servers this pool started: a refusal restarts the one it came from
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- the server

    def start(self) -> None:
        """Begin the server's imports now (they overlap planning and the first cheap stages). Resident: reuse
        a running one that preloaded at least what this run needs; a smaller one is replaced."""
        if not supported():
            return
        with self._lock:
            if self.mode == "resident":
                state = read_state(self.state_file)
                if state and set(self.modules) <= set(state.get("modules", [])) \
                        and set(self.kinds) <= set(state.get("rules", [])) and self._reachable():
                    return
                if state:
                    self.kinds = sorted(set(self.kinds) | set(state.get("rules", [])))
                    self.modules = preload_order([*state.get("modules", []), *self.modules])
                    stop_server(self.name)
            self._spawn_server()

    def _spawn_server(self) -> None:
        os.makedirs(workers_dir(self.forge_dir), exist_ok=True)
        argv = [sys.executable, "-m", "forgebuild.engine.zygote", "--name", self.name, "--state", self.state_file,
                "--mode", self.mode, "--idle", str(self.idle if self.mode == "resident" else 0)]
        argv += [a for m in self.modules for a in ("--module", m)] + [a for k in self.kinds for a in ("--rule", k)]
        resident = self.mode == "resident"
        with open(os.path.join(workers_dir(self.forge_dir), f"{self.name}.log"), "ab") as log:
            self.env = server_env()
            self.proc = subprocess.Popen(argv, cwd=self.project_dir, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=resident,
                                         preexec_fn=None if resident else launcher._child_setup)
        self.generation += 1

    def _reachable(self) -> bool:
        try:
            connect(self.name).close()
            return True
        except OSError:
            return False

    def close(self) -> None:
        """A run's server ends with the run; a resident one stays for the next."""
        if self.proc is None or self.mode == "resident":
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        remove_stale_state(self.state_file)
        try:  # a run's server log is only for a failure to start; the stages' own logs hold the rest
            os.unlink(os.path.join(workers_dir(self.forge_dir), f"{self.name}.log"))
        except OSError:
            pass

    # ---------------------------------------------------------------- stages

    def run(self, argv, log_path: str, cwd: str, env=None, key=None) -> int:
        env = stage_env(env, key)
        target, kind = stage_of(argv)
        if supported() and (self.proc is not None or self.mode == "resident"):
            try:
                code = self._run_warm(argv, log_path, cwd, env, wait=kind in self.heavy_kinds)
            except Unavailable as e:
                self.report({"event": "warning", "target": target, "message": f"warm worker: {e}; starting cold"})
                code = None
            if code is not None:
                return code
        return launcher.run_logged(argv, log_path, cwd, env=env)

    def _run_warm(self, argv, log_path, cwd, env, wait: bool) -> int | None:
        """The stage's exit status from a server; None when it should start cold without a word (the
        server is still importing and the stage needs none of it)."""
        request = {"op": "stage", "argv": list(argv), "cwd": cwd, "env": env, "log": log_path}
        for _ in range(2):  # a second server when the first retired (its code changed)
            generation = self.generation
            conn = self._connect(wait)
            if conn is None:
                return None
            with conn:
                reply = exchange(conn, request)
                if "refused" not in reply:
                    return self._follow(conn, reply["pid"])
            if not reply.get("retired"):
                raise Unavailable(reply["refused"])
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"forgebuild: warm worker {self.name} retired ({reply['refused']}); starting a new one\n")
            self._restart(generation)
            wait = True
        raise Unavailable("the new worker refused the stage too")

    def _connect(self, wait: bool) -> socket.socket | None:
        deadline = time.time() + START_LIMIT
        while True:
            try:
                return connect(self.name)
            except (ConnectionRefusedError, FileNotFoundError):
                pass
            except OSError as e:
                raise Unavailable(f"cannot connect: {e}") from None
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self._reachable():
                raise Unavailable(f"the server exited with code {proc.returncode} (log: "
                                  f"{os.path.join(workers_dir(self.forge_dir), self.name + '.log')})")
            if not wait:
                return None  # still importing: this stage needs none of it
            if proc is None:  # resident, found running at the start, gone since
                self.start()
                continue
            if time.time() > deadline:
                raise Unavailable(f"not ready after {START_LIMIT:g} s")
            time.sleep(POLL)

    def _restart(self, generation: int) -> None:
        with self._lock:
            if self.generation != generation:
                return  # another stage restarted it already
            old = self.proc
            if old is not None:
                try:
                    old.wait(timeout=5)  # it exits after refusing
                except subprocess.TimeoutExpired:
                    old.kill()
            self._spawn_server()

    def _follow(self, conn: socket.socket, pid: int) -> int:
        """Until the supervisor reports the stage's exit status; its group is killable meanwhile (interrupt)."""
        launcher.hold_group(pid)
        try:
            reply = read_reply(conn)
            if reply is None:  # the supervisor died (killed): so did the stage, by its death signal
                return -signal.SIGKILL
            return reply["status"]
        finally:
            launcher.release_group(pid)


# ------------------------------------------------------------------ helpers

def stage_env(env, key) -> dict:
    env = dict(os.environ if env is None else env)
    env["FORGE_STAGE_STARTED"] = str(time.time())  # spawn-to-first-step, warm and cold alike
    if key:
        env[launcher.MARKER] = key
    return env


def stage_of(argv) -> tuple[str | None, str | None]:
    """(target, kind) from the stage's context file (argv's last), or Nones."""
    try:
        with open(argv[-1], encoding="utf-8") as f:
            context = json.load(f)
        return context.get("target"), context.get("kind")
    except (OSError, ValueError, IndexError, AttributeError):
        return None, None


def connect(name: str) -> socket.socket:
    """A connection to the server of that name, if it is this user's (the name is public: anyone could squat it)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(zygote.socket_address(name))
        uid = zygote.peer_uid(conn)
        if uid != os.getuid():
            raise Unavailable(f"the socket of worker {name} belongs to uid {uid}")
    except BaseException:
        conn.close()
        raise
    return conn


def exchange(conn: socket.socket, request: dict) -> dict:
    try:
        zygote.send(conn, request)
        reply = read_reply(conn)
    except OSError as e:
        raise Unavailable(f"the server failed: {e}") from None
    if reply is None:
        raise Unavailable("the server closed the connection")
    return reply


def read_reply(conn: socket.socket) -> dict | None:
    """One JSON line, or None at EOF. Reads a byte at a time: the status line follows the pid line later."""
    data = b""
    while True:
        byte = conn.recv(1)
        if not byte:
            return None
        if byte == b"\n":
            return json.loads(data)
        data += byte


def read_state(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if alive(state.get("pid")) else None


def alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"forgebuild.engine.zygote" in f.read()  # not another process that got the pid since
    except OSError:
        return False


def remove_stale_state(path: str) -> None:
    if os.path.exists(path) and read_state(path) is None:
        try:
            os.unlink(path)
        except OSError:
            pass


def servers(forge_dir: str) -> list[dict]:
    """The state of each server of this project that is running; stale state files go."""
    found = []
    folder = workers_dir(forge_dir)
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not entry.endswith(".json"):
            continue
        path = os.path.join(folder, entry)
        state = read_state(path)
        if state is None:
            remove_stale_state(path)
        else:
            found.append(state)
    return found


def stop_server(name: str) -> bool:
    """Ask the server to exit; whether one was there to ask."""
    try:
        with connect(name) as conn:
            return exchange(conn, {"op": "stop"}).get("stopping") is not None
    except (OSError, Unavailable):
        return False


def pool_for(mode: str, idle: float, forge_dir: str, project_dir: str, modules, kinds, heavy_kinds,
             report) -> WarmPool | None:
    if mode == "cold" or not supported():
        return None
    pool = WarmPool(forge_dir, project_dir, modules, kinds, heavy_kinds, mode, idle, report)
    try:
        pool.start()
    except OSError as e:
        report({"event": "warning", "message": f"warm worker: cannot start ({e}); stages start cold"})
        return None
    return pool
