"""Generated bad input: broken Forgefiles and data rows, never a traceback (issue 11 §3).

Hypothesis mutates the real example Forgefile (values of every type and size, keys moved or
misspelt, references to missing targets, raw lines, nesting a thousand deep), writes generated
`run`, `corpus` and `dataset` tables that are then really built, and generated JSON Lines files
read by the records reader and by a real dataset build. Every case must end in exit 0, or in exit 2 with every
message located as FILE:LINE; a build may fail (exit 1) only with a message of its own, never
with a rule's exception ("build raised", or a traceback in the stage log).

Everything runs in-process through `cli.main` (one planning pass is ~10-30 ms) except the
dataset builds, which start a worker each; derandomized, so the suite sees the same cases
every run. Measured here: about 32 s for the whole module on a 2-core machine.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import re
import shutil
import tomllib

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from forgebuild import cli
from forgebuild.rules.rows import DataError, read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "Forgefile.example.toml")
LOCATED = re.compile(r"^Forgefile\.toml:\d+: error: ")
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ the project and the CLI, in-process

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the example's files, and record files of every shape the rules read (data/arith:
    question/answer pairs, preference pairs with scores, prompts with answers)."""
    root = tmp_path_factory.mktemp("generated")
    shutil.copytree(os.path.join(ROOT, "examples"), root / "examples")
    shutil.copytree(os.path.join(ROOT, "tests", "data", "arith"), root / "data" / "arith")
    return str(root)


def forge(root: str, forgefile: str, *args: str) -> tuple[int, str, str]:
    """cli.main in `root` on this Forgefile text: (exit code, stdout, stderr). An exception that
    escapes main is the failure this module looks for: pytest shows its traceback."""
    with open(os.path.join(root, "Forgefile.toml"), "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(forgefile)
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["-f", "Forgefile.toml", *args])
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def check_outcome(code: int, out: str, err: str, forgefile: str, codes=(0, 1, 2)) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics: how many cases were valid, failed, bad input
    shown = f"\n--- Forgefile:\n{forgefile[:3000]}\n--- stdout:\n{out}\n--- stderr:\n{err}"
    assert "Traceback" not in out + err, shown
    assert code in codes, shown
    if code == 2 and "FAILED" not in out:  # a bad Forgefile: every problem located
        assert err and all(LOCATED.match(line) for line in err.split("\n")[:-1]), shown


# ------------------------------------------------------------------ writing TOML

BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(key: str) -> str:
    return key if BARE.match(key) else json.dumps(key)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # inf, -inf, nan, 1e+29: all TOML
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's; \ud800 alone is a TOML error (located)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def render(data: dict) -> str:
    lines = []
    for kind, table in data.items():
        if kind == "forge":
            lines += ["[forge]"] + [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
            continue
        for name, body in table.items():
            lines.append(f"\n[{toml_key(kind)}.{toml_key(name)}]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ generated values and mutations

with open(EXAMPLE, "rb") as f:
    BASE = tomllib.load(f)
ADDRESSES = [f"{kind}:{name}" for kind, table in BASE.items() if kind != "forge" for name in table]
KEYS = sorted({k for kind, table in BASE.items() if kind != "forge" for body in table.values() for k in body}
              | {"merge", "seq_len", "vocab_size", "lora", "env", "pass_env", "recipe", "resources", "gate"})
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # NUL, U+2028, U+0085 included
SCALARS = st.one_of(
    st.integers(), st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]),
    st.floats(), st.sampled_from([1e29, 1e10, -0.0, 0.5]),
    st.booleans(), TEXT,
    st.sampled_from(ADDRESSES + ["run:nope", "model:sft_v1", "nokind:x", "data/arith/sft.jsonl",
                                 "examples", ".", "..", "../x", "/etc/passwd", "*.nomatch", "", " ",
                                 "sft", "pretrain", "grpo", "examples/rewards.py:nope"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS) | TEXT, inner, max_size=3)),
                      max_leaves=6)


