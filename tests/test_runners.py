"""Stages on a Ray cluster (a local one, started by `ray.init`) and as Slurm jobs (submitit's local
executor here): the same builds, in parallel, failures reported as local ones; and Ray workers that
share no folder with the workspace (--worker-files remote), meeting it through a file:// remote."""
from __future__ import annotations

import glob
import json
import os

import pytest
from conftest import Project

PARALLEL = """
[run.p]
cmd = "date +%s.%N > {out}/start; sleep 2; date +%s.%N > {out}/end"

[run.q]
cmd = "date +%s.%N > {out}/start; sleep 2; date +%s.%N > {out}/end"
resources = { cpus = 1, memory_gb = 0.5 }
"""

FAILING = """
[run.cell]
cmd = "echo {params.n} > {out}/n"
params = { n = 0 }
matrix = { "params.n" = [1, 2] }

[run.bad]
cmd = "echo oops; exit 3"

[run.after]
cmd = "true"
inputs = { b = "run:bad" }
"""


@pytest.mark.parametrize("executor,runner", [("ray", "# runner: ray task (1 CPUs, 0 GPUs"),
                                             ("slurm", "# runner: local job (1 CPUs, 0 GPUs")])
def test_independent_targets_run_in_parallel_and_failures_read_as_local(project, executor, runner):
    pytest.importorskip({"ray": "ray", "slurm": "submitit"}[executor])
    project.forgefile(PARALLEL + FAILING)
    actions = project.build("--executor", executor, "-j", "2", "-k", "run:p", "run:q", "run:after", expect=1)
    assert actions == {"run:p": "built", "run:q": "built", "run:bad": "failed", "run:after": "skipped"}
    spans = [tuple(float(project.read(f".forge/out/run/{t}/{e}")) for e in ("start", "end")) for t in "pq"]
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # the two ran at the same time
    assert project.read(".forge/logs/run/p.log").splitlines()[1] == runner + ")"
    assert project.read(".forge/logs/run/q.log").splitlines()[1] == runner + ", 0.5 GB)"  # its `resources`
    failed = project.run("--executor", executor, "-k", "run:after", "run:cell", expect=1)
    assert "FAILED  run:bad: command exited with code 3" in failed.stdout and "  | oops" in failed.stdout
    for n in (1, 2):  # a matrix's cells are tasks like any target
        assert project.read(f".forge/logs/run/cell[n={n}].log").splitlines()[1] == runner + ")"
        assert project.read(f".forge/out/run/cell[n={n}]/n") == f"{n}\n"
    assert "missing run:bad" in project.run("status").stdout  # nothing cached for the failure


def test_resources_are_declared_or_derived():
    from forgebuild.planning.plan import TargetPlan
    from forgebuild.engine.backends import ray_options, resources

    def target(runtime, declared=None):
        return TargetPlan("model:m", "model", "1", 1, runtime, list(runtime), [], resources=declared or {})

    assert resources(target({"threads": 4})) == {"cpus": 4, "gpus": 0}
    assert resources(target({"threads": 2, "launch": {"processes": 3}})) == {"cpus": 6, "gpus": 0}
    assert resources(target({"device": "cuda", "launch": {"processes": 8}})) == {"cpus": 1, "gpus": 8}
    declared = resources(target({"device": "cuda"}, {"cpus": 16, "memory_gb": 64}))
    assert declared == {"cpus": 16, "gpus": 1, "memory_gb": 64}
    assert ray_options(declared) == {"num_cpus": 16, "num_gpus": 1, "memory": 64_000_000_000}


# ------------------------------------------------------------------ --worker-files remote: no shared filesystem

TWO_STAGES = """
[run.a]
cmd = "echo building a on a worker; pwd > {out}/where.txt; echo 'from a' > {out}/a.txt"

[run.b]
cmd = "echo building b; cat {in.a}/a.txt > {out}/b.txt; echo 'and b' >> {out}/b.txt"
inputs = { a = "run:a" }
"""


def remote_entries(folder) -> dict[str, str]:
    """{target: key} of the action-cache entries in a file:// remote."""
    found = {}
    for path in glob.glob(f"{folder}/ac/*/*.json"):
        with open(path) as f:
            entry = json.load(f)
        found[entry["target"]] = entry["key"]
    return found


