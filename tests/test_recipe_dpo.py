"""The dpo recipe through the real CLI: DPO, a weighted list of TRL losses with LoRA and an explicit
reference, ODPO, and the Forgefile and data errors a user can make."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("trl")

import tinylab  # noqa: E402

RUN = """
max_length = 40
threads = 1
train = { lr = 1e-3, steps = 4, batch_size = 8 }
"""
LOSSES = ("sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, "
          "apo_down, discopop, sft, sigmoid_norm, odpo")


def target(name: str, keys: str) -> str:
    return f'\n[model.{name}]\nrecipe = "dpo"\nbase = "model:base"\n{keys.strip()}\n{RUN}'


def artifact(project, address: str) -> str:
    return project.run("path", address).stdout.strip()


def log_rows(folder: str) -> list[dict]:
    with open(os.path.join(folder, "training_log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def step_rows(folder: str) -> list[dict]:
    return [row for row in log_rows(folder) if "loss" in row]


def tensors(folder: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def test_dpo_then_odpo_on_the_same_target(recipe_project):
    """Sigmoid DPO builds and loads; the same target with loss "odpo" (same seed, data order and
    everything else) trains to other weights, so the offset reached the loss."""
    from transformers import AutoModelForCausalLM

    project = recipe_project
    project.forgefile(project.preamble + target("pref", 'data = "dataset:pref"\nbeta = 0.1'))
    assert project.build("model:pref")["model:pref"] == "built"
    dpo = artifact(project, "model:pref")
    model = AutoModelForCausalLM.from_pretrained(dpo)
    assert model.config.model_type == "llama"
    rows = step_rows(dpo)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["rewards/margins"])
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen"} <= set(row)
        assert "offset" not in row
    # the policy starts as the reference: no margin, loss log(2)
    assert rows[0]["rewards/margins"] == 0.0 and rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert any(r["rewards/margins"] != 0.0 for r in rows[1:])
    with open(os.path.join(dpo, "metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["steps"] == 4
    with open(os.path.join(dpo, "training_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert (config["params"]["loss"], config["reference"]) == (["sigmoid"], "model:base")
    dpo_weights = tensors(dpo)

    odpo_keys = 'data = "dataset:pref"\nbeta = 0.1\nloss = "odpo"\nalpha = 0.5'
    project.forgefile(project.preamble + target("pref", odpo_keys))
    assert project.build("model:pref")["model:pref"] == "built"
    odpo = artifact(project, "model:pref")
    AutoModelForCausalLM.from_pretrained(odpo)
    rows = step_rows(odpo)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # scores are 1.0 and 0.1..0.9: every offset 0.5 * log(diff) lies in [0.5 log 0.1, 0.5 log 0.9]
    for row in rows:
        assert 0.5 * math.log(0.1) - 1e-6 <= row["offset"] <= 0.5 * math.log(0.9) + 1e-6, row
    # at step 1 policy = reference: the loss is the mean of -log sigmoid(-offset) < log(2) (negative offsets)
    assert rows[0]["loss"] < math.log(2)
    odpo_weights = tensors(odpo)
    assert dpo_weights.keys() == odpo_weights.keys()
    # with alpha = 0 the two builds are bit-identical; with the offset they part by about lr * steps
    assert max((dpo_weights[k] - odpo_weights[k]).abs().max().item() for k in dpo_weights) > 1e-3


def test_weighted_loss_list_with_lora_and_reference(recipe_project):
    from transformers import AutoModelForCausalLM

    project = recipe_project
    project.forgefile(project.preamble + target("mix", """
        data = "dataset:pref"
        reference = "model:base"
        loss = ["sigmoid", "sft"]
        loss_weights = [1.0, 0.5]
        lora = { r = 4, alpha = 8, merge = true }
    """.replace("\n        ", "\n")))
    assert project.build("model:mix")["model:mix"] == "built"
    folder = artifact(project, "model:mix")
    AutoModelForCausalLM.from_pretrained(folder)  # merged: full weights, no adapter files
    assert not os.path.exists(os.path.join(folder, "adapter_config.json"))
    rows = step_rows(folder)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # sigmoid starts at log(2); the sft term, 0.5 * the NLL of the chosen tokens (about 6 nats for the tiny
    # base: 3 weighted, 6 if the weight were dropped), comes on top of it
    assert rows[0]["rewards/margins"] == 0.0
    assert math.log(2) + 1.5 < rows[0]["loss"] < math.log(2) + 4.5
    base = tensors(artifact(project, "model:base"))
    assert any(not (base[k] == v).all() for k, v in tensors(folder).items())


ERROR_CASES = {
    "unknown_loss": ('data = "dataset:pref"\nloss = "sigmod"', 6,
                     f"key 'loss': expected one of {LOSSES}, got string \"sigmod\" (did you mean 'sigmoid'?)"),
    "unknown_loss_in_list": ('data = "dataset:pref"\nloss = ["sigmoid", "ipoo"]', 6,
                             f"key 'loss[1]': expected one of {LOSSES}, got string \"ipoo\" (did you mean 'ipo'?)"),
    "alpha_without_odpo": ('data = "dataset:pref"\nalpha = 0.5', 6,
                           "key 'alpha': applies to loss \"odpo\" only (the offset's scale)"),
    "weights_length": ('data = "dataset:pref"\nloss = ["sigmoid", "sft"]\nloss_weights = [1.0]', 7,
                       "key 'loss_weights': has 1 weight for 2 losses: give one per entry of `loss`"),
    "odpo_combined": ('data = "dataset:pref"\nloss = ["odpo", "sft"]', 6,
                      "key 'loss': \"odpo\" is a loss of its own: it cannot be combined with other losses"),
    "exo_without_smoothing": ('data = "dataset:pref"\nloss = "exo_pair"', 2,
                              "key 'label_smoothing': loss \"exo_pair\" needs label_smoothing > 0 "
                              "(the EXO paper uses 1e-3)"),
    "sft_dataset": ('data = "dataset:sft"', 5,
                    "key 'data': dataset:sft is a 'prompt_completion' dataset; recipe \"dpo\" trains on "
                    "'preference' data"),
    "reference_not_a_model": ('data = "dataset:pref"\nreference = "dataset:pref"', 6,
                              "key 'reference': dataset:pref is a dataset target; 'reference' takes a model target"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_forgefile_errors(recipe_project, case):
    keys, line, message = ERROR_CASES[case]
    project = recipe_project
    offset = project.preamble.count("\n")  # the table's header is line offset + 2 (after a blank line)
    project.forgefile(project.preamble + target("dpo", keys))
    proc = project.run("model:dpo", expect=2)
    assert proc.stderr.splitlines() == [f"Forgefile.toml:{offset + line}: error: model:dpo: {message}"]
    assert not os.path.exists(os.path.join(project.root, ".forge", "out", "model"))


def test_odpo_needs_scores_in_every_row(recipe_project):
    project = recipe_project
    with open(os.path.join(project.root, "data", "pref.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:12]
    unscored = [dict(r) for r in rows]
    for key in ("score_chosen", "score_rejected"):
        del unscored[2][key]
    tied = [dict(r) for r in rows]
    tied[4]["score_rejected"] = tied[4]["score_chosen"]
    tinylab.write_jsonl(os.path.join(project.root, "data", "unscored.jsonl"), unscored)
    tinylab.write_jsonl(os.path.join(project.root, "data", "tied.jsonl"), tied)
    project.forgefile(project.preamble + """
[dataset.unscored]
source = "data/unscored.jsonl"
format = "preference"

[dataset.tied]
source = "data/tied.jsonl"
format = "preference"
""" + target("unscored", 'data = "dataset:unscored"\nloss = "odpo"')
        + target("tied", 'data = "dataset:tied"\nloss = "odpo"\nalpha = 2.0'))
    proc = project.run("model:unscored", expect=2)
    assert ('model:unscored: bad input: loss "odpo" needs score_chosen and score_rejected in every row of '
            "dataset:unscored (split 'train' row 3 has none)") in proc.stdout + proc.stderr
    proc = project.run("model:tied", expect=2)
    assert ('model:tied: bad input: loss "odpo" needs score_chosen > score_rejected in every row of dataset:tied; '
            "split 'train' row 5 has score_chosen 1 and score_rejected 1") in proc.stdout + proc.stderr


def test_module_imports_no_training_libraries():
    code = ("import sys, forgebuild.rules.model.dpo; "
            "print([m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
