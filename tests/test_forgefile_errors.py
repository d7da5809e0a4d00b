"""Forgefile errors as the user reads them: exact text, through the real CLI, in a real process.

Every case writes a small project into a fresh tmp_path, runs
``python -m forgebuild -f Forgefile.toml ...`` there and checks the exit code
(2 for a bad Forgefile or bad usage, 1 for a failed build), the exact lines on
stderr, and that no traceback appears anywhere.

Every problem starts ``FILE:LINE: error: `` (``FILE: error: `` when no line is
known), the form compilers use and editors parse.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# The raw input and the script of the run rule's documented example.
DATA = {
    "data/raw.bin": "alpha beta gamma\n",
    "scripts/prepare.py": """\
        import argparse
        p = argparse.ArgumentParser()
        p.add_argument("--raw"); p.add_argument("--out"); p.add_argument("--seed", type=int)
        a = p.parse_args()
        with open(a.raw) as src, open(a.out, "w") as dst:
            dst.write(src.read().upper() + f"seed={a.seed}\\n")
    """,
}

VALID = """\
    [run.prepare]
    cmd = "python3 scripts/prepare.py --raw {in.raw} --out {out}/corpus.txt --seed {params.seed}"
    inputs = { raw = "data/raw.bin", script = "scripts/prepare.py" }
    params = { seed = 1 }
"""


def forge(tmp_path, forgefile: str | None, *args: str, files: dict | None = None,
          forgefile_path: str = "Forgefile.toml") -> subprocess.CompletedProcess:
    """Write the Forgefile (dedented) and the data files, run the CLI in tmp_path, forbid tracebacks."""
    for rel, text in {**DATA, **(files or {})}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    if forgefile is not None:
        path = tmp_path / forgefile_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(forgefile), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "forgebuild", "-f", forgefile_path, *args], cwd=tmp_path,
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def check_errors(proc: subprocess.CompletedProcess, expected: str, code: int = 2) -> None:
    """Exit code `code`, nothing on stdout, and stderr exactly the expected lines."""
    want = textwrap.dedent(expected).strip("\n").splitlines()
    got = proc.stderr.splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout == "", proc.stdout
    assert got == want, proc.stderr


# ------------------------------------------------------------------ the fixture itself is sound

def test_valid_forgefile_builds(tmp_path):
    proc = forge(tmp_path, VALID)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == "build   run:prepare  (never built)"
    assert re.fullmatch(r"built   run:prepare  \d+\.\d\ds", lines[1]), lines
    assert re.fullmatch(r"ok: 1 built \(\d+\.\d\ds\)", lines[2]), lines
    assert len(lines) == 3
    corpus = tmp_path / ".forge/out/run/prepare/corpus.txt"
    assert corpus.read_text() == "ALPHA BETA GAMMA\nseed=1\n"


# ------------------------------------------------------------------ schema: keys and types

def test_unknown_key_suggests_the_nearest_valid_key(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "python3 scripts/prepare.py --raw {in.raw} --out {out}/corpus.txt --seed {params.seed}"
        inputs = { raw = "data/raw.bin" }
        parms = { seed = 1 }
    """)
    check_errors(proc, """
        Forgefile.toml:4: error: run:prepare: key 'parms': unknown key (did you mean 'params'?)
    """)


def test_unknown_dotted_key_points_at_its_own_line(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        parms.seed = 1
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'parms': unknown key (did you mean 'params'?)
    """)


def test_wrong_type_names_expected_and_given(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "python3 scripts/prepare.py --raw {in.raw} --out {out}/corpus.txt"
        inputs = { raw = "data/raw.bin" }
        timeout = "soon"
        outputs = "corpus.txt"
    """)
    check_errors(proc, """
        Forgefile.toml:4: error: run:prepare: key 'timeout': expected a number, got string "soon"
        Forgefile.toml:5: error: run:prepare: key 'outputs': expected an array, got string "corpus.txt"
    """)


