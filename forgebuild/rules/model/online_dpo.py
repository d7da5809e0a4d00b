"""online-dpo: DPO on the policy's own samples, with TRL's OnlineDPOTrainer.

    [model.odpo-online]
    recipe = "online-dpo"
    base = "model:sft"
    prompts = "dataset:prompts"      # a prompts dataset (prompt + optional answer)
    rewards = ["rewards.py:exact_answer", { builtin = "exact" }]   # or { model = "model:rm" }
    max_new_tokens = 8
    temperature = 0.9
    beta = 0.1
    loss = "sigmoid"                 # or "ipo"
    train = { lr = 5e-6, steps = 4, batch_size = 4 }

Each step samples two completions per prompt from the policy, scores both with the
weighted sum of `rewards` (code functions, built-ins and reward-model targets: see
forgebuild/rules/model/reward_functions.py), takes the higher-scoring one as chosen and the other
as rejected, and takes a DPO (or IPO) step against a frozen copy of the base. The
dataset's other columns (`answer`) reach the reward functions. A reward model must be
a target built with recipe "reward".

The training log has, per step, TRL's loss, `objective/scores` (mean weighted reward
of the sampled completions), `objective/scores_margin` (chosen minus rejected),
`objective/kl`, `rewards/chosen|rejected|margins|accuracies` (DPO's implicit rewards)
and, from this recipe, `scores/NAME`: each reward's own mean score, before weighting.
"""
from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train
from forgebuild.rules.model.reward_functions import Reward, RewardError, load_rewards, reward_file_problems, reward_inputs, reward_problems

version = "1"
FORMATS = ("prompts",)


class Params(Recipe):
    recipe: Literal["online-dpo"]
    base: str = Field(description="the model target to train (the policy; a frozen copy is the reference)")
    prompts: str = Field(description="a dataset target in prompts format: `prompt`, and optionally `answer` "
                                     "and other columns the rewards read")
    split: str = Field("train", description="the dataset split to train on")
    rewards: list[Reward] = Field(description=(
        "what judges the two samples of each prompt: a list of rewards (\"FILE.py:FUNCTION\", \"model:NAME\", "
        "a built-in, or tables with a `weight`); their weighted sum picks chosen and rejected"))
    max_new_tokens: int = Field(64, ge=1, le=limits.TOKENS, description="tokens sampled per completion")
    temperature: float = Field(0.9, gt=0, description="sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the top tokens holding this much "
                                                      "probability (1 keeps all)")
    max_length: int = Field(512, ge=8, le=limits.TOKENS, description="prompt plus completion tokens for the log-probabilities "
                                                   "(the prompt's left end is cut beyond it)")
    beta: float = Field(0.1, gt=0, description="strength of the pull towards the reference (IPO: its tau)")
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="sigmoid: DPO's loss; ipo: the IPO loss")
    missing_eos_penalty: float | None = Field(
        None, ge=0, description="subtracted from the score of a completion that does not end within max_new_tokens")
    lora: Lora | None = Field(None, description="train a LoRA adapter instead of every weight (the reference is "
                                                "then the base with the adapter off)")
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")


def inputs(params: Params) -> dict:
    return {**DEPS.references(params), **reward_inputs(params.rewards)}


def environment(params) -> dict:
    return {"libraries": ["torch", "transformers", "trl", "peft", "accelerate", "safetensors", "datasets"]}


def check(params: Params) -> list[tuple[str, str]]:
    problems = reward_problems(params.rewards)
    if params.max_new_tokens >= params.max_length:
        problems.append(("max_new_tokens", f"{params.max_new_tokens} leaves no room for the prompt in "
                                           f"max_length = {params.max_length}; make max_length larger"))
    return problems


def check_inputs(params: Params, files: dict) -> list[tuple[str, str]]:
    return reward_file_problems(params.rewards, files)


def reward_model_problems(params: Params, deps: dict) -> list[tuple[str, str]]:
    """A `model:NAME` reward must be a merged model built with recipe "reward"."""
    problems = []
    for i, reward in enumerate(params.rewards):
        dep = deps.get(reward.model) if reward.model else None
        if dep is None or dep["kind"] != "model":
            continue
        recipe = getattr(dep["params"], "recipe", None)
        lora = getattr(dep["params"], "lora", None)
        if recipe != "reward":
            problems.append((f"rewards.{i}", f"{reward.model} is built with recipe \"{recipe}\"; a reward model "
                                             f"must be a target built with recipe \"reward\""))
        elif lora is not None and not lora.merge:
            problems.append((f"rewards.{i}", f"{reward.model} emits a LoRA adapter only (lora.merge = false); set "
                                             f"merge = true there to score with it"))
    return problems


DEPS = Deps({"base": "model", "prompts": ("dataset", FORMATS)}, (reward_model_problems,))


class ScoreLog:
    """Each reward's own scores between two log lines, for `scores/NAME` in the training log."""

    def __init__(self, names=()):
        # every name from the start, in the rewards' order: with several processes, each flushes the
        # same names in the same order (their sums are added up position by position)
        self.values: dict[str, list[float]] = {name: [] for name in names}

    def add(self, name: str, values) -> None:
        found = self.values.setdefault(name, [])
        found.extend(float(v) for v in values if v is not None and v == v)  # None and NaN: no reward

    def flush(self, reduce=None) -> dict[str, float]:
        """The mean of each reward since the last flush. `reduce` (several processes: a sum over all of
        them, collective) makes it the mean over every process's completions: each process scores only
        its share of the batch, and the log line is rank 0's. Without it, 2 processes logged rank 0's
        half: objective/scores (TRL's, gathered) then differed from the weighted sum of scores/NAME
        (measured: 0.0896 against 0.0889 at step 1, 2 processes, 4 prompts)."""
        totals = [[sum(v), len(v)] for v in self.values.values()]
        if reduce is not None and totals:
            import torch

            totals = reduce(torch.tensor(totals, dtype=torch.float64)).tolist()
        means = {f"scores/{name}": s / n for name, (s, n) in zip(self.values, totals) if n}
        self.values = {name: [] for name in self.values}
        return means


