"""A third-party rule registers through the `forgebuild.rules` entry point and builds in a child process."""
from __future__ import annotations

import os

import pytest
from conftest import install_rule_plugin

RULE = '''
"""Concatenate source files (a test plugin)."""
import os
from pydantic import BaseModel, ConfigDict
from forgebuild.rules import runtime

version = "{version}"

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[str]
    upper: bool = False
    threads: int = runtime(1)
    crash: str = ""

def inputs(params):
    return {{"sources": params.sources}}

def build(ctx):
    if ctx.params.crash == "raise":
        raise ValueError("bad data in row 3")
    if ctx.params.crash == "fail":
        raise ctx.failure("refusing: upper and lower disagree")
    if ctx.params.crash == "exit":
        os._exit(4)
    if ctx.params.crash == "row":
        raise ctx.bad_input("a.txt:3: field 'text' is missing")
    text = "".join(open(p).read() for p in ctx.inputs["sources"])
    with open(os.path.join(ctx.out, "all.txt"), "w") as f:
        f.write(text.upper() if ctx.params.upper else text)
    with open(os.path.join(ctx.out, "pid"), "w") as f:
        f.write(str(os.getpid()))
    ctx.log("concatenated")
    ctx.metrics({{"characters": len(text)}})
'''


PERFILE = '''
"""Upper-case each source file, one cached sub-step per file (ctx.memo)."""
import os
from pydantic import BaseModel, ConfigDict

version = "1"

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: str

def inputs(params):
    return {"sources": params.sources}

def build(ctx):
    for rel in sorted(ctx.digests):
        def produce(folder, rel=rel):
            with open(os.path.join(ctx.project_dir, "memo-runs.txt"), "a") as log:
                log.write(rel + "\\n")
            with open(os.path.join(folder, "up.txt"), "w") as f:
                f.write(open(os.path.join(ctx.project_dir, rel)).read().upper())
        done = ctx.memo("upper", {"file": ctx.digests[rel]}, produce)
        with open(os.path.join(ctx.out, os.path.basename(rel)), "w") as f:
            f.write(open(os.path.join(done, "up.txt")).read())
'''


