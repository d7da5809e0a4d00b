"""Stages on a Ray cluster (a local one, started by `ray.init`) and as Slurm jobs (submitit's local
executor here): the same builds, in parallel, failures reported as local ones."""
from __future__ import annotations

import pytest

PARALLEL = """
[run.p]
cmd = "date +%s.%N > {out}/start; sleep 2; date +%s.%N > {out}/end"

[run.q]
cmd = "date +%s.%N > {out}/start; sleep 2; date +%s.%N > {out}/end"

[run.bad]
cmd = "echo oops; exit 3"

[run.after]
cmd = "true"
inputs = { b = "run:bad" }
"""


@pytest.mark.parametrize("executor,runner", [("ray", "# runner: ray task (1 CPUs, 0 GPUs)"),
                                             ("slurm", "# runner: local job (1 CPUs, 0 GPUs)")])
def test_independent_targets_run_in_parallel_and_failures_read_as_local(project, executor, runner):
    pytest.importorskip({"ray": "ray", "slurm": "submitit"}[executor])
    project.forgefile(PARALLEL)
    actions = project.build("--executor", executor, "-j", "2", "-k", "run:p", "run:q", "run:after", expect=1)
    assert actions == {"run:p": "built", "run:q": "built", "run:bad": "failed", "run:after": "skipped"}
    spans = [tuple(float(project.read(f".forge/out/run/{t}/{e}")) for e in ("start", "end")) for t in "pq"]
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # the two ran at the same time
    assert project.read(".forge/logs/run/p.log").splitlines()[1] == runner
    failed = project.run("--executor", executor, "run:after", expect=1)
    assert "FAILED  run:bad: command exited with code 3" in failed.stdout and "  | oops" in failed.stdout
    assert "missing run:bad" in project.run("status").stdout  # nothing cached for the failure
