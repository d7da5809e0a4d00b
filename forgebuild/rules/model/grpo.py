"""grpo: reinforcement learning from rewards with TRL's GRPOTrainer (Group Relative Policy
Optimization), full weights or LoRA.

    [model.rl]
    recipe = "grpo"
    base = "model:sft"
    prompts = "dataset:prompts"      # a prompts dataset: prompt (+ answer, or other columns)
    rewards = ["rewards.py:exact_answer", { builtin = "exact", weight = 1.0 }, { model = "model:rm", weight = 0.5 }]
    generations = 4                  # completions sampled per prompt
    max_completion_length = 64
    temperature = 1.0
    beta = 0.0                       # KL coefficient against the base (0: no reference model)
    train = { lr = 1e-5, steps = 200, batch_size = 8 }

Each step samples `generations` completions for each of `batch_size / generations` prompts,
scores every completion with the weighted sum of the rewards, and pushes the policy towards the
completions that beat their group's mean. `batch_size` counts completions, so it must be a
multiple of `generations`. Rewards are described in forgebuild/rules/model/reward_functions.py: a function in a
project file (the file is an input: editing it rebuilds), a built-in (exact, format, length), or a
`reward` recipe model. Every dataset column reaches the reward functions by name (`answer`...).
The training log has per step `reward`, `reward_std`, `rewards/NAME/mean` and `rewards/NAME/std`
for each reward, the completion lengths and `loss`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train, adapter_base_problem
from forgebuild.rules.model.reward_functions import Reward, reward_file_problems, reward_inputs, reward_problems

version = "1"
FORMATS = ("prompts",)


class Params(Recipe):
    recipe: Literal["grpo"]
    base: str = Field(description="the model target to train (the policy)")
    prompts: str = Field(description="a dataset target in prompts format: a prompt column, plus any columns the "
                                     "rewards read (e.g. answer)")
    split: str = Field("train", description="the dataset split to train on")
    rewards: list[Reward] = Field(description=(
        "what scores a completion: FILE.py:FUNCTION, model:NAME (a `reward` recipe model), a built-in "
        "(exact, format, length), or a table with a weight, e.g. { builtin = \"exact\", weight = 0.5 }"))
    generations: int = Field(8, ge=2, le=limits.BATCH, description="completions sampled per prompt (the group)")
    max_completion_length: int = Field(256, ge=1, le=limits.TOKENS, description="new tokens per completion at most")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the smallest set of tokens with this "
                                                     "much probability")
    beta: float = Field(0.0, ge=0, description="KL coefficient against the base; 0 loads no reference model")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantages divided by the reward's std in the group, in the batch, or not at all")
    lora: Lora | None = Field(None, description="train a LoRA adapter instead of every weight")
    train: Train = Field(default_factory=Train, description=(
        "the schedule: see the `train` table; batch_size counts completions and must be a multiple of generations"))


def inputs(params: Params) -> dict:
    return {**DEPS.references(params), **reward_inputs(params.rewards)}


def environment(params) -> dict:
    return {"libraries": ["torch", "transformers", "trl", "peft", "safetensors", "datasets"]}


def check(params: Params) -> list[tuple[str, str]]:
    problems = reward_problems(params.rewards)
    batch, groups = params.train.batch_size, params.generations
    if batch % groups:
        problems.append(("train.batch_size", f"{batch} is not a multiple of generations ({groups}): a batch holds "
                                             f"whole groups of {groups} completions per prompt"))
    return problems


def check_inputs(params: Params, files: dict) -> list[tuple[str, str]]:
    return reward_file_problems(params.rewards, files)


def reward_model_problems(params: Params, deps: dict) -> list[tuple[str, str]]:
    """A `model:NAME` reward must be a merged model built with recipe "reward"."""
    problems = []
    for i, reward in enumerate(params.rewards):
        dep = deps.get(reward.model) if reward.model else None
        if dep is None:
            continue
        key = f"rewards.{i}"
        if dep["kind"] != "model":
            problems.append((key, f"{reward.model} is a {dep['kind']} target; a reward model is a model target"))
        elif getattr(dep["params"], "recipe", None) != "reward":
            problems.append((key, f"{reward.model} is not a reward model (its recipe is \"{dep['params'].recipe}\"): "
                                  f"build one with recipe = \"reward\""))
        elif (found := adapter_base_problem(reward, deps, "model")) is not None:
            problems.append((key, found[1].replace("to build on its weights", "to score with it")))
    return problems


DEPS = Deps({"base": "model", "prompts": ("dataset", FORMATS)}, (reward_model_problems,))


def load_reward_model(ctx, folder: str, address: str):
    """A reward-model target as TRL scores with it: the classifier (named by its address) and its tokenizer."""
    import os

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ctx.bad_input(f"{address} is not a model folder: it has no config.json")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build(ctx) -> None:
    from forgebuild.rules.model.reward_functions import RewardError, load_rewards

    p = ctx.params
    model_paths = {r.model: ctx.inputs[f"rewards.{i}"] for i, r in enumerate(p.rewards) if r.model}
    try:  # before torch is imported: a missing file or function fails at once
        funcs, weights, names = load_rewards(p.rewards, ctx.project_dir, model_paths=model_paths, log=ctx.log)
    except RewardError as e:  # an exception in the file: its traceback is in the stage log
        raise ctx.failure(str(e)) from None

    from forgebuild.rules.model import training

    training.prepare(ctx)
    from trl import GRPOConfig, GRPOTrainer

    processing = [None] * len(funcs)
    for i, (func, reward) in enumerate(zip(funcs, p.rewards)):
        if reward.model:  # a folder: loaded here, so that it is float32 and named by its address in the log
            funcs[i], processing[i] = load_reward_model(ctx, func, reward.model)

    data, fmt = training.dataset_split(ctx, p.prompts, ctx.inputs["prompts"], p.split, FORMATS)
    tokenizer = training.load_tokenizer(ctx.inputs["base"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = training.load_model(ctx, ctx.inputs["base"], p.base)
    args = training.trainer_args(
        ctx, GRPOConfig, num_generations=p.generations, max_completion_length=p.max_completion_length,
        temperature=p.temperature, top_p=p.top_p, beta=p.beta, scale_rewards=p.scale_rewards, reward_weights=weights)
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=data, processing_class=tokenizer,
                          reward_processing_classes=processing,
                          peft_config=training.lora_config(p.lora) if p.lora else None)
    trainer.reward_func_names = list(names)  # the log keys: rewards/<name as written>/mean
    try:
        training.train(ctx, trainer)
    except RewardError as e:  # raised inside a reward call; its traceback is already in the stage log
        raise ctx.failure(str(e)) from None
    training.save_trained(ctx, trainer, tokenizer, p.base, config={
        "format": fmt, "rows": len(data), "rewards": [{"name": n, "weight": w} for n, w in zip(names, weights)]})