@pytest.fixture
def plugin_env(tmp_path_factory):
    def install(version="1"):
        site = tmp_path_factory.mktemp("site")
        install_rule_plugin(site, "concat-rule", {"concat": ("concat_rule", RULE.format(version=version)),
                                                  "perfile": ("perfile_rule", PERFILE)})
        return {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return install


FORGEFILE = """
[concat.all]
sources = ["a.txt", "b.txt"]
"""


def test_plugin_rule_builds_in_a_child_process(project, plugin_env):
    env = plugin_env()
    project.write("a.txt", "a\n")
    project.write("b.txt", "b\n")
    project.forgefile(FORGEFILE)
    events = project.events(env=env)
    built = [e for e in events if e["event"] == "built"]
    assert built[0]["metrics"] == {"characters": 4}
    assert project.events("show", "concat:all", env=env)[0]["metrics"] == {"characters": 4}
    assert project.read(".forge/out/concat/all/all.txt") == "a\nb\n"
    assert project.read(".forge/logs/concat/all.log").endswith("concatenated\n")
    schema = project.run("schema", env=env).stdout
    assert '"concat"' in schema and '"sources"' in schema


def test_plugin_version_and_runtime_fields(project, plugin_env):
    project.write("a.txt", "a\n")
    project.write("b.txt", "b\n")
    project.forgefile(FORGEFILE)
    project.run(env=plugin_env("1"))
    project.forgefile(FORGEFILE + "threads = 8\n")
    assert "fresh" in project.run("status", env=plugin_env("1")).stdout
    out = project.run("explain", "concat:all", env=plugin_env("2")).stdout
    assert out == "concat:all: stale\n  - rule concat version 1 -> 2\n"
    project.forgefile(FORGEFILE + "upper = true\n")
    assert "param upper false -> true" in project.run("explain", "all", env=plugin_env("1")).stdout


@pytest.mark.parametrize("crash, message, code", [
    ("raise", "FAILED  concat:all: build raised ValueError: bad data in row 3", 1),
    ("fail", "FAILED  concat:all: refusing: upper and lower disagree", 1),
    ("exit", "FAILED  concat:all: build process exited with code 4", 1),
    ("row", "FAILED  concat:all: a.txt:3: field 'text' is missing", 2),  # bad input data: exit 2
])
def test_plugin_failures_are_reported_without_traceback_on_the_console(project, plugin_env, crash, message, code):
    project.write("a.txt", "a\n")
    project.write("b.txt", "b\n")
    project.forgefile(FORGEFILE + f'crash = "{crash}"\n')
    proc = project.run(env=plugin_env(), expect=code)
    assert message in proc.stdout
    assert not os.path.lexists(os.path.join(project.root, ".forge/out/concat/all"))
    if crash == "raise":  # the rule's own bug: its traceback is in the log for the author
        assert "Traceback" in project.read(".forge/logs/concat/all.log")


def test_broken_plugin_is_a_clear_error(project, tmp_path_factory):
    site = tmp_path_factory.mktemp("broken")
    install_rule_plugin(site, "broken-rule",
                        {"broken": ("broken_rule", "raise ImportError('needs a library that is not installed')\n")})
    project.forgefile('[run.a]\ncmd = "true"\n')
    proc = project.run(env={"PYTHONPATH": str(site)}, expect=2)
    assert proc.stderr == ("forgebuild: rule plugin 'broken' (broken_rule) failed to load: "
                           "needs a library that is not installed\n")


def test_memo_steps_process_only_new_files(project, plugin_env):
    env = plugin_env()
    for name in ("a", "b", "c"):
        project.write(f"docs/{name}.txt", name)
    project.forgefile('[perfile.up]\nsources = "docs/*.txt"\n')
    project.run(env=env)
    assert project.read("memo-runs.txt").split() == ["docs/a.txt", "docs/b.txt", "docs/c.txt"]
    os.unlink(os.path.join(project.root, "memo-runs.txt"))
    project.write("docs/d.txt", "d")
    assert project.build(env=env) == {"perfile:up": "built"}
    assert project.read("memo-runs.txt").split() == ["docs/d.txt"]
    assert project.read(".forge/out/perfile/up/d.txt") == "D"
    assert project.read(".forge/out/perfile/up/a.txt") == "A"


def test_gc_keeps_the_memo_steps_of_current_builds(project, plugin_env):
    env = plugin_env()
    for name in ("a", "b"):
        project.write(f"docs/{name}.txt", name)
    project.forgefile('[perfile.up]\nsources = "docs/*.txt"\n')
    project.run(env=env)
    project.run("gc", "--grace", "0", env=env)
    project.run("clean", env=env)
    os.unlink(os.path.join(project.root, "memo-runs.txt"))
    project.write("docs/c.txt", "c")
    project.run(env=env)
    assert project.read("memo-runs.txt").split() == ["docs/c.txt"]


VERDICT_RULE = '''
from pydantic import BaseModel, ConfigDict

version = "1"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: float


def inputs(params):
    return {}


def build(ctx):
    open(ctx.out + "/report.txt", "w").write(f"score {ctx.params.score}\\n")
    open(ctx.project_dir + "/runs.txt", "a").write("judged\\n")
    if ctx.params.score < 0.5:
        ctx.verdict(f"gate score >= 0.5 failed: measured {ctx.params.score}")
'''


def test_a_verdict_keeps_the_artifact_and_fails_every_time_without_rebuilding(project, tmp_path_factory):
    site = tmp_path_factory.mktemp("judge")
    install_rule_plugin(site, "judge-rule", {"judge": ("judge_rule", VERDICT_RULE)})
    env = {"PYTHONPATH": str(site)}
    project.forgefile('[judge.j]\nscore = 0.25\n[run.after]\ncmd = "echo x > {out}/x"\ninputs = { j = "judge:j" }\n')
    for attempt in range(2):
        proc = project.run("run:after", expect=1, env=env)
        assert "judge:j: gate score >= 0.5 failed: measured 0.25" in proc.stdout
        assert "run:after" in proc.stdout and "skipped" in proc.stdout
    assert project.runs() == ["judged"]  # judged once: the second build reports the kept verdict
    assert project.read(".forge/out/judge/j/report.txt") == "score 0.25\n"
    assert "failed: gate score >= 0.5 failed" in project.run("status", env=env).stdout
    project.forgefile('[judge.j]\nscore = 0.75\n[run.after]\ncmd = "echo x > {out}/x"\ninputs = { j = "judge:j" }\n')
    assert project.build("run:after", env=env) == {"judge:j": "built", "run:after": "built"}
