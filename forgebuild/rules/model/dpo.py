"""dpo: preference optimisation with TRL's DPOTrainer (every TRL loss), or ODPO.

    [model.dpo]
    recipe = "dpo"
    base = "model:sft"               # the policy to train
    data = "dataset:pref"            # a preference dataset (prompt, chosen, rejected)
    loss = "sigmoid"                 # any TRL DPO loss, a list of them, or "odpo"
    beta = 0.1
    max_length = 256
    lora = { r = 8, merge = true }
    train = { lr = 5e-6, epochs = 1, batch_size = 8 }

The frozen reference is the base's own weights unless `reference = "model:X"`
names another model (it must use the base's tokenizer). With `lora` and no
`reference`, the reference is the base with the adapter switched off.

`loss` takes every loss TRL's DPOConfig offers; a list such as ["sigmoid", "sft"]
adds them, weighted by `loss_weights`. "odpo" (alone) is DPO with an offset
(Amini et al., 2024): the policy must prefer the chosen completion by a margin of
`alpha * log(score_chosen - score_rejected)`, so every row of the dataset needs
both scores, the chosen one higher. The other losses ignore the scores.

A vision-language base trains on an images target in preference format instead
(`data = "images:NAME"`: an image, a prompt, chosen and rejected answers), with its
processor; TRL's DPOTrainer scores each answer given the image.
"""
from __future__ import annotations

import json
import os
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train, modality_problems

version = "1"
FORMATS = ("preference",)
SCORES = ("score_chosen", "score_rejected")
# TRL 1.16's DPOConfig.loss_type values, then ours
TRL_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
LossName = Literal[TRL_LOSSES + ("odpo",)]
SMOOTHED = ("robust", "exo_pair", "aot", "aot_unpaired")  # the losses that read label_smoothing
TOML_TYPES = {bool: "boolean", int: "integer", float: "float", dict: "table"}


def _as_list(value):
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        kind = TOML_TYPES.get(type(value), type(value).__name__)
        raise PydanticCustomError("loss_type", f"expected a loss name or an array of them, got {kind}")
    return value


# A name or a list of names, held as a list: a typo in either form is reported at the key with "did you mean".
Losses = Annotated[list[LossName], BeforeValidator(_as_list, json_schema_input_type=LossName | list[LossName])]


class Params(Recipe):
    recipe: Literal["dpo"]
    base: str = Field(description="the model target to train (the policy)")
    data: str = Field(description="a dataset target in preference format (prompt, chosen, rejected); for a "
                                  "vision-language base, an images target in preference format")
    reference: str | None = Field(
        None, description="the frozen reference model target; unset: the base's own weights. Same tokenizer as base")
    split: str = Field("train", description="the dataset split to train on")
    eval_split: str | None = Field(None, description="a split for the eval loss every train.eval_every steps")
    loss: Losses = Field(
        "sigmoid", validate_default=True,
        description="a TRL DPO loss (sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, "
                    "aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm), a list of them to add up, "
                    "or \"odpo\" (alone): DPO with a score-based offset")
    loss_weights: list[float] | None = Field(
        None, description="one weight per entry of a `loss` list; unset: every loss weighs 1")
    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference: higher, less far "
                                               "(for ipo, the regularisation tau)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="robust: the chance a preference label is flipped; exo_pair (where it must "
                                       "be > 0, e.g. 1e-3), aot, aot_unpaired: the label smoothing epsilon")
    alpha: float | None = Field(
        None, ge=0, description="odpo only: offset = alpha * log(score_chosen - score_rejected); unset: 1")
    max_length: int = Field(1024, ge=8, le=limits.TOKENS, description="tokens per prompt + completion (longer ones are cut)")
    lora: Lora | None = Field(None, description="train a LoRA adapter instead of every weight")
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")


def is_odpo(params: Params) -> bool:
    return "odpo" in params.loss


def environment(params) -> dict:
    images = ["pillow"] if params.data.startswith("images:") else []
    return {"libraries": ["torch", "transformers", "trl", "peft", "safetensors", "datasets", *images]}


def check(params: Params) -> list[tuple[str, str]]:
    problems = []
    losses = params.loss
    if not losses:
        problems.append(("loss", "names no loss"))
    if is_odpo(params) and len(losses) > 1:
        problems.append(("loss", "\"odpo\" is a loss of its own: it cannot be combined with other losses"))
    repeated = sorted({name for name in losses if losses.count(name) > 1})
    if repeated:
        problems.append(("loss", f"names {', '.join(repeated)} more than once"))
    if params.alpha is not None and not is_odpo(params):
        problems.append(("alpha", "applies to loss \"odpo\" only (the offset's scale)"))
    if params.loss_weights is not None:
        if is_odpo(params):
            problems.append(("loss_weights", "weighs the losses of a list; loss \"odpo\" is one loss alone"))
        elif len(params.loss_weights) != len(losses):
            n = len(params.loss_weights)
            problems.append(("loss_weights", f"has {n} weight{'s' if n != 1 else ''} for {len(losses)} "
                                             f"loss{'es' if len(losses) != 1 else ''}: give one per entry of `loss`"))
    if "exo_pair" in losses and params.label_smoothing == 0:
        problems.append(("label_smoothing", "loss \"exo_pair\" needs label_smoothing > 0 (the EXO paper uses 1e-3)"))
    if params.label_smoothing and not any(name in SMOOTHED for name in losses):
        problems.append(("label_smoothing", f"applies to losses {', '.join(SMOOTHED)} only"))
    modules = params.lora.target_modules if params.lora is not None else "all-linear"
    if modules != "all-linear" and "lm_head" in modules:
        problems.append(("lora.target_modules", "'lm_head' cannot take an adapter here: DPO reads the head's "
                                                "weights directly, so it would never train"))
    return problems + image_problems(params)