def test_remote_worker_files_build_in_a_copy_and_meet_through_the_remote(tmp_path):
    pytest.importorskip("ray")
    project = Project(str(tmp_path / "ws"))
    project.forgefile(TWO_STAGES)
    shared = tmp_path / "team-cache"
    flags = ["--executor", "ray", "--worker-files", "remote", "--remote", f"file://{shared}"]
    events = project.events(*flags)
    built = {e["target"]: e for e in events if e["event"] == "built"}
    assert list(built) == ["run:a", "run:b"] and events[-1]["ok"]
    assert all(e["worker"]["executor"] == "ray" and e["worker"]["remote"] == f"file://{shared}" for e in built.values())
    assert project.read(".forge/out/run/b/b.txt") == "from a\nand b\n"
    where = project.read(".forge/out/run/a/where.txt").strip()
    assert not os.path.realpath(where).startswith(os.path.realpath(project.root))  # the worker's own copy
    assert remote_entries(shared) == {a: e["key"] for a, e in built.items()}  # the worker pushed both
    # each worker signed with a fresh key of its own, trusted by this workspace for the entry it asked for;
    # the workspace then signed them again with its key, the one other workspaces trust
    head = project.run("keys", "-q").stdout.strip()
    assert {json.load(open(p))["signature"]["key"] for p in glob.glob(f"{shared}/ac/*/*.json")} == {head}
    log = project.read(".forge/logs/run/a.log").splitlines()
    assert log[0].startswith(f"# forgebuild run:a key {built['run:a']['key']} ")
    assert log[1].startswith("# runner: ray task (1 CPUs, 0 GPUs), in its own copy of the project")
    assert "building a on a worker" in log  # the worker's log, in this workspace's stage log
    record = json.loads(project.run("show", "run:b", "--json").stdout.splitlines()[0])
    assert record["worker"]["executor"] == "ray" and record["key"] == built["run:b"]["key"]
    assert [e["event"] for e in project.events(*flags)] == ["summary"]  # a second build is a no-op


def test_a_failure_on_a_remote_worker_reads_like_a_local_one(tmp_path):
    pytest.importorskip("ray")
    here, there = Project(str(tmp_path / "local")), Project(str(tmp_path / "ray"))
    for p in (here, there):
        p.forgefile(FAILING)
    shared = tmp_path / "team-cache"
    local = here.run(expect=1).stdout.splitlines()
    proc = there.run("--executor", "ray", "--worker-files", "remote", "--remote", f"file://{shared}", expect=1)
    remote = [line for line in proc.stdout.splitlines() if not line.startswith("  | # runner: ray task")]

    def failure(lines):  # the FAILED line, the log tail, what was skipped; not the log's path or the timing
        return [line for line in lines if line.startswith(("FAILED  ", "  | ", "skipped "))]

    assert failure(remote) == failure(local)
    assert "FAILED  run:bad: command exited with code 3" in remote and "  | oops" in remote
    assert "skipped run:after  (dependency run:bad failed)" in remote
    assert "missing run:bad" in there.run("status").stdout  # nothing cached here
    assert remote_entries(shared) == {}  # nor on the remote


def test_remote_worker_files_usage_errors(project):
    project.forgefile(TWO_STAGES)
    proc = project.run("--executor", "ray", "--worker-files", "remote", expect=2)
    assert proc.stderr == ("forgebuild: --worker-files remote needs a remote cache (--remote, FORGE_REMOTE or "
                           "[forge] remote): workers and this workspace exchange artifacts through it\n")
    proc = project.run("--executor", "slurm", "--worker-files", "remote", "--remote", "file:///nowhere", expect=2)
    assert proc.stderr == ("forgebuild: --worker-files remote works with --executor ray only: submitit passes each "
                           "job and its result through a folder shared with the jobs, so Slurm jobs read the project "
                           "through the shared filesystem (--worker-files shared)\n")
    proc = project.run("--executor", "ray", "--worker-files", "remote", "--remote", "file:///nowhere", "--no-push",
                       expect=2)
    assert proc.stderr == ("forgebuild: --worker-files remote writes to the remote cache (dependencies out, "
                           "artifacts back): drop --no-push or [forge] push = false\n")
    project.forgefile('[forge]\nworker_files = "remote"\n' + TWO_STAGES)  # the setting, as the flag
    assert "needs a remote cache" in project.run("--executor", "ray", expect=2).stderr
    assert project.build() == {"run:a": "built", "run:b": "built"}  # a local build ignores it
    assert "needs a remote cache" in project.run("--executor", "ray", expect=2).stderr  # even with nothing to do
    project.forgefile('[forge]\nworker_files = "nfs"\n' + TWO_STAGES)
    assert "key 'worker_files': expected one of shared, remote" in project.run(expect=2).stderr