@st.composite
def deep(draw):
    depth = draw(st.sampled_from([5, 99, 101, 250, 1000, 1500]))
    if draw(st.booleans()):
        return "[" * depth + "1" + "]" * depth
    return "{ a = " * depth + "1" + " }" * depth


@st.composite
def mutated(draw):
    """The example with 1-3 edits of its data, rendered, then maybe a raw line edit."""
    data = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(sorted(data)))
        table = data[kind]
        if kind == "forge":
            body = table
        else:
            name = draw(st.sampled_from(sorted(table)))
            body = table[name]
        action = draw(st.sampled_from(["set", "set", "set", "nested", "delete", "new target"]))
        if action == "delete" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif action == "nested":
            inner = [k for k, v in body.items() if isinstance(v, dict)]
            if inner:
                body[draw(st.sampled_from(inner))][draw(st.sampled_from(KEYS) | TEXT)] = draw(VALUES)
        elif action == "new target":
            new_kind = draw(st.sampled_from([k for k in data if k != "forge"] + ["nokind"]))
            data.setdefault(new_kind, {})[draw(st.sampled_from(["x", "y-1", "sft_v1"]))] = \
                draw(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
        else:
            body[draw(st.sampled_from(KEYS) | TEXT)] = draw(VALUES)
    text = render(data)
    if draw(st.integers(0, 3)) == 0:  # a raw edit: a deep value, a stray line, a cut file
        lines = text.split("\n")
        at = draw(st.integers(0, len(lines)))
        extra = draw(st.one_of(deep().map(lambda v: f"zz = {v}"), TEXT, st.just("[run"), st.just("x = ")))
        text = "\n".join(lines[:at] + [extra] + lines[at:]) if draw(st.booleans()) else text[: draw(st.integers(0, len(text)))]
    return text


@settings(max_examples=250, **SETTINGS)
@given(forgefile=mutated())
def test_broken_forgefiles_are_located_errors_never_tracebacks(project, forgefile):
    check_outcome(*forge(project, forgefile, "-n"), forgefile, codes=(0, 2))


def test_the_example_itself_plans(project):
    with open(EXAMPLE, encoding="utf-8") as f:
        code, out, err = forge(project, f.read(), "-n")
    assert (code, err) == (0, ""), out + err


def test_a_typo_in_the_examples_base_is_one_located_error(project):
    # was KeyError in graph.topological_order: model:dpo-v2 invalid, model:rl-v3 and eval:arith read it
    with open(EXAMPLE, encoding="utf-8") as f:
        text = f.read()
    assert text.count('base = "model:sft-v1"') == 1
    text = text.replace('base = "model:sft-v1"', 'base = "model:sft_v1"')
    line = text[: text.index("model:sft_v1")].count("\n") + 1
    assert forge(project, text, "-n") == (2, "", f"Forgefile.toml:{line}: error: model:dpo-v2: key 'base': "
                                                 "no target 'model:sft_v1' (did you mean 'model:sft-v1'?)\n")


# ------------------------------------------------------------------ generated run tables, really built

RUN_KEYS = {
    "cmd": st.one_of(st.sampled_from(["true", "", "  ", "true {in.x}", "echo {params.p} > {out}/p",
                                      "exit 3", "touch {out}/made"]),
                     st.lists(st.sampled_from(["true", "", "{in.x}", "{params.p}", "echo"]), max_size=3)),
    "inputs": st.dictionaries(st.sampled_from(["x", "y", "bad name", ""]),
                              st.one_of(st.sampled_from(["data/arith/sft.jsonl", "examples", ".", "*.nomatch",
                                                         "examples/**/*.py", "run:nope", "run:a"]),
                                        st.lists(st.sampled_from(["examples/rewards.py", ""]), max_size=2)),
                              max_size=2),
    "params": st.dictionaries(st.sampled_from(["p", "q"]), SCALARS, max_size=2),
    "env": st.dictionaries(st.sampled_from(["A", "B=C", "", "X\0", "PATH_X"]), TEXT, max_size=2),
    "pass_env": st.lists(st.sampled_from(["HOME", "", "A=B", "NOPE"]), max_size=2),
    "outputs": st.lists(st.sampled_from(["made", "p", "../up", "/abs", "", "never"]), max_size=2),
    "timeout": st.one_of(st.sampled_from([0, -1, 30, 1e300]), st.floats()),
}


@st.composite
def run_table(draw):
    keys = draw(st.lists(st.sampled_from(sorted(RUN_KEYS)), unique=True, max_size=4))
    body = {"cmd": draw(RUN_KEYS["cmd"])}
    body.update({k: draw(RUN_KEYS[k]) for k in keys})
    return render({"run": {"a": {"cmd": "true"}, "g": body}})


@settings(max_examples=120, **SETTINGS)
@given(forgefile=run_table())
def test_generated_run_tables_plan_and_build_without_a_raw_exception(project, forgefile):
    code, out, err = forge(project, forgefile, "run:g")
    check_outcome(code, out, err, forgefile)
    assert "build raised" not in out + err, forgefile + out + err
    for log in glob.glob(os.path.join(project, ".forge/logs/run/*.log")):  # a rule's exception is logged
        with open(log, encoding="utf-8", errors="replace") as f:
            assert "Traceback" not in f.read(), forgefile + out + err
        os.remove(log)


# ------------------------------------------------------------------ generated corpus and dataset tables, really built

DATA_KEYS = {
    "corpus": {
        "sources": st.sampled_from([["examples/data/raw/*.txt"], ["data/arith/sft.jsonl"], ["examples"]]),
        "format": st.sampled_from(["auto", "text", "records"]),
        "text_field": st.sampled_from(["text", "question", ""]),
        "min_chars": st.sampled_from([0, 10**6, 2**53]), "max_chars": st.sampled_from([1, 100, 2**53]),
        "holdout": st.sampled_from([0.0, 0.5, 1.0]), "shards": st.sampled_from([1, 100_000]),
        "dedup": st.sampled_from(["exact", "none", "near", {"near": {"threshold": 1.0, "num_perm": 16}}]),
        "include": st.sampled_from([["(unclosed"], [""], []]), "size": st.sampled_from([{"documents": 1}]),
    },
    "dataset": {
        "source": st.sampled_from(["data/arith/sft.jsonl", "data/arith/pref.jsonl", "examples"]),
        "format": st.sampled_from(["auto", "prompt_completion", "messages", "preference", "prompts"]),
        "fields": st.sampled_from([{}, {"prompt": "question", "completion": "answer"}, {"prompt": ""}]),
        "invalid": st.sampled_from(["error", "drop"]), "dedup": st.sampled_from(["exact", "prompt", "none"]),
        "splits": st.sampled_from([{"train": 1.0}, {"train": 0.0, "test": 1.0}, {"a": 1e-9, "b": 1 - 1e-9}]),
        "ngram": st.sampled_from([1, 2**20]), "decontaminate": st.sampled_from([[], ["data/arith/bench.jsonl"]]),
    },
}


@st.composite
def data_table(draw):
    kind = draw(st.sampled_from(sorted(DATA_KEYS)))
    keys = DATA_KEYS[kind]
    first = "sources" if kind == "corpus" else "source"
    body = {first: draw(keys[first])}
    body.update({k: draw(keys[k]) for k in draw(st.lists(st.sampled_from(sorted(keys)), unique=True, max_size=4))})
    return render({kind: {"t": body}})


NEAR_ONE = {"sources": ["examples/data/raw/*.txt"], "dedup": {"near": {"threshold": 1.0, "num_perm": 16}}}


@settings(max_examples=20, **SETTINGS)
@given(forgefile=data_table())
@example(forgefile=render({"corpus": {"t": NEAR_ONE}}))  # found by a 250-example run of this test
def test_generated_corpus_and_dataset_tables_build_or_say_why(project, forgefile):
    # NEAR_ONE was "build raised ValueError: The number of bands are too small (b < 2)" (datasketch)
    code, out, err = forge(project, forgefile, "-B")
    check_outcome(code, out, err, forgefile)
    assert "build raised" not in out + err, forgefile + out + err


# ------------------------------------------------------------------ generated data rows

JSON_TEXT = st.text(st.characters(exclude_categories=("Cs",)) | st.sampled_from("\u2028\u2029\u0085\x1c\x1d\x1e\x0b\x0c\r"),
                    max_size=10)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_TEXT, inner, max_size=3), max_leaves=8)
