"""The one process launcher (engine/launcher.py): a command's whole process group goes when it times
out, exits or is interrupted, and the process it started dies with the process that started it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from forgebuild.engine import launcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")

# A command that starts a grandchild in the background and notes both pids.
FAMILY = "sleep 60 & echo $! > grandchild; echo $$ > child; "


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def pid_in(path, seconds: float = 10.0) -> int:
    deadline = time.time() + seconds
    while time.time() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written")


def test_a_timeout_kills_the_child_and_its_grandchild(tmp_path):
    log = tmp_path / "log"
    started = time.time()
    code = launcher.run_logged(FAMILY + "sleep 60", str(log), str(tmp_path), shell=True, timeout=0.5)
    assert code == -signal.SIGKILL and time.time() - started < 30  # not the sleep's minute
    assert log.read_text().endswith("forgebuild: killed after 0.5 s (timeout)\n")
    assert gone(pid_in(tmp_path / "child")) and gone(pid_in(tmp_path / "grandchild"))


def test_what_a_command_leaves_running_is_killed_when_it_exits(tmp_path):
    code = launcher.run_logged(FAMILY + "echo done; exit 3", str(tmp_path / "log"), str(tmp_path), shell=True)
    assert code == 3 and (tmp_path / "log").read_text() == "done\n"
    assert gone(pid_in(tmp_path / "grandchild"))


def test_kill_running_stops_every_command_started(tmp_path):
    codes = []
    thread = threading.Thread(target=lambda: codes.append(
        launcher.run_logged(FAMILY + "sleep 60", str(tmp_path / "log"), str(tmp_path), shell=True)))
    thread.start()
    grandchild = pid_in(tmp_path / "grandchild")
    while not launcher.RUNNING:  # noted just after it started: a moment, at most
        time.sleep(0.01)
    launcher.kill_running()
    thread.join(10)
    assert codes == [-signal.SIGKILL] and gone(grandchild) and not launcher.RUNNING


PARENT = """
from forgebuild.engine.launcher import run_logged
run_logged("echo $$ > child; exec sleep 60", "log", ".", shell=True)
"""


def test_the_child_of_a_killed_parent_dies(tmp_path):
    """The death signal: a SIGKILLed forgebuild cannot clean up, its child goes all the same."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=tmp_path)
    try:
        child = pid_in(tmp_path / "child")
        assert alive(child)
    finally:
        parent.kill()
        parent.wait()
    assert gone(child)


def test_kill_leftovers_finds_a_build_by_its_marker(tmp_path):
    tag = launcher.marker("ab" * 32, str(tmp_path))
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, launcher.MARKER: tag + "x"})
    mine = subprocess.Popen(["sleep", "60"], env={**os.environ, launcher.MARKER: tag})
    try:
        assert launcher.kill_leftovers(tag) == 1
        assert mine.wait(10) == -signal.SIGKILL and other.poll() is None
    finally:
        other.kill()
        other.wait()