def test_wrong_type_inside_a_table_names_the_inner_key(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        inputs = { raw = 3 }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'inputs.raw': expected a string or an array, got integer 3
    """)


def test_resources_of_any_target_are_checked(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        resources = { cpu = 2, memory_gb = -1 }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'resources.cpu': unknown key (did you mean 'cpus'?)
        Forgefile.toml:3: error: run:prepare: key 'resources.memory_gb': expected a number > 0, got integer -1
    """)


def test_wrong_type_of_a_param_value_reads_clearly(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        params = { seed = [1, 2] }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'params.seed': expected a string, a number, true or false, got array
    """)


def test_out_of_range_value_says_what_is_allowed_and_what_was_given(tmp_path):
    proc = forge(tmp_path, """\
        [forge]
        jobs = 0

        [run.prepare]
        cmd = "true"
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: [forge]: key 'jobs': expected an integer >= 1, got integer 0
    """)


def test_missing_required_key_cmd(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        inputs = { raw = "data/raw.bin" }
    """)
    check_errors(proc, """
        Forgefile.toml:1: error: run:prepare: key 'cmd': missing required key
    """)


def test_unknown_target_kind_suggests_the_nearest_kind(tmp_path):
    proc = forge(tmp_path, """\
        [runn.prepare]
        cmd = "true"
    """)
    check_errors(proc, """
        Forgefile.toml:1: error: unknown target kind 'runn' (did you mean 'run'?); known kinds: corpus, curate, dataset, eval, generate, images, model, release, run, search, tokenizer, tokens
    """)


def test_unknown_key_in_forge_table(tmp_path):
    proc = forge(tmp_path, """\
        [forge]
        seed = 3
        defaults = ["run:prepare"]

        [run.prepare]
        cmd = "true"
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: [forge]: key 'defaults': unknown key (did you mean 'default'?)
    """)


def test_forge_default_names_a_missing_target(tmp_path):
    proc = forge(tmp_path, """\
        [forge]
        default = ["run:prepar"]

        [run.prepare]
        cmd = "true"
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: [forge]: key 'default': no target 'run:prepar' (did you mean 'run:prepare'?)
    """)


def test_unknown_placeholders_in_cmd(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "python3 scripts/prepare.py --raw {in.rw} --out {out}/corpus.txt --seed {params.sed}"
        inputs = { raw = "data/raw.bin" }
        params = { seed = 1 }
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: run:prepare: key 'cmd': {in.rw} names no input (did you mean 'raw'?)
        Forgefile.toml:2: error: run:prepare: key 'cmd': {params.sed} names no param (did you mean 'seed'?)
    """)


# ------------------------------------------------------------------ references and cycles

def test_reference_to_a_missing_target(tmp_path):
    proc = forge(tmp_path, VALID + """
        [run.train]
        cmd = "wc -c {in.corpus}/corpus.txt > {out}/size.txt"
        inputs = { corpus = "run:prepar" }
    """)
    check_errors(proc, """
        Forgefile.toml:8: error: run:train: key 'inputs.corpus': no target 'run:prepar' (did you mean 'run:prepare'?)
    """)


def test_cycle_is_printed(tmp_path):
    proc = forge(tmp_path, """\
        [run.a]
        cmd = "true"
        inputs = { b = "run:b" }

        [run.b]
        cmd = "true"
        inputs = { c = "run:c" }

        [run.c]
        cmd = "true"
        inputs = { a = "run:a" }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:a: key 'inputs.b': dependency cycle: run:a -> run:b -> run:c -> run:a
    """)


def test_target_depending_on_itself(tmp_path):
    proc = forge(tmp_path, """\
        [run.a]
        cmd = "true"
        inputs = { me = "run:a" }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:a: key 'inputs.me': a target cannot depend on itself
    """)


def test_invalid_target_causes_no_false_missing_reference(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        parms = 1

        [run.train]
        cmd = "true"
        inputs = { corpus = "run:prepare" }

        [forge]
        default = ["run:prepare"]
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'parms': unknown key (did you mean 'params'?)
    """)


# ------------------------------------------------------------------ TOML syntax

