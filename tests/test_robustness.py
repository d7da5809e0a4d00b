"""Killed builds, concurrent builders, and the no-torch / offline guarantees of the planner."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from conftest import ENV

SLOW = """
[run.slow]
cmd = "echo started >> runs.txt; echo step1 > {work}/progress; echo partial > {out}/a.txt; if [ -f slow ]; then sleep 30; fi; cat {work}/progress > {out}/b.txt"
"""


def _wait_for(pattern: str, timeout=30.0) -> list[str]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = glob.glob(pattern)
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"nothing matched {pattern}")


def test_sigkill_mid_build_leaves_no_artifact_and_resumes(project):
    project.forgefile(SLOW)
    project.write("slow", "")
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild"], cwd=project.root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(os.path.join(project.root, ".forge/scratch/*/out/a.txt"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    forge = os.path.join(project.root, ".forge")
    assert glob.glob(f"{forge}/ac/*/*.json") == []
    assert not os.path.lexists(f"{forge}/out/run/slow")
    assert glob.glob(f"{forge}/artifacts/*") == []
    assert project.run("status").stdout.startswith("missing run:slow")
    os.unlink(os.path.join(project.root, "slow"))
    assert project.build() == {"run:slow": "built"}
    assert project.read(".forge/out/run/slow/a.txt") == "partial\n"
    assert project.read(".forge/out/run/slow/b.txt") == "step1\n"
    assert project.runs() == ["started", "started"]
    assert glob.glob(f"{forge}/scratch/*") == [] and glob.glob(f"{forge}/work/*") == []


def test_two_processes_build_a_target_once(project):
    project.forgefile("""
        [run.once]
        cmd = "echo ran >> runs.txt; sleep 1; echo done > {out}/x.txt"
    """)
    cmd = [sys.executable, "-m", "forgebuild", "--json"]
    procs = [subprocess.Popen(cmd, cwd=project.root, env=ENV, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    actions = sorted(json.loads(o.splitlines()[-1])["targets"][0]["action"] for o in outs)
    assert actions == ["built", "cached"]
    assert project.runs() == ["ran"]


def test_planning_path_never_imports_torch_transformers_or_trl(project, no_torch_env):
    env = no_torch_env
    check = subprocess.run([sys.executable, "-c", "import torch"], env={**ENV, **env}, capture_output=True)
    assert check.returncode == 97  # the tripwire itself works
    project.write("data.txt", "x\n")
    project.forgefile("""
        [run.a]
        cmd = "cp {in.d} {out}/d.txt"
        inputs = { d = "data.txt" }
        [run.b]
        cmd = "cat {in.a}/d.txt > {out}/e.txt"
        inputs = { a = "run:a" }
    """)
    for args in (["-n"], [], [], ["status"], ["explain", "run:b"], ["graph"], ["path", "run:b"], ["show", "run:b"],
                 ["log"], ["schema"], ["gc"]):
        project.run(*args, env=env)
    subprocess.run([sys.executable, "-c", "import forgebuild, forgebuild.cli, forgebuild.engine.executor"],
                   env={**ENV, **env}, check=True)


NOOP_MODULES = """
import json, sys
from forgebuild.cli import main
code = main(["-q"])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def test_noop_build_decides_with_the_standard_library_and_xxhash(project):
    project.forgefile('[run.a]\ncmd = "echo a > {out}/a"\n')
    project.run()
    out = subprocess.run([sys.executable, "-c", NOOP_MODULES], cwd=project.root, env=ENV, capture_output=True,
                         text=True, check=True).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["code"] == 0
    heavy = {"pydantic", "networkx", "fsspec", "rich", "torch"} & {m.split(".")[0] for m in result["modules"]}
    assert heavy == set()


OFFLINE = """
import os, sys
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.bind",
                 "socket.sendto", "socket.sendmsg", "socket.__new__", "urllib.Request", "http.client.connect"):
        sys.stderr.write(f"network: {event} {args}\\n")
        os._exit(98)
sys.addaudithook(hook)
from forgebuild.cli import main
for argv in (["-q"], ["-q"], ["status"], ["explain", "run:b"], ["graph", "--format", "dot"], ["show", "run:b"],
             ["-B", "-q", "run:b"], ["gc", "--grace", "0"], ["clean"], ["-q"]):
    code = main(argv)
    assert code == 0, (argv, code)
"""


