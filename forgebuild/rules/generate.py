"""generate: samples from a model target, cached per sample.

    [generate.sums]
    model = "model:sft"                          # any model target (recipe = "import" for a folder)
    prompts = "dataset:sum-prompts"              # a dataset or curate target, or a record file
    # or: template = { text = "{a}+{b}=", vars = { a = { range = [0, 100] }, b = [1, 2] }, sample = 50 }
    n = 4                                        # samples per prompt
    sampling = { temperature = 1.0, top_p = 0.95, max_new_tokens = 16, stop = ["\\n"] }

The artifact is `samples.jsonl` (a line per sample, prompt order then sample index: prompt,
completion, sample, prompt_index, columns, finish, key) and `generate.json`. Each sample is cached
on its own key: the model's output digest, the prompt, the sampling settings, the seed and its index
(`synth/generation.py`), so adding prompts generates only theirs, raising `n` only the new indices,
and a killed generation resumes after its last finished batch. Its randomness is its own (a
generator seeded by that key), so a sample does not depend on the batch it was made in. Verifying
and shaping the samples is another target's work (`curate`): changing a filter never reaches this
key. Reference: docs/rules/generate.md.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.rules import runtime
from forgebuild.rules.synth.prompts import Template, template_problems

version = "1"
preload = ("forgebuild.rules.synth.generation",)  # what a warm worker imports for it (engine/warm.py)

DATA_KINDS = ("dataset", "curate")  # the kinds whose artifact is a dataset's: split files and dataset.json


class Sampling(BaseModel):
    """`sampling = { temperature = 1.0, top_p = 0.95, max_new_tokens = 64, stop = ["\\n"] }`"""
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, ge=0, le=100, description="0: greedy; above 0: sampling at this temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: the smallest set of tokens holding this "
                                                      "much probability")
    max_new_tokens: int = Field(64, ge=1, le=limits.TOKENS, description="tokens generated per sample at most")
    stop: list[str] = Field(default_factory=list, description="a completion ends before the first of these")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="the model target that generates (model:NAME)")
    prompts: str | None = Field(None, description=(
        "a dataset or curate target (its `prompt` column), or a JSONL, Parquet or CSV file of the project"))
    template: Template | None = Field(None, description="prompts made from a text and variables, instead of `prompts`")
    split: str | None = Field(None, description="prompts from a target: this split only (default: every split)")
    prompt_field: str = Field("prompt", min_length=1, description="prompts from a file: the prompt's column")
    n: int = Field(1, ge=1, le=limits.BATCH, description="samples per prompt")
    sampling: Sampling = Field(default_factory=Sampling, description="how each sample is drawn")
    chat_template: Literal["auto", True, False] = Field("auto", description=(
        "auto: a prompt that is a list of messages goes through the tokenizer's chat template and a string is "
        "used as written; true: strings too, as one user message; false: never"))
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="the samples' seed (default: the target's, "
                                                                    "from [forge] seed and its address)")
    engine: Literal["transformers", "vllm"] = Field("transformers", description=(
        "transformers: batched generate() (CPU or GPU); vllm: vLLM on a GPU (not bitwise the same samples)"))
    batch_size: int = runtime(64, ge=1, le=limits.BATCH, description="samples per generate() call; a killed "
                                                                      "build resumes after the last finished batch. Not in the key")
    threads: int = runtime(0, ge=0, le=limits.THREADS, description="CPU threads for torch; 0 means every core. Not in the key")
    device: Literal["auto", "cpu", "cuda"] = runtime("auto", description="where to generate. Not in the key")


def inputs(params: Params) -> dict:
    return {"model": params.model, **({"prompts": params.prompts} if params.prompts else {})}


def check(params: Params) -> list[tuple[str, str]]:
    problems = []
    if (params.prompts is None) == (params.template is None):
        problems.append(("prompts", "give prompts (a dataset target or a file) or a template, not both"
                         if params.prompts else "names no prompts: give prompts = \"dataset:NAME\" or a template"))
    if params.template is not None:
        problems += template_problems(params.template)
    if params.split is not None and params.prompts is not None and ":" not in params.prompts:
        problems.append(("split", "a file has no splits: split is for prompts from a dataset target"))
    if params.sampling.temperature == 0 and params.n > 1:
        problems.append(("n", f"n = {params.n} with temperature = 0: greedy decoding gives every sample of a "
                              f"prompt the same text; set n = 1 or a temperature above 0"))
    return problems


def check_deps(params: Params, deps: dict) -> list[tuple[str, str]]:
    from forgebuild.rules.model.common import adapter_base_problem

    problems = []
    model = deps.get(params.model)
    if model is not None and model["kind"] != "model":
        problems.append(("model", f"{params.model} is a {model['kind']} target; 'model' takes a model target"))
    elif (found := adapter_base_problem(params, deps, "model")) is not None:
        problems.append(found)
    source = deps.get(params.prompts) if params.prompts else None
    if source is not None and source["kind"] not in DATA_KINDS:
        problems.append(("prompts", f"{params.prompts} is a {source['kind']} target; 'prompts' takes a dataset or "
                                    f"curate target, or a file"))
    return problems


def environment(params: Params) -> dict:
    return {"libraries": ["torch", "transformers"] + (["vllm"] if params.engine == "vllm" else [])}


def requires(params: Params) -> dict[str, str]:
    """What the build imports, by the extra that installs it (checked before a build starts)."""
    found = {"torch": "train", "transformers": "train"}
    if params.prompts and not params.prompts.endswith((".jsonl", ".json", ".ndjson", ".csv")) and ":" not in params.prompts:
        found["pyarrow"] = "data"
    return {**found, **({"vllm": "vllm"} if params.engine == "vllm" else {})}


def build(ctx) -> None:
    from forgebuild.rules.synth.generation import generate

    generate(ctx)
