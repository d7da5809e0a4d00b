"""keys.py in process: what enters an action key (docs/design.md §2, the module docstring), what
never does, the reasons `explain` gives, and `decide`'s states."""
from __future__ import annotations

import os

from forgebuild.planning import keys
from forgebuild.hashing import StatCache
from unitlab import lab  # noqa: F401  (a fixture)

FORGEFILE = """
[forge]
seed = 7

[run.prep]
cmd = "cp {in.raw} {out}/x.txt"
inputs = { raw = "data/raw.txt" }
params = { repeat = 1 }
description = "a note"

[run.count]
cmd = "wc -c < {in.prep}/x.txt > {out}/n.txt"
inputs = { prep = "run:prep" }
"""


def key_of(lab, forgefile=FORGEFILE, address="run:prep", deps=None) -> str:
    plan = lab.plan(forgefile)
    return keys.action_key(keys.material(plan, plan.targets[address], StatCache(None), deps or {}))


def test_a_key_is_stable_and_machine_independent(lab, tmp_path_factory):
    lab.write("data/raw.txt", "hello\n")
    first = key_of(lab)
    assert key_of(lab) == first
    elsewhere = type(lab)(str(tmp_path_factory.mktemp("other-checkout")))
    elsewhere.write("data/raw.txt", "hello\n")
    assert key_of(elsewhere) == first  # the project's folder is not in the key
    os.utime(os.path.join(lab.root, "data/raw.txt"), (1, 1))
    assert key_of(lab) == first  # nor a file's times: only its bytes


def test_what_enters_a_key(lab):
    lab.write("data/raw.txt", "hello\n")
    base = key_of(lab)
    changed = {
        "param": FORGEFILE.replace("repeat = 1", "repeat = 2"),
        "command": FORGEFILE.replace("cp {in.raw}", "cp -p {in.raw}"),
        "project seed": FORGEFILE.replace("seed = 7", "seed = 8"),
        "env": FORGEFILE.replace('description = "a note"', 'env = { A = "1" }'),
        "input renamed": FORGEFILE.replace("raw = ", "source = ").replace("in.raw", "in.source"),
    }
    found = {what: key_of(lab, text) for what, text in changed.items()}
    assert base not in found.values() and len(set(found.values())) == len(found)
    lab.write("data/raw.txt", "hello!\n")
    assert key_of(lab) not in (base, *found.values())


def test_runtime_only_params_and_settings_stay_out_of_a_key(lab):
    lab.write("data/raw.txt", "hello\n")
    base = key_of(lab)
    assert key_of(lab, FORGEFILE.replace('"a note"', '"another note"')) == base
    assert key_of(lab, FORGEFILE.replace('description = "a note"', "timeout = 30")) == base
    assert key_of(lab, FORGEFILE.replace("seed = 7", "seed = 7\njobs = 2\ncache = \"elsewhere\"")) == base


def test_a_dependency_enters_by_its_output_digest(lab):
    lab.write("data/raw.txt", "hello\n")
    one = key_of(lab, address="run:count", deps={"run:prep": "a" * 64})
    assert key_of(lab, address="run:count", deps={"run:prep": "a" * 64}) == one
    assert key_of(lab, address="run:count", deps={"run:prep": "b" * 64}) != one


def test_a_declared_variable_enters_by_its_value(lab, monkeypatch):
    lab.write("data/raw.txt", "hello\n")
    text = FORGEFILE.replace('description = "a note"', 'pass_env = ["FB_UNIT_VAR"]')
    monkeypatch.delenv("FB_UNIT_VAR", raising=False)
    unset = key_of(lab, text)
    monkeypatch.setenv("FB_UNIT_VAR", "x")
    assert key_of(lab, text) != unset
    monkeypatch.setenv("FB_UNIT_VAR", "y")
    other = key_of(lab, text)
    monkeypatch.setenv("FB_UNIT_VAR", "x")
    assert key_of(lab, text) != other


