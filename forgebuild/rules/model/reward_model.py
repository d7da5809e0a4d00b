"""reward: a reward model (a sequence classifier with one output) trained on preference pairs
with TRL's RewardTrainer, full weights or LoRA.

    [model.rm]
    recipe = "reward"
    base = "model:sft"
    data = "dataset:pref"            # a preference dataset: prompt, chosen, rejected
    max_length = 256
    train = { lr = 1e-4, steps = 200, batch_size = 8 }

The base's weights are loaded as AutoModelForSequenceClassification with `num_labels = 1`
(a new, seeded score head on the last non-pad token). The loss is the Bradley-Terry one,
-log sigmoid(r(prompt + chosen) - r(prompt + rejected)); the training log has per step
`accuracy` (chosen scored higher), `margin`, `mean_reward`, `min_reward`, `max_reward`.
Pairs longer than `max_length` tokens are dropped, not cut. The artifact loads with
AutoModelForSequenceClassification.from_pretrained(path); a grpo target uses it as
`rewards = [{ model = "model:rm" }]`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train

version = "1"
FORMATS = ("preference",)


class Params(Recipe):
    recipe: Literal["reward"]
    base: str = Field(description="the model target whose weights start the reward model (a new score head is added)")
    data: str = Field(description="a dataset target in preference format (prompt, chosen, rejected)")
    split: str = Field("train", description="the dataset split to train on")
    eval_split: str | None = Field(
        None, description="a split for the eval loss and accuracy every train.eval_every steps")
    max_length: int = Field(512, ge=8, le=limits.TOKENS, description="tokens per prompt + completion; longer pairs are dropped")
    center_rewards: float | None = Field(
        None, ge=0, description="coefficient of a penalty on the mean squared reward, which keeps scores near 0 "
                                "(the paper's value: 0.01); unset: none")
    lora: Lora | None = Field(None, description="train a LoRA adapter (and the score head) instead of every weight")
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")


def environment(params) -> dict:
    return {"libraries": ["torch", "transformers", "trl", "peft", "safetensors", "datasets"]}


DEPS = Deps({"base": "model", "data": ("dataset", FORMATS)})


def load_classifier(ctx, folder: str, address: str):
    """The base's weights as a one-output sequence classifier, in float32."""
    import os

    import torch
    from transformers import AutoModelForSequenceClassification

    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ctx.bad_input(f"{address} is not a model folder: it has no config.json")
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)


def lora_config(lora):
    """Like training.lora_config, for a classifier: SEQ_CLS keeps the new score head trainable (and saved)."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="SEQ_CLS",
                      target_modules=lora.target_modules)


def build(ctx) -> None:
    from forgebuild.rules.model import training

    training.prepare(ctx)
    from trl import RewardConfig, RewardTrainer

    p = ctx.params
    data, fmt = training.dataset_split(ctx, p.data, ctx.inputs["data"], p.split, FORMATS)
    evaluation = training.dataset_split(ctx, p.data, ctx.inputs["data"], p.eval_split, FORMATS)[0] \
        if p.eval_split else None
    tokenizer = training.load_tokenizer(ctx.inputs["base"])
    if tokenizer.pad_token is None:  # the classifier finds each sequence's last token by the pad id
        tokenizer.pad_token = tokenizer.eos_token
    model = load_classifier(ctx, ctx.inputs["base"], p.base)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = training.trainer_args(ctx, RewardConfig, evaluating=evaluation is not None, max_length=p.max_length,
                                 center_rewards_coefficient=p.center_rewards)
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, eval_dataset=evaluation,
                            processing_class=tokenizer, peft_config=lora_config(p.lora) if p.lora else None)
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ctx.bad_input(f"{p.data} split '{p.split}': every pair is longer than max_length ({p.max_length} "
                            f"tokens); raise max_length")
    if kept < len(data):
        ctx.log(f"{len(data) - kept} of {len(data)} pairs are longer than max_length ({p.max_length}) and were dropped")
    training.train(ctx, trainer)
    training.save_trained(ctx, trainer, tokenizer, p.base,
                          config={"format": fmt, "rows": len(data), "rows_trained": kept, "task": "reward"})
