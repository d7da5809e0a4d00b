"""sft: supervised fine-tuning with TRL's SFTTrainer, full weights or LoRA.

    [model.sft]
    recipe = "sft"
    base = "model:base"
    data = "dataset:chat"            # a prompt_completion or messages dataset
    max_length = 256
    lora = { r = 16, alpha = 32, merge = true }
    train = { lr = 1e-3, epochs = 2, batch_size = 16 }

The loss is on the completions only (prompt_completion data) or on the assistant
turns only (messages data, through the chat template's generation markers) unless
`completion_only = false`. With `lora`, only the adapter trains; `merge = true`
writes merged full weights, `merge = false` the adapter folder alone.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train

version = "1"
FORMATS = ("prompt_completion", "messages")


class Params(Recipe):
    recipe: Literal["sft"]
    base: str = Field(description="the model target to fine-tune")
    data: str = Field(description="a dataset target in prompt_completion or messages format")
    split: str = Field("train", description="the dataset split to train on")
    eval_split: str | None = Field(None, description="a split for the eval loss every train.eval_every steps")
    max_length: int = Field(512, ge=8, le=limits.TOKENS, description="tokens per example (longer ones are cut)")
    completion_only: bool = Field(True, description="loss on completions / assistant turns only")
    packing: bool = Field(False, description="pack several examples into each max_length row")
    lora: Lora | None = Field(None, description="train a LoRA adapter instead of every weight")
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")


def environment(params) -> dict:
    return {"libraries": ["torch", "transformers", "trl", "peft", "safetensors", "datasets"]}


DEPS = Deps({"base": "model", "data": ("dataset", FORMATS)})


def build(ctx) -> None:
    from forgebuild.rules.model import training

    training.prepare(ctx)
    from trl import SFTConfig, SFTTrainer

    p = ctx.params
    data, fmt = training.dataset_split(ctx, p.data, ctx.inputs["data"], p.split, FORMATS)
    evaluation = training.dataset_split(ctx, p.data, ctx.inputs["data"], p.eval_split, FORMATS)[0] \
        if p.eval_split else None
    tokenizer = training.load_tokenizer(ctx.inputs["base"])
    model = training.load_model(ctx, ctx.inputs["base"], p.base)
    only = {"completion_only_loss": p.completion_only} if fmt == "prompt_completion" \
        else {"assistant_only_loss": p.completion_only}
    args = training.trainer_args(ctx, SFTConfig, evaluating=evaluation is not None, max_length=p.max_length,
                                 packing=p.packing, padding_free=False, **only)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=training.lora_config(p.lora) if p.lora else None)
    training.train(ctx, trainer)
    training.save_trained(ctx, trainer, tokenizer, p.base, config={"format": fmt, "rows": len(data)})
