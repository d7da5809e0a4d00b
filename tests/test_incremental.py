"""Make/Bazel-grade incremental semantics on a real pipeline of `run` targets, in real processes."""
from __future__ import annotations

import os
import shutil
import time

import pytest

PIPELINE = """
[run.prepare]
cmd = "echo prepare >> runs.txt && python3 scripts/prep.py {in.raw} {out}/corpus.txt {params.repeat}"
inputs = { raw = "data/raw.txt", script = "scripts/prep.py" }
params = { repeat = 1 }

[run.count]
cmd = "echo count >> runs.txt && wc -w < {in.corpus}/corpus.txt | tr -d ' ' > {out}/count.txt"
inputs = { corpus = "run:prepare" }

[run.other]
cmd = "echo other >> runs.txt && cp {in.src} {out}/copy.txt"
inputs = { src = "data/other.txt" }
"""

PREP = """
import sys
raw, out, repeat = sys.argv[1:]
# lower-casing makes early cutoff observable: a case-only edit of raw.txt gives the same output
open(out, "w").write(open(raw).read().lower() * int(repeat))
"""


@pytest.fixture
def pipeline(project):
    project.write("data/raw.txt", "The quick brown fox\n")
    project.write("data/other.txt", "other\n")
    project.write("scripts/prep.py", PREP)
    project.forgefile(PIPELINE)
    assert project.build() == {"run:prepare": "built", "run:count": "built", "run:other": "built"}
    assert sorted(project.runs()) == ["count", "other", "prepare"]
    return project


def test_noop_rebuilds_nothing(pipeline):
    assert set(pipeline.build().values()) == {"cached"}
    assert pipeline.runs() == []


def test_param_edit_rebuilds_target_and_dependents_only(pipeline):
    pipeline.forgefile(PIPELINE.replace("repeat = 1", "repeat = 2"))
    status = {e["target"]: e for e in pipeline.events("status")[:-1]}
    assert status["run:prepare"]["state"] == "stale"
    assert status["run:prepare"]["reason"] == "param params.repeat 1 -> 2"
    assert status["run:count"]["reason"] == "dependency run:prepare is stale"
    assert status["run:other"]["state"] == "fresh"
    assert pipeline.build() == {"run:prepare": "built", "run:count": "built", "run:other": "cached"}
    assert pipeline.runs() == ["prepare", "count"]
    assert pipeline.read(".forge/out/run/count/count.txt").strip() == "8"


def test_revert_is_a_cache_hit(pipeline):
    pipeline.forgefile(PIPELINE.replace("repeat = 1", "repeat = 2"))
    pipeline.build()
    pipeline.runs()
    pipeline.forgefile(PIPELINE)
    assert set(pipeline.build().values()) == {"cached"}
    assert pipeline.runs() == []
    assert pipeline.read(".forge/out/run/count/count.txt").strip() == "4"


def test_source_edit_rebuilds_only_its_readers(pipeline):
    pipeline.write("data/other.txt", "changed\n")
    assert pipeline.run("explain", "run:other").stdout == "run:other: stale\n  - input data/other.txt changed\n"
    assert pipeline.build() == {"run:prepare": "cached", "run:count": "cached", "run:other": "built"}
    assert pipeline.runs() == ["other"]


def test_script_edit_is_an_input_change(pipeline):
    pipeline.write("scripts/prep.py", PREP + "\n# a comment\n")
    assert pipeline.build() == {"run:prepare": "built", "run:count": "cached", "run:other": "cached"}


def test_touch_without_change_rebuilds_nothing(pipeline):
    later = time.time() + 10
    for rel in ("data/raw.txt", "data/other.txt", "scripts/prep.py"):
        os.utime(os.path.join(pipeline.root, rel), (later, later))
    assert set(pipeline.build().values()) == {"cached"}
    assert pipeline.runs() == []


