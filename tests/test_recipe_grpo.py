"""reward and grpo recipes: a reward model from preference pairs, and GRPO on the tiny base with rewards
from a project file, the built-ins and that reward model, through the real CLI."""
from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("trl")

import tinylab  # noqa: E402
from conftest import Project  # noqa: E402

REWARDS_PY = """\
def exact_answer(prompts, completions, answer, **kwargs):
    # 1 for the answer first, partial credit for digits (GRPO needs scores that differ within a group)
    scores = []
    for completion, wanted in zip(completions, answer):
        words = completion.split()
        if words[:1] == [wanted]:
            scores.append(1.0)
        else:
            digits = sum(ch.isdigit() for ch in completion)
            scores.append(min(0.5, 0.05 * digits) + 0.01 * len(words))
    return scores


def explode(prompts, completions, **kwargs):
    raise ValueError("no score today")
"""

TARGETS = """
[model.rm]
recipe = "reward"
base = "model:base"
data = "dataset:pref"
max_length = 48
train = { lr = 1e-3, steps = 8, batch_size = 8 }
threads = 1

[model.rl]
recipe = "grpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = ["rewards.py:exact_answer", { builtin = "exact", weight = 0.5 }]
generations = 4
max_completion_length = 8
temperature = 1.0
train = { lr = 1e-3, steps = 6, batch_size = 8 }
threads = 1

[model.rl-rm]
recipe = "grpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = [{ model = "model:rm", weight = 0.5 }, "exact"]
generations = 4
max_completion_length = 6
beta = 0.05
train = { lr = 1e-4, steps = 3, batch_size = 4 }
threads = 1

[model.boom]
recipe = "grpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = ["exact", "rewards.py:explode"]
generations = 2
max_completion_length = 4
train = { lr = 1e-4, steps = 2, batch_size = 4 }
threads = 1

[model.missing]
recipe = "grpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = ["rewards.py:exact_answr"]
generations = 2
max_completion_length = 4
train = { lr = 1e-4, steps = 2, batch_size = 4 }
threads = 1
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tiny_base):
    """One project for the tests that build: the reward model and the grpo models are built once."""
    project = Project(str(tmp_path_factory.mktemp("grpo")))
    tinylab.write_arith_data(project.root)
    project.write("rewards.py", REWARDS_PY)
    project.forgefile(tinylab.imported_base(tiny_base) + tinylab.DATASETS + TARGETS)
    return project


def artifact(project: Project, address: str) -> str:
    return project.run("path", address).stdout.strip()


def log_rows(path: str) -> list[dict]:
    with open(os.path.join(path, "training_log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def steps_of(path: str) -> list[dict]:
    return [r for r in log_rows(path) if "loss" in r and "step" in r]


def test_reward_model_builds_and_scores(lab, tiny_base):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert lab.build("model:rm")["model:rm"] == "built"
    path = artifact(lab, "model:rm")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id is not None

    rows = steps_of(path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for row in rows:
        for key in ("loss", "accuracy", "margin", "mean_reward"):
            assert math.isfinite(row[key]), (key, row)
    metrics = json.loads(open(os.path.join(path, "metrics.json")).read())
    assert metrics["steps"] == 8
    config = json.loads(open(os.path.join(path, "training_config.json")).read())
    assert config["recipe"] == "reward" and config["rows_trained"] == config["rows"] == 96

    # it scores: one number per text
    with open(os.path.join(lab.root, "data/pref.jsonl")) as f:
        pairs = [json.loads(line) for line in f][:32]
    texts = [p["prompt"] + p["chosen"] for p in pairs] + [p["prompt"] + p["rejected"] for p in pairs]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (64, 1) and torch.isfinite(scores).all()
    chosen, rejected = scores[:32, 0], scores[32:, 0]
    assert (chosen != rejected).any()
    # the backbone trained too (8 steps are too few to learn sums: the pairs' accuracy is not asserted)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    assert any(not torch.equal(a, b) for a, b in zip(model.model.parameters(), base.model.parameters()))


def test_grpo_with_code_and_builtin_rewards(lab, tiny_base):
    import torch
    from transformers import AutoModelForCausalLM

    assert lab.build("model:rl")["model:rl"] == "built"
    path = artifact(lab, "model:rl")
    model = AutoModelForCausalLM.from_pretrained(path)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert model.config.model_type == "llama"
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters())), "nothing was learned"

    rows = steps_of(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for row in rows:
        for key in ("loss", "reward", "reward_std", "rewards/rewards.py:exact_answer/mean", "rewards/exact/mean"):
            assert math.isfinite(row[key]), (key, row)
        assert 0 <= row["rewards/exact/mean"] <= 1
        # the logged reward is the weighted sum of the per-reward means
        assert row["reward"] == pytest.approx(
            row["rewards/rewards.py:exact_answer/mean"] + 0.5 * row["rewards/exact/mean"], abs=1e-5)
    assert any(r["reward_std"] > 0 for r in rows)  # partial credit: the groups had something to learn from
    assert os.path.exists(os.path.join(path, "metrics.json"))
    config = json.loads(open(os.path.join(path, "training_config.json")).read())
    assert config["rewards"] == [{"name": "rewards.py:exact_answer", "weight": 1.0}, {"name": "exact", "weight": 0.5}]


def test_editing_the_reward_file_makes_grpo_stale(lab):
    lab.build("model:rl", "model:rm")  # both fresh (built by the tests above, or here)
    original = lab.read("rewards.py")
    lab.write("rewards.py", original + "\n\ndef bonus(completions, **kwargs):\n    return [0.0 for _ in completions]\n")
    try:
        status = {e["target"]: e for e in lab.events("status", "model:rl", "model:rm")[:-1]}
        assert status["model:rl"]["state"] == "stale"
        assert status["model:rl"]["reason"] == "input rewards.py changed"
        assert status["model:rm"]["state"] == "fresh"
        assert lab.run("explain", "model:rl").stdout == "model:rl: stale\n  - input rewards.py changed\n"
    finally:
        lab.write("rewards.py", original)
    status = {e["target"]: e["state"] for e in lab.events("status", "model:rl")[:-1]}
    assert status["model:rl"] == "fresh"  # content-hashed: the same text again is the same input


def test_grpo_with_a_reward_model(lab):
    assert lab.build("model:rl-rm")["model:rl-rm"] in ("built", "cached")
    path = artifact(lab, "model:rl-rm")
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(path)
    rows = steps_of(path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("reward", "rewards/model:rm/mean", "rewards/exact/mean", "kl"):
            assert math.isfinite(row[key]), (key, row)
        assert row["reward"] == pytest.approx(0.5 * row["rewards/model:rm/mean"] + row["rewards/exact/mean"], abs=1e-4)


def test_a_raising_reward_fails_the_build(lab):
    events = lab.events("model:boom", expect=1)
    [failed] = [e for e in events if e["event"] == "failed"]
    assert failed["target"] == "model:boom"
    assert failed["reason"] == "reward rewards.py:explode raised ValueError: no score today"
    with open(failed["log"], encoding="utf-8") as f:
        log = f.read()
    assert "reward rewards.py:explode raised ValueError: no score today\nTraceback (most recent call last)" in log
    assert 'raise ValueError("no score today")' in log
    assert "no score today" in failed["log_tail"]


def test_a_missing_reward_function(lab):
    """Found before anything builds (the file is parsed, not imported): a Forgefile error, exit 2."""
    events = lab.events("model:missing", expect=2)
    assert not [e for e in events if e["event"] == "start"]
    [problem] = [e for e in events if e["event"] == "error"][0]["problems"]
    assert (problem["target"], problem["key"]) == ("model:missing", "rewards[0]")
    assert problem["message"] == "rewards.py has no function 'exact_answr' (did you mean 'exact_answer'?)"


GRPO = """
[model.rl]
recipe = "grpo"
base = "model:base"
prompts = "{prompts}"
rewards = [{rewards}]
generations = {generations}
train = {{ lr = 1e-4, steps = 2, batch_size = {batch} }}
"""


def forgefile_error(project, tables: str) -> str:
    project.forgefile(project.preamble + tables)
    proc = project.run("model:rl", expect=2)
    return proc.stderr


def line_of(project, text: str) -> int:
    lines = project.read("Forgefile.toml").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(text))


def test_grpo_needs_a_prompts_dataset(recipe_project):
    p = recipe_project
    err = forgefile_error(p, GRPO.format(prompts="dataset:sft", rewards='"exact"', generations=4, batch=8))
    line = line_of(p, "prompts = ")
    assert err == (f"Forgefile.toml:{line}: error: model:rl: key 'prompts': dataset:sft is a 'prompt_completion' "
                   f"dataset; recipe \"grpo\" trains on 'prompts' data\n")


def test_batch_size_must_hold_whole_groups(recipe_project):
    p = recipe_project
    err = forgefile_error(p, GRPO.format(prompts="dataset:prompts", rewards='"exact"', generations=3, batch=8))
    line = line_of(p, "train = ")
    assert err == (f"Forgefile.toml:{line}: error: model:rl: key 'train.batch_size': 8 is not a multiple of "
                   f"generations (3): a batch holds whole groups of 3 completions per prompt\n")


def test_a_model_reward_must_be_a_reward_model(recipe_project):
    p = recipe_project
    err = forgefile_error(p, GRPO.format(prompts="dataset:prompts", rewards='"exact", { model = "model:base" }',
                                         generations=4, batch=8))
    line = line_of(p, "rewards = ")
    assert err == (f"Forgefile.toml:{line}: error: model:rl: key 'rewards[1]': model:base is not a reward model "
                   f"(its recipe is \"import\"): build one with recipe = \"reward\"\n")


def test_reward_model_needs_preference_data(recipe_project):
    p = recipe_project
    p.forgefile(p.preamble + '\n[model.rm]\nrecipe = "reward"\nbase = "model:base"\ndata = "dataset:prompts"\n')
    err = p.run("model:rm", expect=2).stderr
    line = line_of(p, 'data = "dataset:prompts"')
    assert err == (f"Forgefile.toml:{line}: error: model:rm: key 'data': dataset:prompts is a 'prompts' dataset; "
                   f"recipe \"reward\" trains on 'preference' data\n")
