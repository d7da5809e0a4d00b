"""Recipes declare what their references must be as data (`DEPS`), and one checker reads it, in process:
the planner's messages for a wrong kind, a wrong dataset format and an adapter-only base, and a check of
the declarations themselves against each recipe's parameters."""
from __future__ import annotations

import pytest

from forgebuild.errors import ForgefileError
from forgebuild.rules.model.common import Deps
from forgebuild.rules.model import RECIPES, recipe_module
from unitlab import lab  # noqa: F401  (a fixture)

# a pretrain model that is only planned (nothing trains), an sft on it that emits an adapter only
PROJECT = """
[corpus.c]
sources = ["data/sft.jsonl"]
text_field = "prompt"

[tokenizer.plain]
corpus = "corpus:c"
vocab_size = 300

[model.p]
recipe = "pretrain"
tokenizer = "tokenizer:plain"
corpus = "corpus:c"
arch = { family = "llama" }

[dataset.sft]
source = "data/sft.jsonl"
format = "prompt_completion"

[model.adapter]
recipe = "sft"
base = "model:p"
data = "dataset:sft"
lora = { merge = false }
"""


def test_one_declaration_gives_each_kind_of_problem(lab):
    lab.write("data/sft.jsonl", '{"prompt": "1+1=", "completion": "2"}\n')
    with pytest.raises(ForgefileError) as e:
        lab.plan(PROJECT + '\n[model.dpo]\nrecipe = "dpo"\nbase = "model:adapter"\ndata = "dataset:sft"\n'
                           'reference = "corpus:c"\n')
    assert str(e.value).splitlines() == [
        "Forgefile.toml:28: error: model:dpo: key 'base': model:adapter emits a LoRA adapter only "
        "(lora.merge = false); set merge = true there to build on its weights",
        "Forgefile.toml:29: error: model:dpo: key 'data': dataset:sft is a 'prompt_completion' dataset; "
        "recipe \"dpo\" trains on 'preference' data",
        "Forgefile.toml:30: error: model:dpo: key 'reference': corpus:c is a corpus target; 'reference' "
        "takes a model target",
    ]


@pytest.mark.parametrize("name", RECIPES)
def test_every_declared_key_is_a_reference_of_the_recipe(name):
    """A misspelt key would check nothing (its value reads as None), so each must be a field of Params."""
    module = recipe_module(name)
    declared = getattr(module, "DEPS", None)
    if name == "import":  # a folder or a hub id, never a target
        assert declared is None
        return
    assert isinstance(declared, Deps)
    assert set(declared.kinds) <= set(module.Params.model_fields), name


@pytest.mark.parametrize("recipe, key, shape, ok", [
    ("sft", "data", "prompt_completion", True), ("sft", "data", "samples", True), ("sft", "data", "preference", False),
    ("dpo", "data", "preference", True), ("dpo", "data", "prompts", False), ("reward", "data", "preference", True),
    ("grpo", "prompts", "prompts", True), ("online-dpo", "prompts", "prompts", True),
    ("grpo", "prompts", "prompt_completion", False),
])
def test_a_curate_target_is_data_of_the_format_its_shape_makes(lab, recipe, key, shape, ok):
    """Where a recipe takes a dataset it takes a curate target; its shape is checked as a declared format."""
    lab.write("data/sft.jsonl", '{"prompt": "1+1=", "completion": "2"}\n')
    rewards = 'rewards = ["exact"]\n' if key == "prompts" else ""
    text = PROJECT + (f'\n[curate.c]\nsamples = "data/sft.jsonl"\nshape = "{shape}"\n\n'
                      f'[model.m]\nrecipe = "{recipe}"\nbase = "model:p"\n{key} = "curate:c"\n{rewards}')
    if ok:
        assert "curate:c" in lab.plan(text).targets["model:m"].deps
        return
    with pytest.raises(ForgefileError) as e:
        lab.plan(text)
    fmt = "prompt_completion" if shape == "samples" else shape
    assert f"key '{key}': curate:c is a '{fmt}' dataset; recipe \"{recipe}\" trains on" in str(e.value)