def test_early_cutoff_stops_the_cascade(pipeline):
    pipeline.write("data/raw.txt", "THE QUICK BROWN FOX\n")  # same after lower-casing
    assert pipeline.build() == {"run:prepare": "built", "run:count": "cached", "run:other": "cached"}
    assert pipeline.runs() == ["prepare"]


def test_force_rebuilds_the_closure(pipeline):
    assert pipeline.build("-B", "run:count") == {"run:prepare": "built", "run:count": "built"}
    assert pipeline.runs() == ["prepare", "count"]


def test_explain_names_each_reason(pipeline):
    pipeline.forgefile(PIPELINE.replace("repeat = 1", "repeat = 3"))
    pipeline.write("data/raw.txt", "A new text\n")
    out = pipeline.run("explain", "count").stdout
    assert out == (
        "run:count: stale\n"
        "  - dependency run:prepare is stale\n"
        "run:prepare: stale\n"
        "  - param params.repeat 1 -> 3\n"
        "  - input data/raw.txt changed\n"
    )
    pipeline.build()
    assert pipeline.run("explain", "run:count").stdout == "run:count: fresh\n  - up to date\n"


def test_never_built_and_dependency_reasons(project):
    project.write("data/raw.txt", "x\n")
    project.write("scripts/prep.py", PREP)
    project.write("data/other.txt", "o\n")
    project.forgefile(PIPELINE)
    status = {e["target"]: (e["state"], e["reason"]) for e in project.events("status")[:-1]}
    assert status == {
        "run:prepare": ("missing", "never built"),
        "run:count": ("missing", "never built; dependency run:prepare is missing"),
        "run:other": ("missing", "never built"),
    }


def test_dry_run_builds_nothing(pipeline):
    pipeline.write("data/other.txt", "changed\n")
    proc = pipeline.run("-n")
    assert "would build run:other  (input data/other.txt changed)" in proc.stdout
    assert pipeline.runs() == []
    assert pipeline.build() == {"run:prepare": "cached", "run:count": "cached", "run:other": "built"}


def test_runtime_only_params_do_not_change_the_key(pipeline):
    text = PIPELINE.replace('params = { repeat = 1 }', 'params = { repeat = 1 }\ndescription = "x"\ntimeout = 60')
    pipeline.forgefile(text)
    assert set(pipeline.build().values()) == {"cached"}


def test_artifacts_are_read_only_and_stable(pipeline):
    path = pipeline.run("path", "run:count").stdout.strip()
    assert path == os.path.join(pipeline.root, ".forge", "out", "run", "count")
    target = os.path.join(path, "count.txt")
    assert not os.access(target, os.W_OK) or os.geteuid() == 0
    assert not (os.stat(target).st_mode & 0o222)


def test_keys_hold_no_machine_specific_path(pipeline, tmp_path_factory):
    keys = {e["target"]: e["key"] for e in pipeline.events("status")[-1]["targets"]}
    moved = str(tmp_path_factory.mktemp("elsewhere") / "project")
    shutil.copytree(pipeline.root, moved, symlinks=True)
    from conftest import Project

    there = Project(moved)
    status = there.events("status")[-1]["targets"]
    assert {e["target"]: e["key"] for e in status} == keys
    assert {e["state"] for e in status} == {"fresh"}


def test_project_seed_changes_every_key(pipeline):
    pipeline.forgefile("[forge]\nseed = 7\n" + PIPELINE)
    assert set(pipeline.build().values()) == {"built"}


def test_keep_going_continues_independent_branches(project):
    project.forgefile("""
        [run.bad]
        cmd = "echo broken >&2; exit 3"

        [run.after_bad]
        cmd = "true"
        inputs = { x = "run:bad" }

        [run.good]
        cmd = "echo good >> runs.txt"
    """)
    stopped = project.build("-j", "1", expect=1)
    assert stopped["run:bad"] == "failed"
    assert stopped["run:after_bad"] == "skipped"
    assert stopped["run:good"] == "skipped"  # without -k no new build starts after a failure
    going = project.build("-k", expect=1)
    assert going == {"run:bad": "failed", "run:after_bad": "skipped", "run:good": "built"}
    failed = project.run("run:bad", expect=1)
    assert "FAILED  run:bad: command exited with code 3" in failed.stdout
    assert "  | broken" in failed.stdout