OBJECTS = st.dictionaries(JSON_TEXT, JSON_VALUES, max_size=4)
BAD_LINES = st.sampled_from([
    '{"a": ' + "7" * 5000 + "}",                              # beyond Python's 4,300-digit int()
    '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",           # beyond the decoder's recursion
    '{"a": "\\ud800"}', '{"a": "x\\udfff"}',                  # lone surrogates
    '{"a": NaN}', '{"a": -Infinity}',                         # Python reads them; JSON has not
    "[1, 2]", '"text"', "17", "null", "{", '{"a": 1} x', "\u2028", "garbage",
])


@st.composite
def jsonl_file(draw):
    """(file text, {line number: object} for the good lines, set of bad line numbers)."""
    lines, good, bad = [], {}, set()
    for number in range(1, draw(st.integers(1, 8)) + 1):
        kind = draw(st.sampled_from(["good", "good", "good", "bad", "blank"]))
        if kind == "good":
            row = draw(OBJECTS)
            lines.append(json.dumps(row, ensure_ascii=draw(st.booleans())))
            good[number] = row
        elif kind == "bad":
            line = draw(BAD_LINES)
            lines.append(line)
            if line.strip():  # "\u2028" alone is blank to str.strip(): skipped like an empty line
                bad.add(number)
        else:
            lines.append(draw(st.sampled_from(["", "  ", "\t", "\r"])))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"])), good, bad


