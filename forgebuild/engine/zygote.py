"""The warm worker's server: `python -m forgebuild.engine.zygote --name NAME --state FILE [--module M]...
[--rule KIND]... [--idle SECONDS]`. The client side is engine/warm.py.

It imports the ML stack once (the `requires` modules of the stages a build will run, their rules and
forgebuild's worker), then listens on the abstract unix socket `forgebuild-NAME`; bound only once the
imports are done, so a connection that succeeds is served at once. Per stage request it forks a
supervisor, which forks the stage:

    server --fork--> supervisor (holds the client's connection) --fork--> stage (worker.main)

The stage is what `python -m forgebuild.engine.worker CONTEXT.json` would be: the request's
environment (os.environ replaced), cwd and argv, stdin /dev/null, stdout and stderr appended to the
stage log, a process group of its own, Python's initial signal dispositions, and it dies with its
supervisor (death signal). A forked process's /proc/PID/environ is the server's, so kill_leftovers
would not find the stage: the supervisor guarantees it instead. It sends the stage's pid, then its exit
status (negative: killed by that signal), and kills the stage's whole group when the stage exits
(what it left running) or when the connection drops (forgebuild died, even by SIGKILL).

Fork safety: the server never initialises CUDA (PYTORCH_NVML_BASED_CUDA_CHECK=1 for its imports), runs
no torch op (GNU OpenMP's thread pool does not survive a fork), starts no thread, and flushes its stdio
before each fork. Stale code: it records (mtime_ns, size) of every loaded module file once the imports
are done and checks them before each fork; a change (a forgebuild file, a rule, an upgraded library)
and it refuses the request and exits, and the client starts a new one. It serves only its own user
(SO_PEERCRED) and exits after `--idle` seconds without a request (0: never; a run's server dies with
the build instead).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback

from forgebuild.engine import launcher

# Variables that differ per stage (or that only the server sets): every other one must equal the server's,
# since libraries read some at import (libgomp reads OMP_NUM_THREADS when torch loads it).
PER_STAGE = frozenset({"FORGE_ACTION_KEY", "FORGE_STAGE_STARTED", "FORGE_CONTEXT_FILE", "PYTORCH_NVML_BASED_CUDA_CHECK"})
REQUEST_TIMEOUT = 5.0  # seconds a connected client may take to send its request (it sends at once)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end (SO_PEERCRED: pid, uid, gid), as the kernel knows it."""
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]


def socket_address(name: str) -> bytes:
    """Abstract (Linux): no file to leave behind, and a second server of the same name cannot bind."""
    return b"\0forgebuild-" + name.encode()


def comparable_env(env) -> dict:
    return {k: v for k, v in env.items() if k not in PER_STAGE}


def env_difference(a, b) -> list[str]:
    """Names (never values: they may be secrets) of the variables that differ."""
    a, b = comparable_env(a), comparable_env(b)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


# ------------------------------------------------------------------ preloading

def preload(modules: list[str], kinds: list[str]) -> list[str]:
    """Import what stages will import; the ones that failed (said in the server's log, not fatal)."""
    failed = []
    for name in ["forgebuild.engine.worker", *modules]:
        try:
            importlib.import_module(name)
        except Exception as e:  # a stage that needs it fails on its own, with its own traceback
            print(f"zygote: import {name} failed: {type(e).__name__}: {e}", flush=True)
            failed.append(name)
    for kind in kinds:
        try:
            from forgebuild.rules import load_rule

            load_rule(kind)
        except Exception as e:
            print(f"zygote: rule {kind} failed to load: {e}", flush=True)
            failed.append(f"rule:{kind}")
    return failed


def fork_hazard() -> str | None:
    """Why forking now would hand the stages a broken process, if it would."""
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "cuda", None) is not None and torch.cuda.is_initialized():
        return "CUDA was initialised while importing"
    if threading.active_count() > 1:
        return f"importing started {threading.active_count() - 1} thread(s)"
    return None