def test_bad_toml_syntax(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        inputs = { raw = "data/raw.bin"
        params = { seed = 1 }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: invalid TOML: Unclosed inline table (column 32)
    """)


def test_duplicate_target_table(tmp_path):
    proc = forge(tmp_path, """\
        [run.train]
        cmd = "true"

        [run.train]
        cmd = "false"
    """)
    check_errors(proc, """
        Forgefile.toml:4: error: invalid TOML: target [run.train] is declared twice (first at line 1)
    """)


# ------------------------------------------------------------------ paths and globs

def test_paths_outside_the_project(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        inputs = { raw = "../secret.bin", abs = "/etc/passwd" }

        [run.glob]
        cmd = "true"
        inputs = { shards = "data/../../*.bin" }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'inputs.abs': path '/etc/passwd' is outside the project folder
        Forgefile.toml:3: error: run:prepare: key 'inputs.raw': path '../secret.bin' is outside the project folder
        Forgefile.toml:7: error: run:glob: key 'inputs.shards': path 'data/../../*.bin' is outside the project folder
    """)


def test_missing_input_file(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        inputs = { raw = "data/raw.bn" }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'inputs.raw': no such file 'data/raw.bn' (did you mean 'data/raw.bin'?)
    """)


def test_glob_matching_nothing(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        inputs = { shards = "data/*.parquet" }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'inputs.shards': no file matches 'data/*.parquet'
    """)


def test_paths_and_globs_are_relative_to_the_forgefile(tmp_path):
    """Run from the parent folder: data/ next to the Forgefile is found, the missing file is named as written."""
    (tmp_path / "proj").mkdir()
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        inputs = { raw = "data/raw.bin", shards = "data/*.bin", extra = "data/extra.bin" }
    """, forgefile_path="proj/Forgefile.toml",
        files={"proj/data/raw.bin": "x\n"})
    check_errors(proc, """
        proj/Forgefile.toml:3: error: run:prepare: key 'inputs.extra': no such file 'data/extra.bin'
    """)


def test_problem_names_the_forgefile_path_as_given(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        parms = 1
    """, forgefile_path="proj/Forgefile.toml")
    check_errors(proc, """
        proj/Forgefile.toml:3: error: run:prepare: key 'parms': unknown key (did you mean 'params'?)
    """)


# ------------------------------------------------------------------ one pass

def test_several_problems_reported_together_sorted_by_line(tmp_path):
    proc = forge(tmp_path, """\
        [run.train]
        cmd = "python3 train.py --data {in.corpus} --lr {params.lr}"
        inputs = { corpus = "run:prepare" }
        params = { lr = 0.1 }
        epochs = 3

        [forge]
        defualt = ["run:train"]

        [run.prepare]
        cmd = "python3 scripts/prepare.py --raw {in.raw} --out {out}/corpus.txt"
        inputs = { raw = "data/raw.bin" }
        timeout = "1h"

        [tokenise.bpe]
        cmd = "true"
    """)
    check_errors(proc, """
        Forgefile.toml:5: error: run:train: key 'epochs': unknown key; valid keys: cmd, inputs, params, env, pass_env, outputs, description, timeout
        Forgefile.toml:8: error: [forge]: key 'defualt': unknown key (did you mean 'default'?)
        Forgefile.toml:13: error: run:prepare: key 'timeout': expected a number, got string "1h"
        Forgefile.toml:15: error: unknown target kind 'tokenise' (did you mean 'tokens'?); known kinds: corpus, curate, dataset, eval, generate, images, model, release, run, search, tokenizer, tokens
    """)