@settings(max_examples=200, **SETTINGS)
@given(case=jsonl_file())
def test_generated_json_lines_are_read_exactly_or_named_by_line(tmp_path_factory, case):
    text, good, bad = case
    path = str(tmp_path_factory.mktemp("rows") / "rows.jsonl")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    got = list(read_records(path, bad_lines="yield"))
    assert {item[0]: item[1] for item in got if len(item) == 2} == good
    assert {item[0] for item in got if len(item) == 3} == bad
    if bad:
        with pytest.raises(DataError, match=rf"^{re.escape(path)}:{min(bad)}: "):
            list(read_records(path))


@settings(max_examples=10, **SETTINGS)
@given(case=jsonl_file())
def test_generated_rows_build_a_dataset_or_fail_with_a_located_message(project, case):
    text, good, bad = case
    rows = [json.dumps({"prompt": f"p{i}", "completion": "c", **row}) for i, row in enumerate(good.values())]
    with open(os.path.join(project, "rows.jsonl"), "w", encoding="utf-8") as f:
        f.write(text + "\n" + "\n".join(rows) + "\n")
    forgefile = '[dataset.d]\nsource = "rows.jsonl"\nformat = "prompt_completion"\ninvalid = "drop"\n' \
                'dedup = "none"\n\n[dataset.e]\nsource = "rows.jsonl"\nformat = "prompt_completion"\n'
    code, out, err = forge(project, forgefile, "-k", "dataset:d", "dataset:e")
    check_outcome(code, out, err, forgefile)
    assert "build raised" not in out + err, text + out + err
    assert code in (0, 2), out + err  # bad data is bad input (2), never a failed rule (1)
    if bad:
        assert re.search(r"FAILED  dataset:e: rows\.jsonl:\d+: ", out), out


# ------------------------------------------------------------------ generated matrices, searches and records