def image_problems(params: Params) -> list[tuple[str, str]]:
    if params.data.startswith("images:") and is_odpo(params):
        return [("loss", "\"odpo\" reads score_chosen and score_rejected, which image preference pairs do not carry")]
    return []


DEPS = Deps({"base": "model", "data": ("dataset", FORMATS), "reference": "model"}, (modality_problems,),
            images={"data": FORMATS})


def score_problem(folder: str, address: str, split: str) -> str | None:
    """Why a split of a preference dataset artifact cannot train ODPO (a row without scores, or whose chosen
    does not score higher), or None. Reads the JSONL itself, before torch is imported, so a bad row fails fast;
    a folder that is not such an artifact is left to training.dataset_split to report."""
    try:
        with open(os.path.join(folder, "dataset.json"), encoding="utf-8") as f:
            meta = json.load(f)
        path = os.path.join(folder, meta["splits"][split]["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta.get("format") not in FORMATS:
        return None
    with open(path, encoding="utf-8") as f:
        for row, line in enumerate((line for line in f if line.strip()), start=1):
            record = json.loads(line)
            c, r = record.get("score_chosen"), record.get("score_rejected")
            if c is None or r is None:
                return (f"loss \"odpo\" needs score_chosen and score_rejected in every row of {address} "
                        f"(split '{split}' row {row} has none)")
            if not c > r:
                return (f"loss \"odpo\" needs score_chosen > score_rejected in every row of {address}; "
                        f"split '{split}' row {row} has score_chosen {c:g} and score_rejected {r:g}")
    return None


def _vocabulary_problem(training, ctx, tokenizer) -> str | None:
    p = ctx.params
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a vision-language model's processor holds its tokenizer
    try:
        other = training.load_tokenizer(ctx.inputs["reference"])
    except (OSError, ValueError):
        return None  # no tokenizer beside the reference's weights: the vocabulary size is checked instead
    if other.get_vocab() != tokenizer.get_vocab():
        return (f"reference {p.reference} has another tokenizer than base {p.base}: the reference must score "
                f"the same tokens as the policy")
    return None


def build(ctx) -> None:
    p = ctx.params
    odpo = is_odpo(p)
    splits = [p.split] + ([p.eval_split] if p.eval_split else [])
    for split in splits if odpo else []:
        problem = score_problem(ctx.inputs["data"], p.data, split)
        if problem:
            raise ctx.bad_input(problem)

    from forgebuild.rules.model import training, vision

    problem = vision.modality_problem(ctx, ctx.inputs["base"])
    if problem:
        raise ctx.bad_input(problem)
    training.prepare(ctx)
    from trl import DPOConfig, DPOTrainer

    images = p.data.startswith("images:")

    def split_rows(split):
        if images:
            return vision.image_split(ctx, p.data, ctx.inputs["data"], split, FORMATS)[0]
        data = training.dataset_split(ctx, p.data, ctx.inputs["data"], split, FORMATS)[0]
        if not odpo:  # the plain losses do not read the scores
            data = data.remove_columns([c for c in SCORES if c in data.column_names])
        return data

    def load(key: str, address: str):
        loader = vision.load_vlm if images else training.load_model
        return loader(ctx, ctx.inputs[key], address)

    data = split_rows(p.split)
    evaluation = split_rows(p.eval_split) if p.eval_split else None
    tokenizer = (vision.load_processor if images else training.load_tokenizer)(ctx.inputs["base"])
    model = load("base", p.base)
    if p.reference is not None:
        ref_model = load("reference", p.reference)
        problem = _vocabulary_problem(training, ctx, tokenizer)
        sizes = [m.config.get_text_config().vocab_size for m in (ref_model, model)]
        if problem is None and sizes[0] != sizes[1]:
            problem = (f"reference {p.reference} has a vocabulary of {sizes[0]} tokens, base "
                       f"{p.base} one of {sizes[1]}: the reference must score the same tokens")
        if problem:
            raise ctx.bad_input(problem)
    elif p.lora is not None:
        ref_model = None  # TRL scores the reference with the adapter switched off: the base, without a copy
    else:
        # The base's weights, loaded again: left to itself TRL would rebuild the reference from the
        # config's _name_or_path, a path that need not exist any more
        ref_model = load("base", p.base)

    loss = {"loss_type": ["sigmoid"]} if odpo else {"loss_type": list(p.loss), "loss_weights": p.loss_weights}
    args = training.trainer_args(ctx, DPOConfig, evaluating=evaluation is not None, max_length=p.max_length,
                                 beta=p.beta, label_smoothing=p.label_smoothing, padding_free=False, **loss)
    common = dict(model=model, ref_model=ref_model, args=args, train_dataset=data, eval_dataset=evaluation,
                  processing_class=tokenizer, peft_config=training.lora_config(p.lora) if p.lora else None)
    if odpo:
        from forgebuild.rules.model.offset_dpo import ODPOTrainer

        trainer = ODPOTrainer(alpha=1.0 if p.alpha is None else p.alpha, **common)
    else:
        trainer = DPOTrainer(**common)
    training.train(ctx, trainer)
    training.save_trained(ctx, trainer, tokenizer, p.base,
                          config={"format": "preference", "rows": len(data),
                                  "reference": p.reference or p.base})