def test_derive_seed_is_per_target_and_fixed():
    assert keys.derive_seed(7, "run:prep") == keys.derive_seed(7, "run:prep")
    assert keys.derive_seed(7, "run:prep") != keys.derive_seed(7, "run:count")
    assert keys.derive_seed(7, "run:prep") != keys.derive_seed(8, "run:prep")
    assert 0 <= keys.derive_seed(123, "model:base") < 2**31 - 1


# ------------------------------------------------------------------ explain

MAT = {
    "format": keys.KEY_FORMAT, "rule": "run", "version": "1",
    "params": {"cmd": "x", "params": {"repeat": 1, "gone": "a"}},
    "seed": 5,
    "inputs": {"inputs.raw": [["file", "data/raw.txt", "d1"]], "inputs.prep": [["target", "run:prep", "o1"]],
               "inputs.a": [["file", "data/a.txt", "d2"]]},
    "env": {"vars": {"V": None}, "libraries": {"torch": "2.0"}},
}


def changed(**parts) -> dict:
    return {**MAT, **parts}


def test_explain_names_each_change_exactly():
    assert keys.explain(None, MAT) == ["never built"]
    assert keys.explain(MAT, dict(MAT)) == ["key changed"]
    new = changed(
        params={"cmd": "y", "params": {"repeat": 2, "added": True}},
        seed=6,
        inputs={"inputs.raw": [["file", "data/raw.txt", "d9"]], "inputs.prep": [["target", "run:prep", "o2"]],
                "inputs.new": [["file", "data/new.txt", "d3"]]},
        env={"vars": {"V": "1"}, "libraries": {"torch": "2.1"}},
    )
    assert keys.explain(MAT, new) == [
        'param cmd "x" -> "y"',
        "param params.added added (= true)",
        'param params.gone removed (was "a")',
        "param params.repeat 1 -> 2",
        "seed 5 -> 6",
        "input data/a.txt removed",
        "input data/new.txt added",
        "input data/raw.txt changed",
        "dependency run:prep rebuilt with new output",
        'environment V null -> "1"',
        'library torch "2.0" -> "2.1"',
    ]


def test_explain_rule_version_format_and_moves():
    assert keys.explain(MAT, changed(version="2")) == ["rule run version 1 -> 2"]
    assert keys.explain({**MAT, "format": 1}, MAT) == [f"key format 1 -> {keys.KEY_FORMAT}"]
    moved = changed(inputs={**MAT["inputs"], "inputs.raw": [], "inputs.copy": [["file", "data/raw.txt", "d1"]]})
    assert keys.explain(MAT, moved) == ["input data/raw.txt moved: inputs.raw -> inputs.copy"]
    twice = changed(inputs={**MAT["inputs"], "inputs.b": [["file", "data/a.txt", "d9"]],
                            "inputs.a": [["file", "data/a.txt", "d9"]]})
    assert keys.explain(MAT, twice) == ["input data/a.txt changed"]  # one file named by two inputs: one reason


# ------------------------------------------------------------------ decide

def decisions(lab, target="run:count", force=False):
    from forgebuild.store.local import Store
    from forgebuild.store.workspace import Workspace

    plan = lab.plan()
    ws = Workspace(lab.root)
    store = Store(ws.dir)
    found = keys.decide(plan, [target], StatCache(None), store.get_action, ws.last_build, force)
    return {a: (d.state, d.reasons) for a, d in found.items()}