GRID_VALUES = st.one_of(st.lists(SCALARS, max_size=3), SCALARS, st.dictionaries(st.just("x"), SCALARS, max_size=1))
GRID_KEYS = st.sampled_from(["params.p", "params.q", "timeout", "cmd", "cmd.x", "matrix", "", "a..b", "params",
                             "resources"])
SEARCH_KEYS = {
    "target": st.sampled_from(["run:g", "run:a", "run:w", "run:nope", "model:x", "", "run:g[p=1]"]),
    "objective": st.one_of(st.fixed_dictionaries({"target": st.sampled_from(["run:w", "run:g", "eval:e", "x"]),
                                                  "metric": st.sampled_from(["loss", "a.b", "", "x y"])},
                                                 optional={"goal": st.sampled_from(["max", "min", "up"])}),
                           SCALARS),
    "space": st.dictionaries(st.sampled_from(["params.p", "params.q", "x"]),
                             st.one_of(st.dictionaries(st.sampled_from(["loguniform", "uniform", "int", "choice"]),
                                                       st.lists(SCALARS, max_size=3), max_size=2), SCALARS),
                             max_size=2),
    "budget": st.one_of(st.integers(-1, 3), SCALARS),
    "optimizer": st.sampled_from(["tpe", "random", "agent", "grid"]),
    "agent": st.one_of(st.lists(st.sampled_from(["true", ""]), max_size=2), SCALARS),
    "prune": st.one_of(st.fixed_dictionaries({"metric": st.sampled_from(["loss", ""])}), SCALARS),
    "trials": st.lists(SCALARS, max_size=1),
    "record": st.sampled_from(["searches/s.json", "../out.json", "/abs.json", ""]),
}
RECORDS = st.one_of(
    st.just(None), st.just("{not json"), st.just("[]"), st.just('{"format": 1, "trials": {}}'),
    st.builds(lambda trials: json.dumps({"format": 1, "study": {}, "trials": trials}),
              st.lists(st.one_of(st.fixed_dictionaries({"params": st.dictionaries(
                  st.sampled_from(["params.p", "params.q", "cmd", "cmd.x", "", "timeout"]),
                  st.one_of(SCALARS, st.lists(SCALARS, max_size=1)), max_size=2)},
                  optional={"pruned": st.one_of(SCALARS, st.just({"step": 1, "intermediate": {}}))}),
                  SCALARS), max_size=3)))


@st.composite
def grid_and_search(draw):
    grid = {"cmd": ["true", "{params.p}"], "params": {"p": 0},
            "matrix": draw(st.one_of(st.dictionaries(GRID_KEYS, GRID_VALUES, max_size=3), SCALARS))}
    user = {"cmd": ["true", "{in.x}"], "inputs": {"x": draw(st.sampled_from(["run:g", ["run:g"], ["run:g", "run:a"]]))}}
    if draw(st.booleans()):
        user["matrix_with"] = draw(st.sampled_from(["run:g", "run:a", "run:nope", "run:w", 3, ""]))
    keys = draw(st.lists(st.sampled_from(sorted(SEARCH_KEYS)), unique=True, max_size=len(SEARCH_KEYS)))
    search = {k: draw(SEARCH_KEYS[k]) for k in keys}
    text = render({"run": {"a": {"cmd": "true"}, "g": grid, "w": user}, "search": {"s": search}})
    return text, draw(RECORDS)


@settings(max_examples=150, **SETTINGS)
@given(case=grid_and_search())
def test_generated_matrices_searches_and_records_plan_or_say_where(project, case):
    forgefile, record = case
    path = os.path.join(project, "searches", "s.json")
    if record is None:
        if os.path.exists(path):
            os.remove(path)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(record)
    check_outcome(*forge(project, forgefile, "-n"), forgefile + f"\n--- record:\n{record}", codes=(0, 2))


# ------------------------------------------------------------------ generated generate tables and prompt files

