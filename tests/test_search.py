"""Searches end to end: Optuna's proposals recorded and replayed, a budget raised, an agent driving one.

Each trial is a tiny SFT (a few steps) and its eval on a 12-question multiple-choice benchmark."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import tinylab

SEARCH = """
[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = 32
train = {{ lr = 1e-3, steps = 3, batch_size = 8 }}
threads = 1

[eval.mc]
models = ["model:sft"]
benchmarks = [{{ name = "mc", kind = "choice", data = "bench/mc.jsonl" }}]
limit = 12
threads = 1

[search.lr]
target = "model:sft"
objective = {{ target = "eval:mc", metric = "mc.accuracy" }}
space = {{ "train.lr" = {{ loguniform = [1e-4, 3e-2] }}, "train.steps" = {{ int = [1, 3] }} }}
budget = {budget}
seed = 3
{extra}
"""

AGENT = '''
import json, sys
seen = json.load(sys.stdin)
done = [t for t in seen["trials"] if t["status"] == "complete"]
best = max(done, key=lambda t: t["value"]) if done else None
lr = min(best["params"]["train.lr"] * 2, 0.03) if best else 0.001
print(json.dumps({"params": {"train.lr": lr, "train.steps": 3},
                  "rationale": f"saw {len(seen['trials'])} trials; doubling the best lr"}))
'''


@pytest.fixture
def search_project(recipe_project):
    p = recipe_project
    pairs = tinylab.arithmetic(12, seed=5)
    tinylab.write_jsonl(os.path.join(p.root, "bench/mc.jsonl"),
                        ({"prompt": f"What is {a}+{b}?\nAnswer:", "choices": [f" {a + b}", f" {a + b + 7}"], "answer": 0}
                         for a, b in pairs))
    return p


def forgefile(p, budget: int, extra: str = "") -> None:
    p.forgefile(p.preamble + SEARCH.format(budget=budget, extra=extra))


def record(p) -> dict:
    return json.loads(p.read("searches/lr.json"))


def outcome(p) -> dict:
    return json.loads(p.read(os.path.join(p.run("path", "search:lr").stdout.strip(), "trials.json")))


RUN_SEARCH = """
[run.train]
cmd = ["python3", "-c", "import sys; open(sys.argv[1] + '/w.txt', 'w').write(sys.argv[2] + ' ' + sys.argv[3])", "{{out}}", "{{params.lr}}", "{{params.width}}"]
params = {{ lr = 0.1, width = 1 }}

[run.score]
cmd = ["python3", "-c", "import json, math, sys; lr, w = map(float, open(sys.argv[1] + '/w.txt').read().split()); json.dump({{'loss': (math.log10(lr) + 2.5) ** 2 + (w - 3) ** 2}}, open(sys.argv[2] + '/metrics.json', 'w')); open('runs.txt', 'a').write('score' + chr(10))", "{{in.model}}", "{{out}}"]
inputs = {{ model = "run:train" }}

[search.lr]
target = "run:train"
objective = {{ target = "run:score", metric = "loss", goal = "min" }}
space = {{ "params.lr" = {{ loguniform = [1e-5, 1.0] }}, "params.width" = {{ int = [1, 6] }} }}
budget = {budget}
seed = 3
"""


def test_an_optuna_search_records_its_proposals_and_a_rebuild_replays_them(project):
    p = project
    p.forgefile(RUN_SEARCH.format(budget=6))
    events = p.events("search:lr", "-j", "2")
    proposed = [t for e in events if e.get("event") == "proposed" for t in e["trials"]]
    assert [t["number"] for t in proposed] == list(range(6)) and {t["by"] for t in proposed} == {"tpe"}
    trials = record(p)["trials"]
    assert [t["params"] for t in trials] == [t["params"] for t in proposed]
    first = outcome(p)
    losses = [t["metric"]["value"] for t in first["trials"]]
    assert len(losses) == 6 and first["best"]["metric"]["value"] == min(losses)
    for t in trials:  # 3 significant digits, inside the space
        lr = t["params"]["params.lr"]
        assert 1e-5 <= lr <= 1.0 and float(f"{lr:.3g}") == lr and t["params"]["params.width"] in range(1, 7)
    assert first["trials"][0]["target"] == "run:train[lr={},width={}]".format(*trials[0]["params"].values())
    assert len(p.runs()) == len({json.dumps(t["params"], sort_keys=True) for t in trials})
    rows = [e for e in p.events("exp", "search:lr") if e["event"] == "cell"]  # the table agents read
    assert [r["values"] for r in rows] == [t["params"] for t in trials]
    assert [r["metrics"]["loss"]["value"] for r in rows if r["best"]] == [min(losses)]

    # from scratch: no cache at all; the record is replayed, the optimiser never asked
    shutil.rmtree(os.path.join(p.root, ".forge"))
    events = p.events("search:lr", "-j", "2")
    assert not [e for e in events if e.get("event") == "proposed"]
    assert outcome(p) == first and record(p)["trials"] == trials
    assert len(p.runs()) == len({json.dumps(t["params"], sort_keys=True) for t in trials})  # rebuilt, not asked

    # without the record, the seeded optimiser proposes the same again from the same history (-j 2: two
    # proposals at a time, each from the trials finished before the pair)
    os.unlink(os.path.join(p.root, "searches/lr.json"))
    p.run("search:lr", "-j", "2")
    assert [t["params"] for t in record(p)["trials"]] == [t["params"] for t in trials] and p.runs() == []

    # raising the budget continues the study: one proposal more, one trial built
    p.forgefile(RUN_SEARCH.format(budget=7))
    events = p.events("search:lr")
    assert [t["number"] for e in events if e.get("event") == "proposed" for t in e["trials"]] == [6]
    assert len(record(p)["trials"]) == 7 and len(outcome(p)["trials"]) == 7


def test_tpe_finds_a_better_point_than_its_random_start(project):
    """The optimiser really optimises: after its 3 random trials, TPE's proposals beat them."""
    p = project
    p.forgefile(RUN_SEARCH.format(budget=16))
    p.run("search:lr")
    losses = [t["metric"]["value"] for t in outcome(p)["trials"]]
    assert min(losses[3:]) < min(losses[:3]) / 2, losses


def test_an_agent_command_drives_a_search_and_its_rationale_is_kept(search_project):
    p = search_project
    p.write("agent.py", AGENT)
    forgefile(p, budget=2, extra='optimizer = "agent"\nagent = ["python3", "agent.py"]')
    p.run("search:lr", timeout=900)
    trials = record(p)["trials"]
    assert [t["rationale"] for t in trials] == [f"saw {n} trials; doubling the best lr" for n in range(2)]
    assert [t["params"] for t in trials] == [{"train.lr": 0.001, "train.steps": 3},  # it read the history:
                                             {"train.lr": 0.002, "train.steps": 3}]  # trial 0, complete
    assert [t["by"] for t in outcome(p)["trials"]] == ["agent"] * 2

    p.write("agent.py", 'print(\'{"params": {"train.lr": 5, "train.steps": 3}}\')\n')
    forgefile(p, budget=3, extra='optimizer = "agent"\nagent = ["python3", "agent.py"]')
    proc = p.run("search:lr", expect=2)
    assert proc.stderr.strip() == ("forgebuild: search:lr: the agent `python3 agent.py` proposed train.lr = 5: "
                                   "expected a number in [0.0001, 0.03]")
    assert len(record(p)["trials"]) == 2  # nothing recorded for a refused proposal


PRUNED = """
[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = 32
train = { lr = 1e-3, steps = 150, batch_size = 4 }
threads = 1
log_every = 2

[search.lr]
target = "model:sft"
objective = { target = "model:sft", metric = "train_loss", goal = "min" }
space = { "train.lr" = { loguniform = [1e-8, 1e-2] } }
budget = 3
optimizer = "agent"
agent = ["python3", "agent.py"]
prune = { metric = "loss", startup = 2, warmup = 4 }
"""

FIXED_AGENT = '''
import json, sys
seen = json.load(sys.stdin)
lr = [3e-3, 2e-3, 1e-8][len(seen["trials"])]
print(json.dumps({"params": {"train.lr": lr}, "rationale": "a fixed list"}))
'''


def test_a_trial_whose_curve_trails_the_others_is_pruned_and_never_built_again(recipe_project):
    p = recipe_project
    p.write("agent.py", FIXED_AGENT)
    p.forgefile(p.preamble + PRUNED)
    events = p.events("search:lr", timeout=900)
    pruned = [t for e in events if e.get("event") == "pruned" for t in e["trials"]]
    assert [t["number"] for t in pruned] == [2] and 4 <= pruned[0]["step"] < 150
    assert events[-1]["ok"]  # the search itself: two trials judged, one pruned
    trials = record(p)["trials"]
    assert [bool(t.get("pruned")) for t in trials] == [False, False, True]
    stopped = trials[2]["pruned"]
    assert str(stopped["step"]) in stopped["intermediate"]
    rows = outcome(p)["trials"]
    assert rows[2]["metric"] is None and rows[2]["pruned"] == stopped and outcome(p)["best"]["number"] in (0, 1)
    states = [e["state"] for e in p.events("exp", "search:lr") if e["event"] == "cell"]
    assert states == ["built", "built", "pruned"]

    shutil.rmtree(os.path.join(p.root, ".forge"))  # from scratch: the pruned trial is never built again
    built = p.build("search:lr", timeout=900)
    assert "model:sft[lr=1e-08]" not in built and built["model:sft[lr=0.003]"] == "built"


def test_a_search_that_cannot_be_judged_or_recorded_says_so(project):
    p = project
    p.forgefile(RUN_SEARCH.format(budget=2).replace('metric = "loss"', 'metric = "los"'))
    proc = p.run("search:lr", expect=2)
    cell = "run:score[lr={},width={}]".format(*record(p)["trials"][0]["params"].values())
    assert proc.stderr == (f"forgebuild: {cell} has no number los for {cell.replace('score', 'train')}: name one "
                           "of its metrics in the search's objective.metric (and remove the record to start again)\n")
    # the record was made for objective.metric = "los": fixing it is another study
    p.forgefile(RUN_SEARCH.format(budget=2))
    assert p.run("status", expect=2).stderr == (
        "Forgefile.toml:10: error: search:lr: searches/lr.json records trials of another study (objective "
        "changed): remove the file, or set `record` to a new one, to start a new search\n")
    p.forgefile(RUN_SEARCH.format(budget=2) + 'record = "searches/../../lr.json"\n')
    assert p.run("status", expect=2).stderr == (
        "Forgefile.toml:16: error: search:lr: key 'record': must be a path inside the project\n")