def test_parallel_jobs_overlap(project):
    for name in ("a", "b"):
        project.write(f"{name}.sh", f"echo start {name} $(date +%s.%N) >> times.txt; sleep 1; "
                                     f"echo end {name} $(date +%s.%N) >> times.txt\n")
    project.forgefile("""
        [run.a]
        cmd = "sh a.sh"
        [run.b]
        cmd = "sh b.sh"
    """)
    assert project.build("-j", "2") == {"run:a": "built", "run:b": "built"}
    times = {}
    for line in project.read("times.txt").splitlines():
        what, name, at = line.split()
        times[what, name] = float(at)
    assert times["start", "b"] < times["end", "a"] and times["start", "a"] < times["end", "b"]


def test_explain_shows_own_changes_behind_a_stale_dependency(pipeline):
    text = PIPELINE.replace("repeat = 1", "repeat = 2").replace("wc -w <", "wc -c <")
    pipeline.forgefile(text)
    assert pipeline.run("explain", "run:count").stdout == (
        "run:count: stale\n"
        "  - dependency run:prepare is stale\n"
        '  - param cmd "echo count >> runs.txt && wc -w < {in.corpus}/corpus.txt | tr -d \' \' > {out}/count.txt"'
        ' -> "echo count >> runs.txt && wc -c < {in.corpus}/corpus.txt | tr -d \' \' > {out}/count.txt"\n'
        "run:prepare: stale\n"
        "  - param params.repeat 1 -> 2\n"
    )


def test_declared_environment_is_part_of_the_key(project):
    project.forgefile("""
        [run.flagged]
        cmd = "echo $FORGE_TEST_FLAG > {out}/flag"
        pass_env = ["FORGE_TEST_FLAG"]
    """)
    assert project.build(env={"FORGE_TEST_FLAG": "a"}) == {"run:flagged": "built"}
    assert project.build(env={"FORGE_TEST_FLAG": "a", "UNRELATED": "x"}) == {"run:flagged": "cached"}
    out = project.run("explain", "run:flagged", env={"FORGE_TEST_FLAG": "b"}).stdout
    assert out == 'run:flagged: stale\n  - environment FORGE_TEST_FLAG "a" -> "b"\n'
    assert project.build(env={"FORGE_TEST_FLAG": "b"}) == {"run:flagged": "built"}
    assert project.read(".forge/out/run/flagged/flag") == "b\n"


def test_revert_after_a_same_output_rebuild_keeps_gc_and_show_on_the_current_key(pipeline):
    pipeline.write("data/raw.txt", "THE QUICK BROWN FOX\n")  # new key, same output
    assert pipeline.build()["run:prepare"] == "built"
    pipeline.write("data/raw.txt", "The quick brown fox\n")  # back to the first key
    assert pipeline.build()["run:prepare"] == "cached"
    keys = {e["target"]: e["key"] for e in pipeline.events("status")[-1]["targets"]}
    record = pipeline.events("show", "run:prepare")[0]
    assert record["key"] == keys["run:prepare"]
    pipeline.run("gc", "--grace", "0")
    pipeline.runs()
    assert set(pipeline.build().values()) == {"cached"}
    assert pipeline.runs() == []


def test_argv_command_gets_one_argument_per_file(project):
    for name in ("a", "b", "c"):
        project.write(f"data/{name} file.txt", name)
    project.forgefile("""
        [run.count]
        cmd = ["python3", "-c", "import sys; open(sys.argv[1] + '/n', 'w').write(repr(sys.argv[2:]))", "{out}", "{in.files}"]
        inputs = { files = "data/*.txt" }
    """)
    project.run()
    assert project.read(".forge/out/run/count/n") == "['data/a file.txt', 'data/b file.txt', 'data/c file.txt']"