def test_no_network_access_without_a_remote(project):
    project.forgefile("""
        [run.a]
        cmd = "echo a > {out}/a"
        [run.b]
        cmd = "cat {in.a}/a > {out}/b"
        inputs = { a = "run:a" }
    """)
    proc = subprocess.run([sys.executable, "-c", OFFLINE], cwd=project.root, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_run_rule_contract(project):
    project.write("data/a.txt", "A\n")
    project.write("data/b.txt", "B\n")
    project.write("show.sh", textwrap.dedent("""
        pwd > "$FORGE_OUT/cwd"
        echo "$FORGE_IN_ONE|$FORGE_IN_MANY|$FORGE_PARAM_LEVEL|$FORGE_PARAM_NAME|$FORGE_SEED|$EXTRA" > "$FORGE_OUT/env"
        [ -d "$FORGE_WORK" ] && echo yes > "$FORGE_OUT/work"
    """))
    project.forgefile("""
        [forge]
        seed = 5

        [run.show]
        cmd = "sh show.sh && echo {in.many} {params.level} > {out}/args && mkdir {out}/sub && cp {in.one} {out}/sub/"
        inputs = { one = "data/a.txt", many = "data/*.txt" }
        params = { level = 3, name = "x y" }
        env = { EXTRA = "extra" }
        outputs = ["env", "sub/a.txt"]

        [run.argv]
        cmd = ["python3", "-c", "import sys; open(sys.argv[1] + '/o', 'w').write(sys.argv[2])", "{out}", "{in.dep}"]
        inputs = { dep = "run:show" }
    """)
    project.run()
    out = ".forge/out/run/show/"
    assert project.read(out + "cwd").strip() == os.path.realpath(project.root)
    one, many, level, name, seed, extra = project.read(out + "env").strip().split("|")
    assert (one, many, level, name, extra) == ("data/a.txt", "data/a.txt data/b.txt", "3", "x y", "extra")
    assert int(seed) > 0
    assert project.read(out + "args") == "data/a.txt data/b.txt 3\n"
    assert project.read(out + "work") == "yes\n"
    assert project.read(out + "sub/a.txt") == "A\n"
    dep = project.read(".forge/out/run/argv/o")
    assert dep.startswith(".forge/artifacts/") and os.path.isfile(os.path.join(project.root, dep, "env"))


def test_declared_output_missing_fails_the_stage(project):
    project.forgefile('[run.a]\ncmd = "true"\noutputs = ["model.bin"]\n')
    proc = project.run(expect=1)
    assert "FAILED  run:a: command did not create declared output model.bin" in proc.stdout
    assert not os.path.lexists(os.path.join(project.root, ".forge/out/run/a"))


def test_timeout_kills_the_command(project):
    project.forgefile('[run.a]\ncmd = "sleep 30"\ntimeout = 0.5\n')
    proc = project.run(expect=1)
    assert "FAILED  run:a: command killed by signal 9" in proc.stdout
    assert "killed after 0.5 s (timeout)" in proc.stdout


def _run_in_terminal(cwd: str, *args: str) -> tuple[int, str]:
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", *args], cwd=cwd, env=ENV,
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    import re

    return proc.wait(), re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode("utf-8", "replace"))


def test_terminal_progress_display(project):
    project.forgefile('[run.a]\ncmd = "echo a > {out}/a"\n[run.b]\ncmd = "exit 1"\n')
    code, out = _run_in_terminal(project.root, "-k")
    assert code == 1
    assert "built   run:a" in out and "FAILED  run:b: command exited with code 1" in out
    assert "Traceback" not in out
    code, out = _run_in_terminal(project.root, "run:a")
    assert code == 0 and "nothing to do: 1 target up to date" in out


WRITER = """
if [ -f slow ]; then
  (while true; do echo junk >> "$1/junk"; echo junk >> "$2/junk"; sleep 0.05; done) &
  sleep 30
fi
echo clean > "$1/done"
"""


def _marked_processes(key: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(f"FORGE_ACTION_KEY={key}@".encode()) for e in environ):
            found.append(int(pid))
    return found


def test_processes_left_by_a_killed_build_are_stopped_before_the_rebuild(project):
    project.write("writer.sh", WRITER)
    project.write("slow", "")
    project.forgefile('[run.w]\ncmd = "sh writer.sh {out} {work}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild"], cwd=project.root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(os.path.join(project.root, ".forge/scratch/*/out/junk"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [key] = [e["key"] for e in project.events("status")[-1]["targets"]]
    time.sleep(0.3)
    assert _marked_processes(key), "the background writer outlived its build (the case under test)"
    os.unlink(os.path.join(project.root, "slow"))
    assert project.build() == {"run:w": "built"}
    assert sorted(os.listdir(os.path.join(project.root, ".forge/out/run/w"))) == ["done"]
    assert _marked_processes(key) == []
    assert glob.glob(os.path.join(project.root, ".forge/scratch/*")) == []
