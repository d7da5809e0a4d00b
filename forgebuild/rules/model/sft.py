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

A vision-language base (recipe "vlm", or an imported image-text-to-text model) trains on an
images target instead (`data = "images:NAME"`, caption, vqa or messages), with its processor.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train, modality_problems

version = "1"
FORMATS = ("prompt_completion", "messages")
IMAGE_FORMATS = ("caption", "vqa", "messages")


class Params(Recipe):
    recipe: Literal["sft"]
    base: str = Field(description="the model target to fine-tune")
    data: str = Field(description="a dataset target in prompt_completion or messages format; for a vision-language "
                                  "base, an images target (caption, vqa or messages)")
    split: str = Field("train", description="the dataset split to train on")
    eval_split: str | None = Field(None, description="a split for the eval loss every train.eval_every steps")
    max_length: int = Field(512, ge=8, le=limits.TOKENS, description="tokens per example (longer ones are cut)")
    completion_only: bool = Field(True, description="loss on completions / assistant turns only")
    packing: bool = Field(False, description="pack several examples into each max_length row")
    lora: Lora | None = Field(None, description="train a LoRA adapter instead of every weight")
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")


def environment(params) -> dict:
    images = ["pillow"] if params.data.startswith("images:") else []
    return {"libraries": ["torch", "transformers", "trl", "peft", "safetensors", "datasets", *images]}


def check(params: Params) -> list[tuple[str, str]]:
    if params.packing and params.data.startswith("images:"):
        return [("packing", "image-text examples are not packed (each carries its own images): set packing = false")]
    return []


DEPS = Deps({"base": "model", "data": ("dataset", FORMATS)}, (modality_problems,), images={"data": IMAGE_FORMATS})


def build(ctx) -> None:
    from forgebuild.rules.model import training, vision

    p = ctx.params
    problem = vision.modality_problem(ctx, ctx.inputs["base"])
    if problem:
        raise ctx.bad_input(problem)
    training.prepare(ctx)
    from trl import SFTConfig, SFTTrainer

    if p.data.startswith("images:"):
        model = vision.load_vlm(ctx, ctx.inputs["base"], p.base)
        vision.fine_tune(ctx, model, vision.load_processor(ctx.inputs["base"]), p.base, IMAGE_FORMATS)
        return
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
