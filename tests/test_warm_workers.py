"""Warm workers through the CLI (engine/warm.py, engine/zygote.py): stages forked from a server that imported
their modules once, with a cold stage's environment and kill semantics; a crashing stage or one that leaks a
thread leaves the server serving; a changed rule file replaces it; a resident one stops on its idle timeout
or on `forgebuild worker stop`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ENV, Project, install_rule_plugin
from tinylab import BASE_FORGEFILE, write_stdlib_text
from unit.test_launcher import alive, gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm workers: Linux only")

# A test plugin: what its stage process sees, written into its output; or a crash.
RULE = '''
"""What a stage process sees (a warm workers test plugin)."""
import os, signal, sys, threading, time
from pydantic import BaseModel, ConfigDict
version = "1"

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[str]
    crash: str = ""

def inputs(params):
    return {"sources": params.sources}

def requires(params):
    return {"json": "core"}

def server_pid():
    """The warm server: the parent of this stage's supervisor (0 for a cold stage, whose parent is forgebuild)."""
    with open(f"/proc/{os.getppid()}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    return parent if b"forgebuild.engine.zygote" in open(f"/proc/{parent}/cmdline", "rb").read() else 0

def wait_for_server(ctx):
    """Until the warm server is ready (its state file), so the stages after this one are forked: a stage that
    imports no ML stack does not wait for a server still importing. Not when forgebuild runs cold."""
    if b"cold" in open(f"/proc/{os.getppid()}/cmdline", "rb").read():
        return
    deadline = time.time() + 60
    folder = os.path.join(ctx.workspace_dir, "workers")
    while time.time() < deadline and not any(n.endswith(".json") for n in os.listdir(folder)):
        time.sleep(0.05)

def build(ctx):
    if ctx.params.crash == "wait":
        wait_for_server(ctx)
    with open(os.path.join(ctx.project_dir, "served.txt"), "a") as f:
        f.write(f"{ctx.target} {server_pid()}\\n")
    if ctx.params.crash == "abort":
        os.abort()
    if ctx.params.crash == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if ctx.params.crash == "thread":
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    if ctx.params.crash == "sleep":
        with open(os.path.join(ctx.project_dir, "stage.pid"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    seen = {
        "env": {k: v for k, v in os.environ.items() if k.startswith(("FORGE_ACTION_KEY", "WARM_TEST"))},
        "cwd": os.getcwd(), "own_group": int(fields[2]) == os.getpid(), "stdin": os.readlink("/proc/self/fd/0"),
        "argv0": os.path.basename(sys.argv[0]), "main": sys.modules["__main__"].__name__,
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "sigchld": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
        "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
    }
    with open(os.path.join(ctx.out, "seen.json"), "w") as f:
        f.write(__import__("json").dumps(seen, sort_keys=True))
    print("stage says hello", flush=True)
'''


@pytest.fixture
def plugin(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    install_rule_plugin(site, "seen-rule", {"seen": ("seen_rule", RULE)})
    return {"env": {"PYTHONPATH": str(site), "WARM_TEST": "yes"}, "rule_file": site / "seen_rule.py"}


def targets(*specs: tuple[str, str], after: str | None = None) -> str:
    """`after`: a target each of them depends on (it builds first, maybe cold: the server may still be importing)."""
    sources = '["a.txt"]' if after is None else f'["a.txt", "seen:{after}"]'
    first = f'[seen.{after}]\nsources = ["a.txt"]\ncrash = "wait"\n' if after else ""
    return first + "".join(f'[seen.{name}]\nsources = {sources}\ncrash = "{crash}"\n' for name, crash in specs)


def served(project) -> dict[str, int]:
    lines = project.read("served.txt").split("\n")
    return {t: int(pid) for t, pid in (line.split() for line in lines if line)}


def test_a_worker_survives_stages_that_crash_or_leak_a_thread(project, plugin):
    project.write("a.txt", "a\n")
    project.forgefile(targets(("leak", "thread"), ("abort", "abort"), ("segv", "segv"), ("zafter", ""), after="first"))
    events = project.events("-k", "--workers", "run", env=plugin["env"], expect=1)
    failed = {e["target"]: e["reason"] for e in events if e["event"] == "failed"}
    assert failed == {"seen:abort": "build process killed by signal 6", "seen:segv": "build process killed by signal 11"}
    pids = served(project)
    assert [e["target"] for e in events if e["event"] == "start"][-1] == "seen:zafter"
    del pids["seen:first"]
    assert set(pids) == {"seen:leak", "seen:abort", "seen:segv", "seen:zafter"}
    assert len(set(pids.values())) == 1 and 0 not in pids.values()  # every stage, the same server's
    assert not alive(pids["seen:zafter"])  # a run's server ends with the run
    assert project.read(".forge/logs/seen/zafter.log").endswith("stage says hello\n")
    assert not os.listdir(os.path.join(project.root, ".forge/workers"))  # its state and log went with it


def test_a_warm_stage_sees_what_a_cold_one_sees(project, plugin):
    project.write("a.txt", "a\n")
    project.forgefile(targets(("one", ""), after="first"))
    cold = project.events("--workers", "cold", env=plugin["env"])[-1]["targets"][1]
    assert served(project) == {"seen:first": 0, "seen:one": 0}
    warm = project.events("-B", "--workers", "run", env=plugin["env"])[-1]["targets"][1]
    assert served(project)["seen:one"] != 0
    assert warm["digest"] == cold["digest"]  # the same bytes: environment, cwd, group, stdin, signals
    seen = json.loads(project.read(".forge/out/seen/one/seen.json"))
    assert seen == {"env": {"FORGE_ACTION_KEY": f"{warm['key']}@{os.path.realpath(project.root)}/.forge",
                            "WARM_TEST": "yes"},
                    "cwd": project.root, "own_group": True, "stdin": "/dev/null", "argv0": "worker.py",
                    "main": "__main__", "sigint": True, "sigchld": True, "sigterm": True}


def test_a_tiny_model_built_warm_has_the_cold_digest(tmp_path):
    """Two workspaces (a -B rebuild in one could reuse what the first build stored)."""
    digests = {}
    for mode in ("cold", "run"):
        project = Project(str(tmp_path / mode))
        write_stdlib_text(project.root, files=12, max_chars=3000)
        project.forgefile(BASE_FORGEFILE.replace("steps = 30", "steps = 4"))
        events = project.events("--workers", mode, timeout=300)
        assert not [e for e in events if e["event"] == "warning"]
        digests[mode] = {t["target"]: t["digest"] for t in events[-1]["targets"]}
        record = project.events("show", "model:base")[0]
        assert record["metrics"]["seconds_before_first_step"] > 0
    assert digests["run"] == digests["cold"]


def test_a_changed_rule_file_replaces_the_resident_worker(project, plugin):
    project.write("a.txt", "a\n")
    project.forgefile(targets(("one", ""), ("two", ""), after="first"))
    try:
        project.run("seen:one", "--workers", "resident", env=plugin["env"])
        first = served(project)["seen:one"]
        assert first and alive(first)  # it outlives the build
        plugin["rule_file"].write_text(plugin["rule_file"].read_text() + "\n# edited\n")
        project.run("seen:two", "--workers", "resident", env=plugin["env"])
        second = served(project)["seen:two"]
        assert second not in (0, first) and gone(first)
        log = project.read(".forge/logs/seen/two.log")
        assert f"seen_rule.py changed since it was preloaded); starting a new one\n" in log
        status = project.run("worker", "status", env=plugin["env"]).stdout
        assert len(status.splitlines()) == 1 and f"pid {second}  resident" in status
    finally:
        project.run("worker", "stop", env=plugin["env"])


def test_worker_stop_and_the_idle_timeout_end_a_resident_worker(project, plugin):
    project.write("a.txt", "a\n")
    project.forgefile("[forge]\nworkers = \"resident\"\nworker_idle = 2\n" + targets(("one", ""), after="first")
                      + targets(("two", ""), after="second"))
    project.run("seen:one", env=plugin["env"])
    first = served(project)["seen:one"]
    assert gone(first, seconds=20)  # two seconds without a request
    assert project.run("worker", "status", env=plugin["env"]).stdout == "no warm worker running\n"
    project.run("seen:two", env=plugin["env"])
    second = served(project)["seen:two"]
    assert second != first and alive(second)
    stopped = project.events("worker", "stop", env=plugin["env"])[-1]["stopped"]
    assert [s["pid"] for s in stopped] == [second] and gone(second)
    assert project.run("worker", "stop", env=plugin["env"]).stdout == "no warm worker running\n"


@pytest.mark.parametrize("mode", ["run", "resident"])
def test_sigkill_of_forgebuild_mid_stage_leaves_no_stage_process(project, plugin, mode):
    project.write("a.txt", "a\n")
    project.forgefile(targets(("slow", "sleep"), after="first"))
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", "--workers", mode], cwd=project.root,
                            env={**ENV, **plugin["env"]}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid_file = os.path.join(project.root, "stage.pid")
        deadline = time.time() + 60
        while not os.path.exists(pid_file) or not open(pid_file).read():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        stage = int(open(pid_file).read())
        server = served(project)["seen:slow"]
        assert server and alive(stage)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert gone(stage)
        assert gone(server) if mode == "run" else alive(server)
    finally:
        if proc.poll() is None:
            proc.kill()
        if mode == "resident":
            project.run("worker", "stop", env=plugin["env"])