VAR_VALUES = st.one_of(st.lists(SCALARS, max_size=3), st.fixed_dictionaries({"range": st.lists(SCALARS, max_size=4)}),
                       SCALARS)
GENERATE_KEYS = {
    "model": st.sampled_from(["model:m", "model:nope", "run:p", "", "m"]),
    "prompts": st.sampled_from(["data/arith/prompts.jsonl", "dataset:d", "run:p", "nope.jsonl", "", "model:m"]),
    "template": st.one_of(st.fixed_dictionaries({"text": st.one_of(st.sampled_from(["{a}+{b}=", "{a", "{}", "{0}",
                                                                                    "{a.b}", "{c}", "x"]), TEXT),
                                                 "vars": st.dictionaries(st.sampled_from(["a", "b", "", "0"]),
                                                                         VAR_VALUES, max_size=3)},
                                                optional={"sample": SCALARS}), SCALARS),
    "split": st.one_of(st.sampled_from(["train", "r1", ""]), SCALARS),
    "prompt_field": st.one_of(st.sampled_from(["prompt", "question", ""]), SCALARS),
    "n": SCALARS,
    "sampling": st.one_of(st.dictionaries(st.sampled_from(["temperature", "top_p", "max_new_tokens", "stop", "x"]),
                                          st.one_of(SCALARS, st.lists(SCALARS, max_size=2)), max_size=3), SCALARS),
    "chat_template": st.one_of(st.sampled_from(["auto", True, False, "yes"]), SCALARS),
    "seed": SCALARS,
    "engine": st.sampled_from(["transformers", "vllm", "tgi", ""]),
    "batch_size": SCALARS,
}


@st.composite
def generate_table(draw):
    keys = draw(st.lists(st.sampled_from(sorted(GENERATE_KEYS)), unique=True, max_size=len(GENERATE_KEYS)))
    body = {k: draw(GENERATE_KEYS[k]) for k in keys}
    return render({"model": {"m": {"recipe": "import", "path": "weights"}}, "run": {"p": {"cmd": "true"}},
                   "dataset": {"d": {"source": "data/arith/prompts.jsonl"}}, "generate": {"g": body}})


@settings(max_examples=150, **SETTINGS)
@given(forgefile=generate_table())
def test_generated_generate_tables_plan_or_say_where(project, forgefile):
    os.makedirs(os.path.join(project, "weights"), exist_ok=True)
    check_outcome(*forge(project, forgefile, "-n"), forgefile, codes=(0, 2))


PROMPT_VALUES = st.one_of(TEXT, st.just(""), st.just("  "), st.integers(), st.none(), st.lists(TEXT, max_size=2),
                          st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "bot", 3]),
                                                          "content": st.one_of(TEXT, st.integers())}), max_size=2))


@settings(max_examples=150, **SETTINGS)
@given(rows=st.lists(st.one_of(st.fixed_dictionaries({"prompt": PROMPT_VALUES}, optional={"answer": SCALARS}),
                               st.dictionaries(st.sampled_from(["question", "answer"]), SCALARS, max_size=2)),
                     min_size=1, max_size=4))
def test_generated_prompt_rows_are_read_or_named_by_line(tmp_path_factory, rows):
    """What a generate target reads from a prompts file: each row taken whole, or the first bad one named by
    file and line (the build says it as bad input, exit 2)."""
    from forgebuild.rules.synth.prompts import PromptError, prompt_problem, record_rows

    path = str(tmp_path_factory.mktemp("prompts") / "p.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
    bad = next((i for i, row in enumerate(rows) if "prompt" not in row or prompt_problem(row["prompt"])), None)
    try:
        found = record_rows([("p.jsonl", path)], "prompt")
    except PromptError as e:
        assert bad is not None and str(e).startswith(f"p.jsonl:{bad + 1}: "), (rows, str(e))
    else:
        assert bad is None and [r["prompt"] for r in found] == [row["prompt"] for row in rows]