def test_one_pass_includes_missing_files(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "true"
        inputs = { raw = "data/missing.bin" }

        [run.train]
        cmd = "true"
        inputs = { corpus = "run:prepare" }
        epochs = 3
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:prepare: key 'inputs.raw': no such file 'data/missing.bin'
        Forgefile.toml:8: error: run:train: key 'epochs': unknown key; valid keys: cmd, inputs, params, env, pass_env, outputs, description, timeout
    """)


def test_one_pass_includes_cycles(tmp_path):
    proc = forge(tmp_path, """\
        [run.a]
        cmd = "true"
        inputs = { b = "run:b" }

        [run.b]
        cmd = "true"
        inputs = { a = "run:a" }

        [run.c]
        cmd = "true"
        epochs = 3
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:a: key 'inputs.b': dependency cycle: run:a -> run:b -> run:a
        Forgefile.toml:11: error: run:c: key 'epochs': unknown key; valid keys: cmd, inputs, params, env, pass_env, outputs, description, timeout
    """)


# ------------------------------------------------------------------ the command line

TWO_TARGETS = VALID + """
    [run.train]
    cmd = "wc -c {in.corpus}/corpus.txt > {out}/size.txt"
    inputs = { corpus = "run:prepare" }
"""


def test_unknown_target_on_the_command_line(tmp_path):
    proc = forge(tmp_path, TWO_TARGETS, "run:trian")
    check_errors(proc, """
        forgebuild: no target 'run:trian' in Forgefile.toml (did you mean 'run:train'?)
    """)


def test_unknown_target_run_nope(tmp_path):
    proc = forge(tmp_path, TWO_TARGETS, "run:nope")
    check_errors(proc, """
        forgebuild: no target 'run:nope' in Forgefile.toml
    """)


def test_unknown_bare_target_name(tmp_path):
    proc = forge(tmp_path, TWO_TARGETS, "trian")
    check_errors(proc, """
        forgebuild: no target 'trian' in Forgefile.toml (did you mean 'train'?)
    """)


def test_unknown_target_with_options_before_the_verb(tmp_path):
    proc = forge(tmp_path, TWO_TARGETS, "status", "trian")
    check_errors(proc, """
        forgebuild: no target 'trian' in Forgefile.toml (did you mean 'train'?)
    """)


def test_missing_forgefile(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "forgebuild"], cwd=tmp_path, capture_output=True, text=True,
                          env=ENV, timeout=60)
    assert "Traceback" not in proc.stderr + proc.stdout
    check_errors(proc, """
        forgebuild: no Forgefile at Forgefile.toml (use -f FILE to name another)
    """)


def test_missing_forgefile_named_with_f(tmp_path):
    proc = forge(tmp_path, None, forgefile_path="other.toml")
    check_errors(proc, """
        forgebuild: no Forgefile at other.toml
    """)


# ------------------------------------------------------------------ a failing command

def test_failing_command_exits_1_with_failed_line_and_log_tail(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "echo reading shards; echo 'oops: bad shard 7' >&2; exit 3"
    """)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    log = os.path.join(os.path.realpath(tmp_path), ".forge/logs/run/prepare.log")  # the CLI's cwd, links resolved
    assert lines[0] == "build   run:prepare  (never built)"
    assert lines[1] == "FAILED  run:prepare: command exited with code 3"
    assert re.fullmatch(r"  \| # forgebuild run:prepare key [0-9a-f]+ \(never built\)", lines[2]), lines
    assert lines[3:7] == [
        "  | $ echo reading shards; echo 'oops: bad shard 7' >&2; exit 3",
        "  | reading shards",
        "  | oops: bad shard 7",
        f"  (full log: {log})",
    ]
    assert re.fullmatch(r"FAILED: 1 failed \(\d+\.\d\ds\)", lines[7]), lines
    assert len(lines) == 8
    assert os.path.isfile(log)


def test_misspelt_placeholders_are_caught_but_shell_braces_are_not(tmp_path):
    proc = forge(tmp_path, """\
        [run.prepare]
        cmd = "cp {input.raw} {outt}/x && echo ${HOME} {param.seed} && awk '{print}' /dev/null"
        inputs = { raw = "data/raw.bin" }
        params = { seed = 1 }
        outputs = ["../x"]
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: run:prepare: key 'cmd': unknown placeholder {input.raw} (did you mean '{in.raw}'?)
        Forgefile.toml:2: error: run:prepare: key 'cmd': unknown placeholder {outt} (did you mean '{out}'?)
        Forgefile.toml:2: error: run:prepare: key 'cmd': unknown placeholder {param.seed} (did you mean '{params.seed}'?)
        Forgefile.toml:5: error: run:prepare: key 'outputs[0]': '../x' must be a path inside {out}
    """)


