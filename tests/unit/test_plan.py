"""plan.py in process: how an input is classified and resolved to files, and the plan cache
(.forge/plan.json) that a no-op build trusts: reused for the same bytes and rules, refused otherwise."""
from __future__ import annotations

import os

import pytest

from forgebuild.planning import plan as planlib
from forgebuild.errors import ForgefileError
from unitlab import lab  # noqa: F401  (a fixture)


def test_classify_and_outside_root():
    assert [planlib.classify(s) for s in ("run:a", "model:base-1.5", "data/*.txt", "d/[ab].txt", "data/x.txt",
                                          "Run:a", "run:")] == ["target", "target", "glob", "glob", "path", "path", "path"]
    outside = ["/etc/passwd", "~/x", "..", "../x", "a/../../x"]
    inside = ["a/../b", "..x", "x/..", "."]
    assert [planlib.outside_root(s) for s in outside + inside] == [True] * 5 + [False] * 4


FORGEFILE = """
[run.t]
cmd = "true"
inputs = { docs = "data/*.txt", tree = "data", one = "data/b.txt" }
"""


def sources(lab, key: str) -> list[str]:
    plan = lab.plan()
    target = plan.targets["run:t"]
    spec = next(s for s in target.inputs if s.key == key)
    return [rel for rel, full in planlib.resolve_sources(plan, target, spec)]


def test_globs_and_folders_resolve_to_sorted_project_relative_files(lab):
    for rel in ("data/b.txt", "data/a.txt", "data/sub/c.txt", "data/sub/d.bin"):
        lab.write(rel, rel)
    lab.write("Forgefile.toml", FORGEFILE)
    assert sources(lab, "inputs.docs") == ["data/a.txt", "data/b.txt"]
    assert sources(lab, "inputs.tree") == ["data/a.txt", "data/b.txt", "data/sub/c.txt", "data/sub/d.bin"]
    assert sources(lab, "inputs.one") == ["data/b.txt"]


def test_the_workspace_is_never_an_input(lab):
    lab.write("a.txt", "a")
    lab.write(".forge/out/x.txt", "built")
    lab.write("Forgefile.toml", '[run.t]\ncmd = "true"\ninputs = { all = ".", txt = "**/*.txt" }\n')
    # "." keeps its prefix ("./a.txt", where the glob says "a.txt"): names as keys have always held them
    assert sources(lab, "inputs.all") == ["./Forgefile.toml", "./a.txt"]
    assert sources(lab, "inputs.txt") == ["a.txt"]


def test_a_missing_file_and_an_empty_glob_are_forgefile_errors(lab):
    lab.write("data/train.jsonl", "{}")
    with pytest.raises(ForgefileError) as e:
        lab.plan('[run.t]\ncmd = "true"\ninputs = { a = "data/trian.jsonl", b = "data/*.csv" }\n')
    assert str(e.value).splitlines() == [
        "Forgefile.toml:3: error: run:t: key 'inputs.a': no such file 'data/trian.jsonl' "
        "(did you mean 'data/train.jsonl'?)",
        "Forgefile.toml:3: error: run:t: key 'inputs.b': no file matches 'data/*.csv'",
    ]


# ------------------------------------------------------------------ the plan cache

@pytest.fixture
def cache_file(tmp_path_factory) -> str:
    """Outside the current folder: a "" entry on sys.path stands for it, and environment() notes its mtime."""
    return str(tmp_path_factory.mktemp("plan-cache") / "plan.json")


def cached(path: str, data: bytes):
    return planlib.load_cached(path, planlib.forgefile_digest(data))


def test_the_plan_cache_round_trips_for_the_same_bytes_and_rules(lab, cache_file):
    text = '[run.a]\ncmd = "true"\n\n[run.b]\ncmd = "true"\ninputs = { a = "run:a" }\n'
    plan = lab.plan(text)
    planlib.save(plan, cache_file, planlib.forgefile_digest(text.encode()))
    again = cached(cache_file, text.encode())
    assert again == plan
    assert again.targets["run:b"].deps == ["run:a"] and again.closure(["run:b"]) == ["run:a", "run:b"]
    assert cached(cache_file, text.encode() + b"\n") is None  # other bytes: parse again


def test_the_plan_cache_is_refused_when_a_rule_module_changed_or_it_is_damaged(lab, cache_file):
    text = '[run.a]\ncmd = "true"\n'
    plan = lab.plan(text)
    path = cache_file
    planlib.save(plan, path, planlib.forgefile_digest(text.encode()))
    assert cached(path, text.encode()) == plan
    module = next(iter(plan.rule_files))
    plan.rule_files[module][1] -= 1  # as if the rule's file had another mtime when the plan was made
    planlib.save(plan, path, planlib.forgefile_digest(text.encode()))
    assert cached(path, text.encode()) is None
    with open(path, "w") as f:
        f.write("{not json")
    assert cached(path, text.encode()) is None


def test_forgefile_digest_covers_the_bytes_and_forgebuilds_version():
    one = planlib.forgefile_digest(b"[run.a]\n")
    assert planlib.forgefile_digest(b"[run.a]\n") == one and planlib.forgefile_digest(b"[run.b]\n") != one
    assert len(one) == 64


def test_a_target_keeps_every_param_once_and_views_identity_and_runtime():
    """One dict travels to the build (`values`); the action key sees it without the runtime paths."""
    values = {"cmd": "true", "threads": 2, "train": {"lr": 0.1, "log_every": 5, "quiet": True}, "launch": {"n": 1}}
    target = planlib.TargetPlan("run:t", "run", "1", 1, values, ["threads", "train.log_every", "train.quiet", "launch"], [])
    assert target.params == {"cmd": "true", "train": {"lr": 0.1}}
    assert target.runtime == {"threads": 2, "train": {"log_every": 5, "quiet": True}, "launch": {"n": 1}}
    assert target.values == values  # the views copy; the dict the build gets is untouched
    assert planlib.TargetPlan("run:u", "run", "1", 1, {"a": {"b": 1}}, [], []).runtime == {}


def test_the_model_rules_params_split_as_before(lab):
    """A real recipe: runtime fields (threads, device, launch, train.log_every) stay out of the key,
    and a [forge] launch reaches a target that sets none, validated with it."""
    lab.write("Forgefile.toml", """
[forge]
launch = { processes = 2 }

[model.m]
recipe = "pretrain"
tokens = "tokens:t"
tokenizer = "tokenizer:k"
arch = { family = "llama", hidden = 16, layers = 1, heads = 2 }
train = { lr = 0.01, steps = 3 }
threads = 1

[tokens.t]
corpus = "corpus:c"
tokenizer = "tokenizer:k"
seq_len = 32

[tokenizer.k]
corpus = "corpus:c"
vocab_size = 300

[corpus.c]
sources = ["data"]
""")
    lab.write("data/a.txt", "hello")
    target = lab.plan().targets["model:m"]
    assert target.values["train"]["lr"] == 0.01 and target.params["train"]["lr"] == 0.01
    assert "threads" not in target.params and target.runtime["threads"] == 1
    assert "launch" not in target.params and target.runtime["launch"]["processes"] == 2
    assert target.values["launch"] == target.runtime["launch"]