def loaded_files() -> dict[str, tuple[int, int]]:
    found = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            try:
                st = os.stat(path)
            except OSError:
                continue
            found[path] = (st.st_mtime_ns, st.st_size)
    return found


def changed_file(files: dict[str, tuple[int, int]]) -> str | None:
    """The first preloaded module file that changed since (~5k stats for the ML stack: ~10 ms)."""
    for path, seen in files.items():
        try:
            st = os.stat(path)
        except OSError:
            return path
        if (st.st_mtime_ns, st.st_size) != seen:
            return path
    return None


# ------------------------------------------------------------------ serving

class Server:
    def __init__(self, args, initial_signals: dict, launched_env: dict):
        self.name, self.state_file, self.idle = args.name, args.state, args.idle
        self.initial_signals = initial_signals
        self.env = dict(launched_env)  # what a request's environment must equal (but for PER_STAGE)
        # What the imports set (transformers' import has torch's inductor set TORCHINDUCTOR_CACHE_DIR): a cold
        # stage's same imports would set them too, so a forked stage gets them on top of its request's
        self.set_by_imports = {k: v for k, v in os.environ.items() if k not in launched_env}
        self.files: dict = {}
        self.listener: socket.socket | None = None

    def serve(self) -> int:
        self.listener.settimeout(self.idle or None)
        while True:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                print(f"zygote: no request for {self.idle:g} s: exiting", flush=True)
                return 0
            try:
                if not self.handle(conn):
                    return 0
            except OSError as e:  # the client went away mid-request: the next one is served all the same
                print(f"zygote: a request failed: {e}", flush=True)
            finally:
                conn.close()

    def handle(self, conn: socket.socket) -> bool:
        """Serve one connection; False when the server should exit."""
        if peer_uid(conn) != os.getuid():
            return True  # another user's process: nothing to say to it
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            request = read_message(conn)
        except (OSError, ValueError):
            return True
        op = request.get("op") if isinstance(request, dict) else None
        if op == "stop":
            send(conn, {"stopping": os.getpid()})
            print("zygote: stopped on request", flush=True)
            return False
        if op != "stage" or not well_formed(request):
            return True  # not forgebuild's client: nothing to say
        changed = changed_file(self.files)
        if changed is not None:
            send(conn, {"refused": f"{changed} changed since it was preloaded", "retired": True})
            print(f"zygote: {changed} changed: exiting", flush=True)
            return False
        argv = request.get("argv") or []
        if len(argv) < 3 or argv[0] != sys.executable or argv[1] != "-m":
            send(conn, {"refused": "not a `python -m MODULE` command of this interpreter"})
            return True
        differ = env_difference(request["env"], self.env)
        if differ:
            send(conn, {"refused": f"the stage's environment differs from the worker's in {', '.join(differ[:5])}"})
            return True
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            env = {**self.set_by_imports, **request["env"]}
            supervise(conn, self.listener, {**request, "env": env}, self.initial_signals)  # never returns
        return True


def well_formed(request: dict) -> bool:
    argv, env = request.get("argv"), request.get("env")
    return (isinstance(argv, list) and all(isinstance(a, str) for a in argv) and isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
            and isinstance(request.get("cwd"), str) and isinstance(request.get("log"), str))


def supervise(conn: socket.socket, listener: socket.socket, request: dict, initial_signals: dict) -> None:
    """The supervisor (a child of the server): fork the stage, report its pid and exit status, and kill
    its group when it exits or when the client's connection drops."""
    code = 0
    try:
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it (auto-reaped supervisors)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        pid = os.fork()
        if pid == 0:
            become_stage(conn, request, initial_signals)  # never returns
        try:
            os.setpgid(pid, pid)  # also done in the child: whichever runs first, the group exists before a kill
        except OSError:
            pass
        send(conn, {"pid": pid})
        print(f"zygote {os.getppid()}: stage {request['argv'][2]} {' '.join(request['argv'][3:])} is pid {pid}",
              flush=True)
        status = watch(conn, pid)
        if status is not None:
            send(conn, {"status": status})
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def watch(conn: socket.socket, pid: int) -> int | None:
    """Wait for the stage to exit (its status) or the connection to drop (None; the stage is killed)."""
    exited = os.pidfd_open(pid)
    try:
        while True:
            readable, _, _ = select.select([conn, exited], [], [])
            if exited in readable:
                _, status = os.waitpid(pid, 0)
                launcher.kill_group(pid)  # what the stage left running in its group goes with it
                return os.waitstatus_to_exitcode(status)
            if not conn.recv(1):  # EOF: forgebuild is gone (or gave up on the stage)
                launcher.kill_group(pid)
                os.waitpid(pid, 0)
                return None
    finally:
        os.close(exited)


