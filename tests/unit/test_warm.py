"""Warm workers (engine/warm.py, engine/zygote.py) without the CLI: a pool running `python -m MODULE` commands
of a small helper module, forked from a server that preloaded it."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from forgebuild.engine import launcher, warm, zygote
from unit.test_launcher import gone

pytestmark = pytest.mark.skipif(not warm.supported(), reason="warm workers: Linux only")

HELPER = '''
import os, signal, sys, time
what = sys.argv[1]
if what == "say":
    print("hello from", os.getpid(), os.environ.get("FORGE_ACTION_KEY"), os.getcwd(), sys.argv[0].endswith("warmhelper.py"))
elif what == "exit":
    sys.exit(7)
elif what == "segv":
    os.kill(os.getpid(), signal.SIGSEGV)
elif what == "leave":  # a background process in the stage's group, left running when the stage exits
    import subprocess
    open("left.pid", "w").write(str(subprocess.Popen(["sleep", "60"]).pid))
elif what == "sleep":
    open("stage.pid", "w").write(str(os.getpid()))
    time.sleep(600)
'''


@pytest.fixture
def pool(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "warmhelper.py").write_text(HELPER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "lib"))
    events = []
    made = warm.WarmPool(str(tmp_path / ".forge"), str(tmp_path), ["warmhelper"], [], set(), "run", 0, events.append)
    made.events = events
    made.start()
    deadline = time.time() + 60
    while not os.path.exists(made.state_file):  # ready: stages are forked from now on
        assert time.time() < deadline and made.proc.poll() is None
        time.sleep(0.02)
    yield made
    made.close()


def command(what: str) -> list[str]:
    return [sys.executable, "-m", "warmhelper", what]


def served_by_server(pool, log) -> bool:
    """Whether the stage that wrote this log was forked (the server's log names each stage it forked)."""
    with open(os.path.join(warm.workers_dir(pool.forge_dir), f"{pool.name}.log"), encoding="utf-8") as f:
        return f"zygote {pool.proc.pid}: stage warmhelper" in f.read()


def test_a_stage_runs_forked_with_its_environment_cwd_and_log(pool, tmp_path):
    log = tmp_path / "stage.log"
    log.write_text("# header\n")
    cwd = tmp_path / "there"
    cwd.mkdir()
    assert pool.run(command("say"), str(log), str(cwd), env=pool.env, key="k@ws") == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "# header" and lines[1].endswith(f" k@ws {cwd} True")
    assert served_by_server(pool, log) and not pool.events


def test_exit_codes_are_run_loggeds(pool, tmp_path):
    log = str(tmp_path / "stage.log")
    assert pool.run(command("exit"), log, str(tmp_path), env=pool.env) == 7
    assert pool.run(command("segv"), log, str(tmp_path), env=pool.env) == -signal.SIGSEGV
    assert pool.run(command("say"), log, str(tmp_path), env=pool.env) == 0  # the server survived the crash


def test_what_a_warm_stage_leaves_in_its_group_is_killed_when_it_exits(pool, tmp_path):
    assert pool.run(command("leave"), str(tmp_path / "log"), str(tmp_path), env=pool.env) == 0
    assert gone(int((tmp_path / "left.pid").read_text()))


def test_an_interrupt_kills_a_warm_stage(pool, tmp_path):
    codes = []
    thread = threading.Thread(target=lambda: codes.append(pool.run(command("sleep"), str(tmp_path / "log"),
                                                                     str(tmp_path), env=pool.env)))
    thread.start()
    deadline = time.time() + 30
    while not (tmp_path / "stage.pid").exists() or not (tmp_path / "stage.pid").read_text():
        assert time.time() < deadline
        time.sleep(0.02)
    assert launcher.WARM_GROUPS == {int((tmp_path / "stage.pid").read_text())}
    launcher.kill_running()
    thread.join(30)
    assert codes == [-signal.SIGKILL] and not launcher.WARM_GROUPS
    assert gone(int((tmp_path / "stage.pid").read_text()))


def test_a_stage_whose_environment_differs_starts_cold_with_a_warning(pool, tmp_path):
    log = tmp_path / "stage.log"
    env = {**pool.env, "SOMETHING_ELSE": "secret-value"}
    assert pool.run(command("say"), str(log), str(tmp_path), env=env) == 0
    assert "hello from" in log.read_text() and not served_by_server(pool, log)
    [event] = pool.events
    assert event["message"] == ("warm worker: the stage's environment differs from the worker's in SOMETHING_ELSE; "
                                "starting cold")


def test_a_changed_preloaded_module_retires_the_server(pool, tmp_path):
    first = pool.proc.pid
    helper = tmp_path / "lib" / "warmhelper.py"
    helper.write_text(HELPER + "\n# edited\n")
    log = tmp_path / "stage.log"
    assert pool.run(command("say"), str(log), str(tmp_path), env=pool.env) == 0
    text = log.read_text()
    assert text.startswith(f"forgebuild: warm worker {pool.name} retired ({helper} changed since it was preloaded); "
                           "starting a new one\nhello from")
    assert pool.proc.pid != first and pool.proc.poll() is None


def test_env_difference_names_variables_never_values():
    assert zygote.env_difference({"A": "1", "B": "x", "FORGE_ACTION_KEY": "k"}, {"A": "2", "C": "y"}) == ["A", "B", "C"]


def test_changed_file_sees_a_touch(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("x = 1\n")
    st = os.stat(path)
    files = {str(path): (st.st_mtime_ns, st.st_size)}
    assert zygote.changed_file(files) is None
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert zygote.changed_file(files) == str(path)


def test_a_server_that_cannot_fork_safely_leaves_stages_cold_with_a_warning(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "threader.py").write_text("import threading, time\n"
                                                  "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n")
    (tmp_path / "lib" / "warmhelper.py").write_text(HELPER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "lib"))
    events = []
    pool = warm.WarmPool(str(tmp_path / ".forge"), str(tmp_path), ["threader"], [], {None}, "run", 0, events.append)
    pool.start()
    try:
        log = tmp_path / "stage.log"
        assert pool.run(command("say"), str(log), str(tmp_path), env=pool.env) == 0  # waits, then starts cold
        assert "hello from" in log.read_text() and pool.proc.returncode == 3
        server_log = os.path.join(warm.workers_dir(pool.forge_dir), f"{pool.name}.log")
        assert open(server_log).read().endswith("zygote: cannot fork safely: importing started 1 thread(s)\n")
        assert [e["message"] for e in events] == [f"warm worker: the server exited with code 3 (log: {server_log}); "
                                                  "starting cold"]
    finally:
        pool.close()
