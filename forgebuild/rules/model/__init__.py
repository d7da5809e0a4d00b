"""model: a trained language model, made by one of the training recipes.

    [model.base]
    recipe = "pretrain"              # import, pretrain, continue, sft, dpo, online-dpo, reward, grpo, select, vlm
    tokens = "tokens:web"
    tokenizer = "tokenizer:bpe"
    arch = { family = "llama", hidden = 128, layers = 2, heads = 4 }
    train = { lr = 3e-3, steps = 200 }

Each recipe is a module of its own in `forgebuild.rules.model` with its own Params,
version, build and `DEPS` (what its target references must be); this rule picks the
recipe a table names, and from `DEPS` it takes the recipe's inputs (the targets it
names, unless the recipe says more with `inputs(params)`) and checks each is written
KIND:NAME before the recipe's own `check(params)`. The artifact is
a Hugging Face `save_pretrained` folder (safetensors and tokenizer) with
training_config.json, training_log.jsonl and metrics.json beside the weights.
See docs/rules/model.md.
"""
from __future__ import annotations

import importlib
import os
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

version = "1"
# A warm worker's imports for a model stage (engine/warm.py): training.py first (it sets HF_HUB_OFFLINE & co.
# before transformers reads them), then the lazy imports each recipe pays after `import trl` (here 0.4 s
# transformers.trainer, 0.8 s TRL's SFT, DPO and GRPO trainers)
preload = ("forgebuild.rules.model.training", "transformers.trainer", "trl.trainer.sft_trainer",
           "trl.trainer.dpo_trainer", "trl.trainer.grpo_trainer")

RECIPES = {
    "import": "hf_import",
    "pretrain": "pretrain",
    "continue": "continued",
    "sft": "sft",
    "dpo": "dpo",
    "online-dpo": "online_dpo",
    "reward": "reward_model",
    "grpo": "grpo",
    "select": "select",
    "vlm": "vlm",
}

# what every training recipe imports (forgebuild/rules/model/training.py); all in the `train` extra
TRAIN_MODULES = ("torch", "transformers", "trl", "peft", "accelerate", "safetensors", "datasets")


class RecipeChoice(BaseModel):
    """What a table is validated against when its `recipe` is missing or unknown."""
    model_config = ConfigDict(extra="allow")
    recipe: Literal[tuple(RECIPES)] = Field(description="the training method")


def recipe_module(name: str):
    return importlib.import_module(f"forgebuild.rules.model.{RECIPES[name]}")


def params_model(raw: dict):
    name = raw.get("recipe") if isinstance(raw, dict) else None
    # `recipe = ["sft"]` is a list: unhashable, so look it up only when it is a string
    return recipe_module(name).Params if isinstance(name, str) and name in RECIPES else RecipeChoice


def param_shapes() -> dict:
    return {name: recipe_module(name).Params for name in RECIPES}


def _union():
    return Annotated[Union[tuple(recipe_module(n).Params for n in RECIPES)], Field(discriminator="recipe")]


def __getattr__(name):
    # `Params` (for the JSON schema) imports every recipe module: built on first use only.
    if name == "Params":
        return _union()
    raise AttributeError(name)


def version_of(params) -> str:
    return f"{version}/{params.recipe}-{recipe_module(params.recipe).version}"


def inputs(params) -> dict:
    module = recipe_module(params.recipe)
    own = getattr(module, "inputs", None)
    return own(params) if own else module.DEPS.references(params)


def external_inputs(params) -> dict:
    found = getattr(recipe_module(params.recipe), "external_inputs", None)
    return found(params) if found else {}


def environment(params) -> dict:
    module = recipe_module(params.recipe)
    found = getattr(module, "environment", None)
    return found(params) if found else {"libraries": ["torch", "transformers", "safetensors"]}


def check(params) -> list:
    from forgebuild.rules.model.common import reference_problems

    module = recipe_module(params.recipe)
    declared, own = getattr(module, "DEPS", None), getattr(module, "check", None)  # "import" references no target
    return (reference_problems(params, declared.kinds) if declared else []) + (own(params) if own else [])


def requires(params) -> dict:
    """What a training stage imports, by extra (an import only copies a folder)."""
    if params.recipe == "import":
        return {}
    modules = dict.fromkeys(TRAIN_MODULES, "train")
    if params.recipe == "vlm" or str(getattr(params, "data", "")).startswith("images:"):
        modules["PIL"] = "train"  # images are opened with Pillow
    if getattr(getattr(params, "launch", None), "backend", None) == "deepspeed":
        modules["deepspeed"] = "train"
    if getattr(params, "track", None) is not None:
        modules.update(params.track.modules())
    return modules


def forge_defaults() -> dict:
    """`[forge] launch` and `[forge] track`: the launch and tracking of every training stage that sets none."""
    from forgebuild.rules.model.common import Launch, Track

    return {"launch": Launch, "track": Track}


def resources(runtime: dict) -> dict:
    """A stage on `launch.processes` processes asks for that many GPUs, or that many times its threads."""
    from forgebuild.rules import default_resources

    return default_resources(runtime, (runtime.get("launch") or {}).get("processes", 1))


def nodes(runtime: dict) -> int:
    return (runtime.get("launch") or {}).get("nodes") or 1


def join_launch(work: str) -> dict | None:
    from forgebuild.rules.model.launch import LAUNCH_FILE, read_launch_file

    return read_launch_file(os.path.join(work, LAUNCH_FILE))


def join_argv(launch: dict, rank: int) -> list[str]:
    from forgebuild.rules.model.launch import torchrun_argv

    return torchrun_argv(launch["nodes"], launch["processes"], rank, launch["master_addr"], launch["master_port"],
                         launch["context_file"])


def check_inputs(params, files: dict) -> list:
    found = getattr(recipe_module(params.recipe), "check_inputs", None)
    return found(params, files) if found else []


def check_deps(params, deps: dict) -> list:
    declared = getattr(recipe_module(params.recipe), "DEPS", None)  # "import" references no target
    return declared.problems(params, deps) if declared else []


def build(ctx) -> None:
    recipe_module(ctx.params.recipe).build(ctx)