def become_stage(conn: socket.socket, request: dict, initial_signals: dict) -> None:
    """In the stage process: what a cold `python -m forgebuild.engine.worker CONTEXT.json` would be."""
    code = 1
    try:
        launcher._child_setup()  # a process group of its own, and it dies with its supervisor
        for signum, handler in initial_signals.items():
            try:
                signal.signal(signum, handler)
            except (OSError, ValueError, TypeError):
                pass
        redirect(request["log"])
        conn.close()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["-m", *request["argv"][3:]]  # argv: [python, -m, MODULE, ARG...]
        importlib.invalidate_caches()  # files written since the server's imports are found
        # `python -m` has the module as __main__ only; its imports stay preloaded
        sys.modules.pop(request["argv"][2], None)
        runpy.run_module(request["argv"][2], run_name="__main__", alter_sys=True)  # what `python -m` does
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)  # as the interpreter says a SystemExit("message")
    except BaseException:
        traceback.print_exc()
    finally:
        finish(code)


def redirect(log_path: str) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def finish(code: int) -> None:
    """As the interpreter ends: non-daemon threads joined, atexit handlers run, stdio flushed."""
    try:
        threading._shutdown()
    except Exception:
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code & 0xFF if code >= 0 else 1)


def read_message(conn: socket.socket) -> dict:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("connection closed")
        data += chunk
        if len(data) > 16 * 1024 * 1024:  # a request is argv, cwd, env and a path: kilobytes
            raise ValueError("request too long")
    return json.loads(data)


def send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def write_state(path: str, state: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, path)


def remove_state(path: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            if json.load(f).get("pid") != os.getpid():
                return  # a newer server of the same name wrote it
        os.unlink(path)
    except (OSError, ValueError):
        pass


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="forgebuild.engine.zygote")
    parser.add_argument("--name", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--mode", default="run")
    parser.add_argument("--module", action="append", default=[])
    parser.add_argument("--rule", action="append", default=[])
    parser.add_argument("--idle", type=float, default=0.0)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    initial_signals = {s: signal.getsignal(s) for s in signal.valid_signals()
                       if s not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(s) is not None}
    args = parse(argv)
    launched_env = dict(os.environ)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # torch's imports ask NVML, never the driver
    started = time.time()
    failed = preload(args.module, args.rule)
    hazard = fork_hazard()
    if hazard:
        print(f"zygote: cannot fork safely: {hazard}", flush=True)
        return 3
    server = Server(args, initial_signals, launched_env)
    server.files = loaded_files()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(socket_address(args.name))
    except OSError:
        print(f"zygote: {args.name} is served by another server already", flush=True)
        return 0
    listener.listen(64)
    server.listener = listener
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    write_state(args.state, {"pid": os.getpid(), "name": args.name, "mode": args.mode, "started": started,
                             "ready": time.time(), "python": sys.executable, "idle": args.idle,
                             "modules": args.module, "rules": args.rule, "failed": failed,
                             "files": len(server.files), "log": os.path.splitext(args.state)[0] + ".log"})
    print(f"zygote: ready in {time.time() - started:.2f} s; {len(server.files)} module files; "
          f"serving {args.name}", flush=True)
    try:
        return server.serve()
    finally:
        remove_state(args.state)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