# ------------------------------------------------------------------ input that used to reach a traceback (issue 11)

def test_an_invalid_target_two_levels_below_its_readers_is_one_error(tmp_path):
    # was KeyError in graph.topological_order: c reads b reads a, and a reads a missing target
    proc = forge(tmp_path, """\
        [run.a]
        cmd = "true"
        inputs = { x = "run:nope" }

        [run.b]
        cmd = "true"
        inputs = { x = "run:a" }

        [run.c]
        cmd = "true"
        inputs = { x = "run:b" }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:a: key 'inputs.x': no target 'run:nope'
    """)


def test_arrays_and_tables_nested_a_thousand_deep(tmp_path):
    # was RecursionError inside tomllib
    deep = "[" * 1000 + "]" * 1000
    proc = forge(tmp_path, f'[run.a]\ncmd = "true"\nparams = {{ x = 1 }}\nx = {deep}\n')
    check_errors(proc, "Forgefile.toml:4: error: invalid TOML: arrays or tables nested more than 100 deep")
    proc = forge(tmp_path, '[run.a]\ncmd = "true"\n# [[[[ in a comment, "[[[[" in a string\nx = "[{"\n'
                           + "y = " + "{ a = " * 1000 + "1" + " }" * 1000 + "\n")
    check_errors(proc, "Forgefile.toml:5: error: invalid TOML: arrays or tables nested more than 100 deep")


def test_a_recipe_that_is_not_a_string(tmp_path):
    # was TypeError: unhashable type: 'list'
    proc = forge(tmp_path, """\
        [model.m]
        recipe = ["sft"]
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: model:m: key 'recipe': expected one of import, pretrain, continue, sft, dpo, online-dpo, reward, grpo, select, vlm, got array
    """)


def test_empty_commands_and_input_lists_fail_at_planning(tmp_path):
    # `cmd = ""` built an empty artifact; `cmd = []` and `inputs = { x = [] }` failed inside build()
    proc = forge(tmp_path, """\
        [run.a]
        cmd = []

        [run.b]
        cmd = ""

        [run.c]
        cmd = "  "

        [run.d]
        cmd = ["", "x"]

        [run.e]
        cmd = "true"
        inputs = { x = [], y = [""] }

        [run.f]
        cmd = "true"
        outputs = [""]
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: run:a: key 'cmd': expected a string or a non-empty array, got array
        Forgefile.toml:5: error: run:b: key 'cmd': expected a non-empty string or an array, got string ""
        Forgefile.toml:8: error: run:c: key 'cmd': expected a command, got a blank string
        Forgefile.toml:11: error: run:d: key 'cmd[0]': expected a non-empty string, got string ""
        Forgefile.toml:15: error: run:e: key 'inputs.x': expected a string or a non-empty array, got array
        Forgefile.toml:15: error: run:e: key 'inputs.y[0]': expected a non-empty string, got string ""
        Forgefile.toml:19: error: run:f: key 'outputs[0]': expected a non-empty string, got string ""
    """)


def test_environment_names_with_equals_or_nul_fail_at_planning(tmp_path):
    # were ValueError("illegal environment variable name") while building
    proc = forge(tmp_path, r"""
        [run.a]
        cmd = "true"
        env = { "A=B" = "1", "" = "2" }
        pass_env = ["HOME", "C=D"]

        [run.b]
        cmd = "true"
        env = { "X\u0000" = "1", Y = "a\u0000b" }
    """)
    check_errors(proc, """
        Forgefile.toml:4: error: run:a: key 'env.': '' is not an environment variable name (empty, or holds '=')
        Forgefile.toml:4: error: run:a: key 'env.A=B': 'A=B' is not an environment variable name (empty, or holds '=')
        Forgefile.toml:5: error: run:a: key 'pass_env[1]': 'C=D' is not an environment variable name (empty, or holds '=')
        Forgefile.toml:9: error: run:b: key 'env': a key cannot hold a NUL character (\\u0000)
        Forgefile.toml:9: error: run:b: key 'env.Y': a string cannot hold a NUL character (\\u0000)
    """)


