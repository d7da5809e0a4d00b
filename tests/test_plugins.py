"""A third-party rule registers through the `forgebuild.rules` entry point and builds in a child process."""
from __future__ import annotations

import os
import textwrap

import pytest

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
    text = "".join(open(p).read() for p in ctx.inputs["sources"])
    with open(os.path.join(ctx.out, "all.txt"), "w") as f:
        f.write(text.upper() if ctx.params.upper else text)
    with open(os.path.join(ctx.out, "pid"), "w") as f:
        f.write(str(os.getpid()))
    ctx.log("concatenated")
'''


@pytest.fixture
def plugin_env(tmp_path_factory):
    def install(version="1"):
        site = tmp_path_factory.mktemp("site")
        (site / "concat_rule.py").write_text(RULE.format(version=version))
        dist = site / "concat_rule-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: concat-rule\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[forgebuild.rules]\nconcat = concat_rule\n")
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
    proc = project.run("--json", env=env)
    assert '"action": "built"' in proc.stdout
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


@pytest.mark.parametrize("crash, message", [
    ("raise", "FAILED  concat:all: build raised ValueError: bad data in row 3"),
    ("fail", "FAILED  concat:all: refusing: upper and lower disagree"),
    ("exit", "FAILED  concat:all: build process exited with code 4"),
])
def test_plugin_failures_are_reported_without_traceback_on_the_console(project, plugin_env, crash, message):
    project.write("a.txt", "a\n")
    project.write("b.txt", "b\n")
    project.forgefile(FORGEFILE + f'crash = "{crash}"\n')
    proc = project.run(env=plugin_env(), expect=1)
    assert message in proc.stdout
    assert not os.path.lexists(os.path.join(project.root, ".forge/out/concat/all"))
    if crash == "raise":  # the rule's own bug: its traceback is in the log for the author
        assert "Traceback" in project.read(".forge/logs/concat/all.log")


def test_broken_plugin_is_a_clear_error(project, tmp_path_factory):
    site = tmp_path_factory.mktemp("broken")
    (site / "broken_rule.py").write_text("raise ImportError('needs a library that is not installed')\n")
    dist = site / "broken_rule-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-rule\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[forgebuild.rules]\nbroken = broken_rule\n")
    project.forgefile('[run.a]\ncmd = "true"\n')
    proc = project.run(env={"PYTHONPATH": str(site)}, expect=2)
    assert proc.stderr == ("forgebuild: rule plugin 'broken' (broken_rule) failed to load: "
                           "needs a library that is not installed\n")