class Scored:
    """A reward function as OnlineDPOTrainer calls it (synchronously), recording what it returns."""

    def __init__(self, func, name: str, log: ScoreLog):
        self.func, self.__name__, self.log = func, name, log

    def __call__(self, prompts=None, completions=None, **kwargs):
        import inspect

        result = self.func(prompts=prompts, completions=completions, **kwargs)
        if inspect.isawaitable(result):  # an async reward: the trainer does not await
            import asyncio

            result = asyncio.run(result)
        self.log.add(self.__name__, result)
        return result


def trainer_class():
    """OnlineDPOTrainer that adds the per-reward means to each logged step."""
    from trl.experimental.online_dpo import OnlineDPOTrainer

    class Trainer(OnlineDPOTrainer):
        score_log: ScoreLog | None = None

        def log(self, logs, *args, **kwargs):
            if self.score_log is not None and "loss" in logs:  # the step's log: every process gets here
                reduce = None
                if self.accelerator.num_processes > 1:
                    def reduce(totals):
                        return self.accelerator.reduce(totals.to(self.accelerator.device), "sum").cpu()
                logs = {**logs, **self.score_log.flush(reduce)}
            return super().log(logs, *args, **kwargs)

    return Trainer


def columns_problem(ctx) -> str | None:
    """builtin "exact" on a dataset without `answer`: told before torch is imported."""
    p = ctx.params
    path = os.path.join(ctx.inputs["prompts"], "dataset.json")
    if not os.path.isfile(path):
        return None  # dataset_split says what is wrong
    with open(path, encoding="utf-8") as f:
        columns = json.load(f).get("columns") or []
    if "answer" in columns:
        return None
    for i, reward in enumerate(p.rewards):
        if reward.builtin == "exact":
            return (f"rewards[{i}]: builtin \"exact\" compares with the `answer` column, which {p.prompts} "
                    f"does not have (columns: {', '.join(columns) or 'none'})")
    return None


def build(ctx) -> None:
    problem = columns_problem(ctx)
    if problem:
        raise ctx.bad_input(problem)
    from forgebuild.rules.model import training

    training.prepare(ctx)
    from trl.experimental.online_dpo import OnlineDPOConfig

    p = ctx.params
    data, fmt = training.dataset_split(ctx, p.prompts, ctx.inputs["prompts"], p.split, FORMATS)
    model_paths = {r.model: ctx.inputs[f"rewards.{i}"] for i, r in enumerate(p.rewards) if r.model}
    try:
        funcs, weights, names = load_rewards(p.rewards, ctx.project_dir, model_paths, log=ctx.log)
    except RewardError as e:
        raise ctx.failure(str(e)) from None
    scores = ScoreLog(names)
    funcs = [f if isinstance(f, str) else Scored(f, name, scores) for f, name in zip(funcs, names)]

    tokenizer = training.load_tokenizer(ctx.inputs["base"])
    model = training.load_model(ctx, ctx.inputs["base"], p.base)
    # The reference: a frozen copy of the base (with LoRA, the base itself with the adapter off).
    ref_model = None if p.lora else training.load_model(ctx, ctx.inputs["base"], p.base)
    args = training.trainer_args(
        ctx, OnlineDPOConfig, max_new_tokens=p.max_new_tokens, max_length=p.max_length, temperature=p.temperature,
        top_p=p.top_p, beta=p.beta, loss_type=p.loss, missing_eos_penalty=p.missing_eos_penalty,
        reward_weights=weights)
    trainer = trainer_class()(
        model=model, ref_model=ref_model, reward_funcs=funcs, args=args, train_dataset=data,
        processing_class=tokenizer, peft_config=training.lora_config(p.lora) if p.lora else None)
    trainer.score_log = scores
    if training.processes(ctx) > 1:
        # One sampling stream per process, as GRPOTrainer does itself: OnlineDPOTrainer seeds every
        # process alike, so with 2 processes both drew the same random numbers, and a prompt that
        # both held got the same two completions on both (seen: 4 prompts "What is 2+3?", 8 identical
        # completions on rank 0 and rank 1). Now the seed plus the process's rank (as a checkpoint
        # keeps each rank's RNG state, a resume goes on with it); one process is not reseeded at all,
        # so a single-process build samples exactly as before.
        from accelerate.utils import set_seed

        set_seed(ctx.seed, device_specific=True)
    for func, name in zip(trainer.reward_funcs, names):
        if not isinstance(func, Scored):  # a reward model, loaded by the trainer: record its logits
            func.register_forward_hook(
                lambda module, args, output, name=name: scores.add(name, output.logits[:, 0].tolist()))
    try:
        training.train(ctx, trainer)
    except RewardError as e:
        raise ctx.failure(str(e)) from None
    training.save_trained(ctx, trainer, tokenizer, p.base, config={
        "format": fmt, "rows": len(data), "rewards": [{"name": n, "weight": w} for n, w in zip(names, weights)]})