def test_numbers_no_stage_can_use_fail_at_planning(tmp_path):
    # beta = inf and vocab_size = 1e29 reached the trainer and the tokenizer library; 2**64 is beyond TOML
    proc = forge(tmp_path, f"""\
        [model.m]
        recipe = "dpo"
        base = "model:b"
        data = "dataset:d"
        beta = inf
        train = {{ batch_size = {2**64}, lr = nan }}

        [tokenizer.t]
        corpus = "corpus:c"
        vocab_size = 1e29

        [tokenizer.u]
        corpus = "corpus:c"
        vocab_size = 1e10

        [run.r]
        cmd = "true"
        params = {{ x = -inf }}
    """)
    check_errors(proc, """
        Forgefile.toml:5: error: model:m: key 'beta': expected a finite number, got float inf
        Forgefile.toml:6: error: model:m: key 'train.batch_size': integer out of range: TOML integers are 64-bit (-2^63 to 2^63-1)
        Forgefile.toml:6: error: model:m: key 'train.lr': expected a finite number, got float nan
        Forgefile.toml:10: error: tokenizer:t: key 'vocab_size': expected an integer between -2^63 and 2^63-1, got float 1e+29
        Forgefile.toml:14: error: tokenizer:u: key 'vocab_size': expected a number <= 16777216, got float 10000000000.0
        Forgefile.toml:18: error: run:r: key 'params.x': expected a finite number, got float -inf
    """)


def test_forge_settings_say_every_problem_once(tmp_path):
    proc = forge(tmp_path, f"""\
        [forge]
        seed = nan
        jobs = {2**64}
        seq_len = 8

        [run.r]
        cmd = "true"
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: [forge]: key 'seed': expected a finite number, got float nan
        Forgefile.toml:3: error: [forge]: key 'jobs': integer out of range: TOML integers are 64-bit (-2^63 to 2^63-1)
        Forgefile.toml:4: error: [forge]: key 'seq_len': unknown key; 'seq_len' is a key of model (recipe pretrain, continue) and tokens targets
    """)


def test_dangling_and_looping_links_in_a_folder_input(tmp_path):
    # were FileNotFoundError / OSError(ELOOP) from os.stat while hashing the folder
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.txt").write_text("a")
    os.symlink("nowhere", tmp_path / "d/dangling")
    os.symlink("loop2", tmp_path / "d/loop1")
    os.symlink("loop1", tmp_path / "d/loop2")
    proc = forge(tmp_path, """\
        [run.a]
        cmd = "true"
        inputs = { d = "d" }
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:a: key 'inputs.d': dangling is a link to nowhere, which cannot be read (No such file or directory)
    """)
    os.remove(tmp_path / "d/dangling")
    check_errors(forge(tmp_path, None), """
        Forgefile.toml:3: error: run:a: key 'inputs.d': loop1 is a link to loop2, which cannot be read (Too many levels of symbolic links)
    """)


def test_the_project_folder_as_an_input_leaves_out_the_workspace(tmp_path):
    # "." hashed .forge/ itself, which every build writes: the target was never fresh
    VALID_DOT = """\
        [forge]
        cache = "store"

        [run.all]
        cmd = "ls {in.all} > {out}/files"
        inputs = { all = "." }
    """
    assert forge(tmp_path, VALID_DOT).returncode == 0
    for _ in range(2):
        proc = forge(tmp_path, None)
        assert re.fullmatch(r"nothing to do: 1 target up to date \(\d+\.\d\ds\)\n", proc.stdout), proc.stdout
    (tmp_path / "data/new.txt").write_text("new")
    assert forge(tmp_path, None).stdout.startswith("build   run:all  (")


