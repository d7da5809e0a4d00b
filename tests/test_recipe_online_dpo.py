"""online-dpo: TRL's OnlineDPOTrainer on the tiny base, judged by rewards from the project, through the CLI."""
from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("trl")

REWARDS_PY = """\
def exact_answer(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip().startswith(a) else 0.0 for c, a in zip(completions, answer)]


def digits(completions, **kwargs):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def explode(prompts, completions, **kwargs):
    raise ValueError("no score today")
"""

ONLINE = """
[model.odpo-online]
recipe = "online-dpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = ["rewards.py:exact_answer", { builtin = "exact", weight = 0.5 }, { code = "rewards.py:digits", weight = 0.2 }]
max_new_tokens = 6
max_length = 48
temperature = 0.9
beta = 0.1
loss = "sigmoid"
train = { lr = 5e-5, steps = 4, batch_size = 4 }
threads = 1
"""


def rows(path: str) -> list[dict]:
    with open(os.path.join(path, "training_log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_builds_with_code_and_builtin_rewards(recipe_project):
    import torch
    from transformers import AutoModelForCausalLM

    project = recipe_project
    project.write("rewards.py", REWARDS_PY)
    project.forgefile(project.preamble + ONLINE)
    assert project.build("model:odpo-online")["model:odpo-online"] == "built"
    path = project.run("path", "model:odpo-online").stdout.strip()

    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama"
    steps = [r for r in rows(path) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for row in steps:
        assert math.isfinite(row["loss"])
        for key in ("objective/scores", "objective/scores_margin", "objective/kl", "rewards/accuracies",
                    "scores/rewards.py:exact_answer", "scores/exact", "scores/rewards.py:digits"):
            assert math.isfinite(row[key]), (key, row)
        # the chosen completion of each pair scored at least as high as the rejected one
        assert row["objective/scores_margin"] >= 0
        for key in ("scores/rewards.py:exact_answer", "scores/exact", "scores/rewards.py:digits"):
            assert 0 <= row[key] <= 1
        # the recipe's per-reward means add up, with the weights, to TRL's mean weighted score
        weighted = (row["scores/rewards.py:exact_answer"] + 0.5 * row["scores/exact"]
                    + 0.2 * row["scores/rewards.py:digits"])
        assert row["objective/scores"] == pytest.approx(weighted, rel=1e-5, abs=1e-6)
    assert json.loads(project.read(os.path.relpath(os.path.join(path, "metrics.json"), project.root)))["steps"] == 4
    base = AutoModelForCausalLM.from_pretrained(project.run("path", "model:base").stdout.strip())
    trained, before = model.state_dict(), base.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before), "training changed no weight"
    config = json.loads(project.read(os.path.relpath(os.path.join(path, "training_config.json"), project.root)))
    assert config["rewards"] == [{"name": "rewards.py:exact_answer", "weight": 1.0}, {"name": "exact", "weight": 0.5},
                                 {"name": "rewards.py:digits", "weight": 0.2}]
    assert config["params"]["loss"] == "sigmoid"


def test_reward_model_lora_and_ipo(recipe_project):
    from transformers import AutoModelForCausalLM

    project = recipe_project
    project.forgefile(project.preamble + """
[model.rm]
recipe = "reward"
base = "model:base"
data = "dataset:pref"
max_length = 48
train = { lr = 1e-3, steps = 3, batch_size = 4 }
threads = 1

[model.ipo]
recipe = "online-dpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = [{ model = "model:rm", weight = 2 }, { builtin = "length", target = 4, weight = 0.5 }]
max_new_tokens = 6
max_length = 48
loss = "ipo"
beta = 0.5
lora = { r = 4, alpha = 8, merge = true }
train = { lr = 1e-3, steps = 3, batch_size = 4 }
threads = 1
""")
    assert project.build("model:ipo")["model:ipo"] == "built"
    path = project.run("path", "model:ipo").stdout.strip()
    assert not os.path.exists(os.path.join(path, "adapter_config.json"))  # merged into full weights
    AutoModelForCausalLM.from_pretrained(path)
    steps = [r for r in rows(path) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for row in steps:
        assert row["beta"] == 0.5
        # the reward model's mean logit, recorded by the recipe, and the built-in's mean, weighted, are TRL's score
        assert row["objective/scores"] == pytest.approx(2 * row["scores/model:rm"] + 0.5 * row["scores/length"],
                                                        rel=1e-4, abs=1e-5)
        assert 0 <= row["scores/length"] <= 1
        # IPO's loss is (logits - 1 / (2 beta))^2: 1 while the policy is still the reference
        assert 0.5 < row["loss"] < 1.5, row


def test_forgefile_errors(recipe_project):
    project = recipe_project
    text = project.preamble + """
[model.wrong]
recipe = "online-dpo"
base = "model:base"
prompts = "dataset:sft"
rewards = ["exact", "model:base", { model = "model:rm-adapter", weight = 0.5 }]
max_new_tokens = 64
max_length = 64

[model.rm-adapter]
recipe = "reward"
base = "model:base"
data = "dataset:pref"
lora = { merge = false }
"""
    project.forgefile(text)
    proc = project.run("model:wrong", expect=2)
    first = text.splitlines().index("[model.wrong]") + 1  # the line numbers of the table's keys
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"Forgefile.toml:{first + 3}: error: model:wrong: key 'prompts': dataset:sft is a 'prompt_completion' "
        f"dataset; recipe \"online-dpo\" trains on 'prompts' data",
        f"Forgefile.toml:{first + 4}: error: model:wrong: key 'rewards[1]': model:base is built with recipe "
        f"\"import\"; a reward model must be a target built with recipe \"reward\"",
        f"Forgefile.toml:{first + 4}: error: model:wrong: key 'rewards[2]': model:rm-adapter emits a LoRA adapter "
        f"only (lora.merge = false); set merge = true there to score with it",
        f"Forgefile.toml:{first + 5}: error: model:wrong: key 'max_new_tokens': 64 leaves no room for "
        f"the prompt in max_length = 64; make max_length larger",
    ]


def test_a_failing_reward_fails_the_build_naming_it(recipe_project):
    project = recipe_project
    project.write("rewards.py", REWARDS_PY)
    project.write("data/questions.jsonl", "".join(
        json.dumps({"prompt": f"What is {a}+{b}?"}) + "\n" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]))
    project.forgefile(project.preamble + """
[dataset.questions]
source = "data/questions.jsonl"
format = "prompts"

[model.explodes]
recipe = "online-dpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = ["exact", "rewards.py:explode"]
max_new_tokens = 4
max_length = 32
train = { steps = 2, batch_size = 4 }
threads = 1

[model.no-answer]
recipe = "online-dpo"
base = "model:base"
prompts = "dataset:questions"
rewards = ["rewards.py:digits", { builtin = "exact", weight = 2 }]
max_new_tokens = 4
max_length = 32
train = { steps = 2, batch_size = 4 }
threads = 1
""")
    proc = project.run("model:explodes", expect=1)
    assert "FAILED  model:explodes: reward rewards.py:explode raised ValueError: no score today" \
        in proc.stdout.splitlines(), proc.stdout
    log = project.read(".forge/logs/model/explodes.log")
    assert 'raise ValueError("no score today")' in log  # the traceback is in the stage log, not on the terminal

    proc = project.run("model:no-answer", expect=2)
    assert ("FAILED  model:no-answer: rewards[1]: builtin \"exact\" compares with the `answer` column, which "
            "dataset:questions does not have (columns: prompt)") in proc.stdout.splitlines(), proc.stdout