def test_decide_missing_fresh_stale_and_early_cutoff(lab):
    lab.write("data/raw.txt", "hello\n")
    lab.write("Forgefile.toml", FORGEFILE)
    assert decisions(lab) == {"run:prep": ("missing", ["never built"]),
                              "run:count": ("missing", ["never built", "dependency run:prep is missing"])}
    assert lab.build("run:count")[0] == 0
    assert decisions(lab) == {"run:prep": ("fresh", ["up to date"]), "run:count": ("fresh", ["up to date"])}
    lab.write("data/raw.txt", "HELLO\n")
    lab.write("Forgefile.toml", FORGEFILE.replace("wc -c <", "wc -m <"))
    assert decisions(lab) == {
        "run:prep": ("stale", ["input data/raw.txt changed"]),
        # count's key waits for prep's new output, but its own change is named already
        "run:count": ("stale", ["dependency run:prep is stale",
                                'param cmd "wc -c < {in.prep}/x.txt > {out}/n.txt" -> "wc -m < {in.prep}/x.txt > {out}/n.txt"']),
    }


def test_early_cutoff_keeps_a_dependents_key(lab):
    from forgebuild.store.workspace import Workspace

    lab.write("data/raw.txt", "hello\n")
    lab.write("Forgefile.toml", FORGEFILE)
    assert lab.build("run:count")[0] == 0
    before = Workspace(lab.root).last_build("run:count")["key"]
    lab.write("Forgefile.toml", FORGEFILE.replace("repeat = 1", "repeat = 2"))  # the command ignores it
    assert decisions(lab) == {"run:prep": ("stale", ["param params.repeat 1 -> 2"]),
                              "run:count": ("stale", ["dependency run:prep is stale"])}
    assert lab.build("run:count")[0] == 0
    assert decisions(lab) == {"run:prep": ("fresh", ["up to date"]), "run:count": ("fresh", ["up to date"])}
    assert Workspace(lab.root).last_build("run:count")["key"] == before  # byte-identical output: same key


def test_decide_forced_evicted_and_cached_from_an_earlier_build(lab):
    from forgebuild.store.local import Store

    lab.write("data/raw.txt", "hello\n")
    lab.write("Forgefile.toml", FORGEFILE)
    assert lab.build("run:prep")[0] == 0
    assert decisions(lab, "run:prep", force=True) == {"run:prep": ("stale", ["forced (-B)"])}
    lab.write("Forgefile.toml", FORGEFILE.replace("repeat = 1", "repeat = 2"))
    assert lab.build("run:prep")[0] == 0
    lab.write("Forgefile.toml", FORGEFILE)  # back to the first params: their output is still cached
    assert decisions(lab, "run:prep") == {"run:prep": ("fresh", ["output cached from an earlier build"])}
    assert lab.build("run:prep")[0] == 0
    store = Store(os.path.join(lab.root, ".forge"))
    for key in list(store.action_keys()):
        store.remove_action(key)
    assert decisions(lab, "run:prep") == {"run:prep": ("stale", ["output no longer in the cache"])}


MODELS = """
[forge]
launch = { processes = 1 }

[model.base]
recipe = "import"
path = "weights"

[dataset.sft]
source = "data/sft.jsonl"
format = "prompt_completion"

[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
train = { lr = 0.001 }
"""


def test_a_recipes_runtime_settings_stay_out_of_its_key(lab):
    lab.write("weights/config.json", "{}")
    lab.write("data/sft.jsonl", '{"prompt": "1+1=", "completion": "2"}\n')
    deps = {"model:base": "a" * 64, "dataset:sft": "b" * 64}
    base = key_of(lab, MODELS, "model:sft", deps)
    runtime = ['threads = 1', 'device = "cpu"', "dataloader_workers = 1", "log_every = 1", "checkpoint_every = 7",
               "launch = { processes = 2 }"]
    for line in runtime:
        assert key_of(lab, MODELS + line + "\n", "model:sft", deps) == base, line
    assert key_of(lab, MODELS.replace("processes = 1", "processes = 2"), "model:sft", deps) == base
    assert key_of(lab, MODELS.replace("0.001", "0.002"), "model:sft", deps) != base
    assert key_of(lab, MODELS + "max_length = 64\n", "model:sft", deps) != base