def test_an_unknown_key_says_where_it_belongs(tmp_path):
    proc = forge(tmp_path, """\
        [model.m]
        recipe = "sft"
        base = "model:b"
        data = "dataset:d"
        merge = false
        train = { seq_len = 128 }

        [model.p]
        recipe = "pretrain"
        tokens = "tokens:t"
        tokenizer = "tokenizer:k"
        arch = { family = "llama", hidden = 32, layers = 1, heads = 2 }
        train = { seq_len = 128 }
    """)
    check_errors(proc, """
        Forgefile.toml:5: error: model:m: key 'merge': unknown key (did you mean 'lora.merge'?)
        Forgefile.toml:6: error: model:m: key 'train.seq_len': unknown key; 'seq_len' is a key of model (recipe pretrain, continue) and tokens targets
        Forgefile.toml:13: error: model:p: key 'train.seq_len': unknown key (did you mean 'seq_len'?)
    """)


def _int_fields():
    """(model, field name) of every integer param of every built-in rule, recipe and [forge] table."""
    import typing

    from pydantic import BaseModel

    from forgebuild.planning.forgefile import ForgeSettings, Resources
    from forgebuild.rules import load_rules, params_class
    from forgebuild.rules.model import RECIPES

    roots = [ForgeSettings, Resources]
    for kind, rule in load_rules().items():
        roots += [params_class(rule, {"recipe": r}) for r in RECIPES] if kind == "model" else [rule.Params]
    found, seen = [], set()

    def walk(model):
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            args, todo = set(), [field.annotation]
            while todo:  # `int | None`, `list[Reward]`, `Lora | None`: every type the field can hold
                t = todo.pop()
                inner = typing.get_args(t)
                todo += inner if typing.get_origin(t) is not dict else []  # dict values: free-form (run params)
                args.add(t)
            if int in args:
                found.append((model, name, field))
            for t in args:
                if isinstance(t, type) and issubclass(t, BaseModel):
                    walk(t)

    for root in roots:
        walk(root)
    return found


def test_every_integer_param_has_an_upper_bound(tmp_path):
    # 2**62 passed planning as a batch size or a vocabulary and failed deep in torch or tokenizers;
    # forgebuild/limits.py says why each bound is where it is. Any 64-bit value is a seed.
    fields = _int_fields()
    assert len(fields) > 80  # the walk reaches nested tables (train, arch, lora, launch, rewards)
    unbounded = [f"{model.__module__}.{model.__name__}.{name}" for model, name, field in fields
                 if "seed" not in name and not any(hasattr(m, "le") or hasattr(m, "lt") for m in field.metadata)]
    assert unbounded == []
    proc = forge(tmp_path, f"""\
        [model.m]
        recipe = "sft"
        base = "model:b"
        data = "dataset:d"
        train = {{ batch_size = {2**62} }}
    """)
    check_errors(proc, f"""
        Forgefile.toml:5: error: model:m: key 'train.batch_size': expected an integer <= 65536, got integer {2**62}
    """)


def test_an_empty_path_is_an_error_for_every_rule(tmp_path):
    # "" joined to the project folder silently named all of it (dataset source = "" read every file)
    proc = forge(tmp_path, """\
        [run.a]
        cmd = "true"
        inputs = { x = " " }

        [corpus.b]
        sources = ["data/raw.bin", ""]

        [dataset.e]
        source = ""

        [model.i]
        recipe = "import"
        path = ""
    """)
    check_errors(proc, """
        Forgefile.toml:3: error: run:a: key 'inputs.x': an empty path: name a file, folder, glob or KIND:NAME
        Forgefile.toml:6: error: corpus:b: key 'sources': an empty path: name a file, folder, glob or KIND:NAME
        Forgefile.toml:9: error: dataset:e: key 'source': an empty path: name a file, folder, glob or KIND:NAME
        Forgefile.toml:13: error: model:i: key 'path': an empty path: name a file or folder
    """)


def test_a_forge_default_that_two_rules_take_is_said_once(tmp_path):
    # [forge] track defaults both the model and the eval rule's `track`: one key, one problem
    proc = forge(tmp_path, """\
        [forge]
        track = { mlflow = 3 }

        [run.a]
        cmd = ["true"]
    """)
    check_errors(proc, """
        Forgefile.toml:2: error: [forge]: key 'track.mlflow': expected true or false or a string, got integer 3
    """)
