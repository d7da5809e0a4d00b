"""pretrain: a model from scratch, from an architecture family and size, on packed tokens.

    [model.base]
    recipe = "pretrain"
    tokenizer = "tokenizer:bpe"
    corpus = "corpus:web"            # tokenized here (cached) into seq_len rows; or tokens = "tokens:web"
    seq_len = 256
    arch = { family = "llama", hidden = 128, layers = 2, heads = 4 }
    train = { lr = 3e-3, steps = 300, batch_size = 16, warmup_steps = 20, eval_every = 50 }
    fim_rate = 0.5                   # fill-in-the-middle on half the documents (needs tokenizer fim = true)

Dense families: llama, qwen2, qwen3, mistral. Mixture of experts: mixtral, qwen3_moe
(`experts`, `top_k`; the router's load-balancing loss is added with `router_aux_loss`).
The trainer is transformers' Trainer on the rows of a tokens artifact (read through a
memory map, never loaded whole); the holdout rows give the eval loss every
`train.eval_every` steps.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Lora, Recipe, Train

version = "1"

DENSE = ("llama", "qwen2", "qwen3", "mistral")
MOE = ("mixtral", "qwen3_moe")
Family = Literal["llama", "qwen2", "qwen3", "mistral", "mixtral", "qwen3_moe"]


class Arch(BaseModel):
    """`arch = { family = "llama", hidden = 128, layers = 2, heads = 4 }`"""
    model_config = ConfigDict(extra="forbid")
    family: Family = Field(description="architecture family (transformers model type)")
    hidden: int = Field(128, ge=8, le=limits.WIDTH, description="hidden size")
    layers: int = Field(2, ge=1, le=limits.DEPTH, description="transformer blocks")
    heads: int = Field(4, ge=1, le=limits.DEPTH, description="attention heads")
    kv_heads: int | None = Field(None, ge=1, le=limits.DEPTH, description="key/value heads (grouped-query attention); default: heads")
    intermediate: int | None = Field(None, ge=1, le=limits.WIDTH, description="MLP width; default 4 x hidden (per expert for MoE)")
    max_len: int | None = Field(None, ge=1, le=limits.TOKENS, description="position embeddings; default: the sequence length")
    tie_embeddings: bool = Field(True, description="share input embedding and output head weights")
    experts: int | None = Field(None, ge=2, le=limits.DEPTH, description="MoE: experts per layer (default 4)")
    top_k: int | None = Field(None, ge=1, le=limits.DEPTH, description="MoE: experts each token is routed to (default 2)")
    router_aux_loss: float = Field(0.01, ge=0, description="MoE: weight of the router load-balancing loss")


class Params(Recipe):
    recipe: Literal["pretrain"]
    tokenizer: str = Field(description="the tokenizer target; its folder ships with the model")
    tokens: str | None = Field(None, description="a tokens target: packed rows to train on")
    corpus: str | None = Field(None, description="a corpus target, tokenized here into `seq_len` rows (cached)")
    seq_len: int | None = Field(None, ge=8, le=limits.TOKENS, description="with `corpus`: tokens per training row (default 256)")
    arch: Arch
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")
    budget_tokens: int | None = Field(None, ge=1, le=limits.AMOUNT, description="train on this many tokens (sets the steps)")
    fim_rate: float = Field(0.0, ge=0, le=1, description="fraction of documents turned into fill-in-the-middle")
    fim_format: Literal["psm", "spm"] = Field("psm", description="prefix-suffix-middle or suffix-prefix-middle")
    eval_rows: int = Field(256, ge=1, le=limits.AMOUNT, description="holdout rows in each eval")
    lora: Lora | None = Field(None, description="not for pretraining: present only to say so clearly")


def inputs(params: Params) -> dict:
    found = {"tokenizer": params.tokenizer}
    for key in ("tokens", "corpus"):
        if getattr(params, key):
            found[key] = getattr(params, key)
    return found


def environment(params) -> dict:
    return {"libraries": ["torch", "transformers", "safetensors", "tokenizers"]}


def check(params: Params) -> list[tuple[str, str]]:
    problems = data_problems(params)
    problems += arch_problems(params.arch)
    if params.lora is not None:
        problems.append(("lora", "LoRA adapts existing weights, and a from-scratch pretrain has none: train the "
                                 "full model here, or use lora in a \"continue\" or \"sft\" model built on this one"))
    if params.budget_tokens and params.train.steps:
        problems.append(("budget_tokens", "give either budget_tokens or train.steps, not both"))
    return problems


def data_problems(params) -> list[tuple[str, str]]:
    if bool(params.tokens) == bool(params.corpus):
        return [("tokens", "give either tokens = \"tokens:NAME\" (packed rows) or corpus = \"corpus:NAME\" "
                           "(tokenized here), not both" if params.tokens else
                           "no training data: give tokens = \"tokens:NAME\" or corpus = \"corpus:NAME\"")]
    if params.tokens and params.seq_len:
        return [("seq_len", f"the sequence length comes from {params.tokens}; seq_len goes with corpus")]
    return []


def arch_problems(arch: Arch) -> list[tuple[str, str]]:
    problems = []
    if arch.family in DENSE:
        for key in ("experts", "top_k"):
            if getattr(arch, key) is not None:
                problems.append((f"arch.{key}", f"'{key}' is for mixture-of-experts families ({', '.join(MOE)}); "
                                                f"{arch.family} is dense"))
    if arch.hidden % arch.heads:
        problems.append(("arch.heads", f"hidden {arch.hidden} is not a multiple of heads {arch.heads}"))
    if arch.kv_heads and arch.heads % arch.kv_heads:
        problems.append(("arch.kv_heads", f"heads {arch.heads} is not a multiple of kv_heads {arch.kv_heads}"))
    experts, top_k = arch.experts or 4, arch.top_k or 2
    if arch.family in MOE and top_k > experts:
        problems.append(("arch.top_k", f"top_k {top_k} is more than the {experts} experts"))
    return problems


def tokenizer_problems(params, deps: dict) -> list[tuple[str, str]]:
    """Packed tokens made with another tokenizer, or a FIM rate on a tokenizer without the FIM tokens."""
    problems = []
    tokens = deps.get(params.tokens)
    if tokens and tokens["kind"] == "tokens" and tokens["params"].tokenizer != params.tokenizer:
        problems.append(("tokens", f"{params.tokens} was tokenized with {tokens['params'].tokenizer}, "
                                   f"but this model's tokenizer is {params.tokenizer}"))
    tokenizer = deps.get(params.tokenizer)
    if params.fim_rate and tokenizer and tokenizer["kind"] == "tokenizer" and not tokenizer["params"].fim:
        problems.append(("fim_rate", f"fill-in-the-middle needs the FIM tokens: set fim = true in {params.tokenizer}"))
    return problems


DEPS = Deps({"tokenizer": "tokenizer", "tokens": "tokens", "corpus": "corpus"}, (tokenizer_problems,))


# ------------------------------------------------------------------ building

def build(ctx) -> None:
    from forgebuild.rules.model import training

    p = ctx.params
    # tokenized before a launch: the launched processes then find it cached, and never race to make it
    folder = packed_tokens_with(ctx, p, ctx.inputs["tokenizer"], p.tokenizer)
    training.prepare(ctx)
    tokenizer = training.load_tokenizer(ctx.inputs["tokenizer"])
    model = new_model(ctx, p.arch, tokenizer, seq_len(folder))
    fit(ctx, model, tokenizer, folder)


def packed_tokens_with(ctx, p, tokenizer_folder: str, tokenizer_address: str) -> str:
    """The tokens folder: the tokens target's, or the corpus tokenized here once (a memo, so a
    change of training settings never tokenizes again)."""
    if p.tokens:
        return ctx.inputs["tokens"]
    from forgebuild.rules import tokens

    spec = tokens.Params(corpus=p.corpus, tokenizer=tokenizer_address, seq_len=p.seq_len or 256, threads=p.threads)
    material = {"corpus": ctx.dep_digests[p.corpus], "tokenizer": ctx.dep_digests[tokenizer_address],
                "tokens": tokens.version, "params": spec.model_dump(mode="json", exclude={"threads", "batch_documents"})}
    return ctx.memo("tokens", material, lambda out: tokens.tokenize(
        ctx, spec, ctx.inputs["corpus"], tokenizer_folder, out))


def seq_len(folder: str) -> int:
    return read_meta(folder)["seq_len"]


def read_meta(folder: str) -> dict:
    import json
    import os

    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        return json.load(f)


def new_model(ctx, arch: Arch, tokenizer, length: int):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch.family, **config_values(arch, tokenizer, length))
    torch.manual_seed(ctx.seed)  # the initial weights are the seed's, whatever ran before
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ctx.log(f"{arch.family}: {sum(t.numel() for t in model.parameters()):,} parameters")
    return model


def config_values(arch: Arch, tokenizer, length: int) -> dict:
    """transformers config fields for one family; every size field set, so no family default leaks in."""
    values = dict(
        vocab_size=len(tokenizer), hidden_size=arch.hidden, num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads or arch.heads,
        head_dim=arch.hidden // arch.heads, intermediate_size=arch.intermediate or 4 * arch.hidden,
        max_position_embeddings=arch.max_len or length, tie_word_embeddings=arch.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if arch.family == "mistral":
        values["sliding_window"] = None
    if arch.family == "mixtral":
        values.update(num_local_experts=arch.experts or 4, num_experts_per_tok=arch.top_k or 2,
                      router_aux_loss_coef=arch.router_aux_loss, output_router_logits=True)
    if arch.family == "qwen3_moe":
        values.update(num_experts=arch.experts or 4, num_experts_per_tok=arch.top_k or 2,
                      moe_intermediate_size=arch.intermediate or 4 * arch.hidden, decoder_sparse_step=1,
                      mlp_only_layers=[], router_aux_loss_coef=arch.router_aux_loss, output_router_logits=True)
    return values


def fit(ctx, model, tokenizer, folder: str) -> None:
    """Train `model` on the packed rows in `folder` and save it (pretrain and continue)."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from forgebuild.rules.model import training
    from forgebuild.rules.model.packed import PackedRows, fim_spec

    p = ctx.params
    if training.is_moe(model.config):  # transformers' Trainer adds the router loss only when the config asks,
        model.config.output_router_logits = True  # and a saved MoE config says no (training.inference_config)
    meta = read_meta(folder)
    fim = fim_spec(ctx, p, tokenizer, meta) if getattr(p, "fim_rate", 0) else None
    train_rows = PackedRows(folder, "train", meta, fim=fim, seed=ctx.seed)
    if len(train_rows) == 0:
        raise ctx.bad_input(f"no training rows: the corpus is shorter than one sequence of {meta['seq_len']} tokens")
    holdout = PackedRows(folder, "holdout", meta, limit=p.eval_rows)
    evaluating = bool(p.train.eval_every and len(holdout))
    steps = budget_steps(p, meta["seq_len"])
    args = training.trainer_args(ctx, TrainingArguments, evaluating=evaluating,
                                 **({"max_steps": steps} if steps else {}))
    trainer = Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=holdout if len(holdout) else None,
                      data_collator=default_data_collator)
    run = training.train(ctx, trainer, stable_run(ctx, steps or p.train.steps))
    tokens_per_step = p.train.batch_size * p.train.grad_accum * meta["seq_len"]
    if run["seconds"] and training.is_main():
        ctx.metrics({"tokens_per_second": round(run["steps"] * tokens_per_step / run["seconds"], 1)})
    extra = {"train_tokens": trainer.state.global_step * tokens_per_step}
    if len(holdout):
        extra["holdout_loss"] = round(trainer.evaluate()["eval_loss"], 6)
    training.save_trained(ctx, trainer, tokenizer, getattr(p, "base", None),
                          config={"seq_len": meta["seq_len"], "fim": fim}, metrics=extra)


def stable_run(ctx, steps: int | None):
    """A wsd run's part in checkpoint-prefix reuse (prefix.py); None for another schedule, an unknown
    length, or several processes (a checkpoint's layout follows the processes, which are not in the key)."""
    from forgebuild.rules import identity_params
    from forgebuild.rules.model import prefix, training

    t = ctx.params.train
    if t.schedule != "wsd" or not steps:
        return None
    if not t.decay_fits(steps):  # with budget_tokens: checked once the steps are known
        raise ctx.bad_input(f"train.warmup_steps {t.warmup_steps} and a decay of {t.decay_length(steps)} steps do "
                            f"not fit in the {steps} steps budget_tokens gives")
    if training.processes(ctx) > 1:
        return None
    ident = prefix.identity(ctx.kind, ctx.version, ctx.seed, identity_params(ctx.params), dict(ctx.dep_digests),
                            dict(ctx.digests), training.library_versions())
    return prefix.Run(ident, t.stable_end(steps))


def budget_steps(p, length: int) -> int | None:
    budget = getattr(p, "budget_tokens", None)
    if not budget:
        return None
    return max(1, math.ceil(budget / (p.train.batch_size * p.train.grad_accum * length)))
