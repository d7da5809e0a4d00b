"""continue: continued pretraining of a model target on new data (continuous adaptation).

    [model.base-2026]
    recipe = "continue"
    base = "model:base"
    corpus = "corpus:new-docs"       # tokenized here with the base's tokenizer; or tokens = "tokens:new"
    seq_len = 256
    train = { lr = 1e-3, steps = 200, warmup_steps = 10 }

The same training loop as pretrain (packed rows, schedule, holdout loss,
checkpoints), starting from the base's weights and keeping its tokenizer.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train
from forgebuild.rules.model.pretrain import data_problems

version = "1"


class Params(Recipe):
    recipe: Literal["continue"]
    base: str = Field(description="the model target to continue from; its tokenizer is kept")
    tokens: str | None = Field(None, description="a tokens target made with the base's tokenizer")
    corpus: str | None = Field(None, description="a corpus target, tokenized here with the base's tokenizer (cached)")
    seq_len: int | None = Field(None, ge=8, le=limits.TOKENS, description="with `corpus`: tokens per training row (default 256)")
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")
    budget_tokens: int | None = Field(None, ge=1, le=limits.AMOUNT, description="train on this many tokens (sets the steps)")
    eval_rows: int = Field(256, ge=1, le=limits.AMOUNT, description="holdout rows in each eval")
    lora: Lora | None = Field(None, description="continue as a LoRA adapter instead of every weight")


def inputs(params: Params) -> dict:
    found = {"base": params.base}
    for key in ("tokens", "corpus"):
        if getattr(params, key):
            found[key] = getattr(params, key)
    return found


def environment(params) -> dict:
    return {"libraries": ["torch", "transformers", "safetensors", "tokenizers", "peft"]}


def check(params: Params) -> list[tuple[str, str]]:
    problems = data_problems(params)
    if params.budget_tokens and params.train.steps:
        problems.append(("budget_tokens", "give either budget_tokens or train.steps, not both"))
    return problems


DEPS = Deps({"base": "model", "tokens": "tokens", "corpus": "corpus"})


def build(ctx) -> None:
    from forgebuild.rules.model import training
    from forgebuild.rules.model.pretrain import fit, packed_tokens_with

    p = ctx.params
    folder = packed_tokens_with(ctx, p, ctx.inputs["base"], p.base)  # before a launch: see pretrain
    training.prepare(ctx)
    tokenizer = training.load_tokenizer(ctx.inputs["base"])
    model = training.load_model(ctx, ctx.inputs["base"], p.base)
    if p.lora:
        from peft import get_peft_model

        model = get_peft_model(model, training.lora_config(p.lora))
    fit(ctx, model, tokenizer, folder)
