"""The parameters every training recipe shares, and the checks on them. Torch-free:
the planner imports this module to validate a Forgefile."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from forgebuild import limits
from forgebuild.planning.plan import ADDRESS, outside_root
from forgebuild.rules import runtime

Schedule = Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_min_lr", "inverse_sqrt", "wsd"]
DECAY_KEYS = ("decay_steps", "decay_fraction", "decay_shape")
# wsd without decay_steps or decay_fraction: the last fifth of the steps decay (Hagele et al. 2024,
# "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", match cosine at 20%)
DEFAULT_DECAY_FRACTION = 0.2


class Train(BaseModel):
    """How long and how fast: `train = { lr = 1e-3, steps = 200, batch_size = 8 }`."""
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    steps: int | None = Field(None, ge=1, le=limits.STEPS, description="optimizer steps; when unset, `epochs` (or a pretrain's `budget_tokens`) decide")
    epochs: float = Field(1.0, gt=0, description="passes over the data when `steps` is unset")
    batch_size: int = Field(8, ge=1, le=limits.BATCH, description="sequences per micro-batch, over all processes (see `launch`)")
    grad_accum: int = Field(1, ge=1, le=limits.BATCH, description="micro-batches per optimizer step")
    schedule: Schedule = Field("cosine", description="learning-rate schedule after warmup")
    warmup_steps: int = Field(0, ge=0, le=limits.STEPS, description="steps of linear warmup from 0 to `lr`")
    min_lr_rate: float = Field(0.1, ge=0, le=1, description="cosine_with_min_lr, wsd: the floor as a fraction of `lr`")
    decay_steps: int | None = Field(None, ge=1, le=limits.STEPS, description="wsd: steps of the final decay")
    decay_fraction: float | None = Field(None, gt=0, le=1, description="wsd: the final decay as a fraction of the steps (default 0.2)")
    decay_shape: Literal["linear", "cosine", "1-sqrt"] | None = Field(None, description="wsd: how the decay falls to the floor (default linear)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0 turns clipping off)")
    eval_every: int | None = Field(None, ge=1, le=limits.STEPS, description="holdout loss every N steps (recipes with holdout data)")
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="arithmetic of the matrix products: fp32 (IEEE float32), tf32 (float32 tensors on "
                            "CUDA tensor cores, 10-bit mantissa products; on a CPU it trains exactly as fp32), bf16 "
                            "(mixed precision: bfloat16 autocast, float32 master weights, saved in float32). It "
                            "changes the numbers, so it is in the key")

    @model_validator(mode="after")
    def _decay(self):
        given = [key for key in DECAY_KEYS if getattr(self, key) is not None]
        if given and self.schedule != "wsd":
            raise PydanticCustomError("train", f"{given[0]} applies to schedule = \"wsd\" only (this schedule is "
                                               f"\"{self.schedule}\")")
        if self.decay_steps is not None and self.decay_fraction is not None:
            raise PydanticCustomError("train", "give either decay_steps or decay_fraction, not both")
        if self.schedule == "wsd" and self.steps is None and self.decay_steps is None:
            raise PydanticCustomError("train", "schedule = \"wsd\" counts its decay back from the last step: set "
                                               "steps, or give the decay as decay_steps")
        if self.schedule == "wsd" and self.steps is not None and not self.decay_fits(self.steps):
            raise PydanticCustomError("train", f"warmup_steps {self.warmup_steps} and a decay of "
                                               f"{self.decay_length(self.steps)} steps do not fit in {self.steps} steps")
        return self

    def decay_length(self, steps: int) -> int:
        """wsd: the steps of the final decay in a run of `steps` (at least one)."""
        if self.decay_steps is not None:
            return self.decay_steps
        return max(1, round(steps * (self.decay_fraction or DEFAULT_DECAY_FRACTION)))

    def decay_fits(self, steps: int) -> bool:
        """wsd: whether the warmup and the decay both fit in a run of `steps`."""
        return self.warmup_steps + self.decay_length(steps) <= steps

    def stable_end(self, steps: int) -> int:
        """wsd: the step the decay starts after; every step up to it runs at the schedule a longer run has."""
        return steps - self.decay_length(steps)


class Lora(BaseModel):
    """`lora = { r = 16, alpha = 32, dropout = 0.05, target_modules = "all-linear", merge = true }`"""
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1, le=limits.WIDTH, description="adapter rank")
    alpha: float = Field(16, gt=0, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt (e.g. [\"q_proj\", \"v_proj\"]) or \"all-linear\"")
    merge: bool = Field(True, description="true: emit merged full weights; false: emit the adapter folder only")


class Launch(BaseModel):
    """`launch = { processes = 2 }`: one training stage on several processes (torchrun, DDP), on one
    machine or, with `nodes`, several (see forgebuild/rules/model/launch.py)."""
    model_config = ConfigDict(extra="forbid")
    processes: int = Field(1, ge=1, le=limits.THREADS, description="processes on each machine (GPUs, or CPU processes with gloo)")
    nodes: int = Field(1, ge=1, le=limits.NODES, description="machines: this one (node 0) and nodes - 1 that run `forgebuild join`")
    master_addr: str | None = Field(
        None, description="nodes > 1: the address the other nodes reach node 0 at; unset: MASTER_ADDR, or the "
                          "first host of SLURM_JOB_NODELIST")
    master_port: int | None = Field(
        None, ge=1, le=65535, description="nodes > 1: node 0's rendezvous port; unset: MASTER_PORT, or a port "
                                          "derived from the action key (20000-39999)")
    backend: Literal["torchrun", "deepspeed"] = Field(
        "torchrun", description="torchrun: DistributedDataParallel; deepspeed: DeepSpeed ZeRO through the HF Trainer "
                                "(launched by torchrun too)")
    zero: Literal[1, 2, 3] = Field(2, description="deepspeed: the ZeRO stage (1: optimizer states sharded, "
                                                  "2: gradients too, 3: parameters too)")
    offload: Literal["none", "cpu"] = Field("none", description="deepspeed: keep the optimizer states in CPU memory")


class Track(BaseModel):
    """`track = { mlflow = true, tensorboard = true }`: where training curves and eval metrics stream
    (forgebuild/rules/model/tracking.py). Runtime only: turning it on or off rebuilds nothing."""
    model_config = ConfigDict(extra="forbid")
    mlflow: StrictBool | StrictStr = Field(
        False, description="true: the MLflow store MLFLOW_TRACKING_URI names, else the project's own SQLite store "
                           ".forge/mlflow.db; a string: a tracking URI (sqlite:///runs.db, http://host:5000)")
    tensorboard: StrictBool | StrictStr = Field(
        False, description="true: TensorBoard event files under .forge/tensorboard/; a string: a folder of the project")
    experiment: StrictStr | None = Field(
        None, min_length=1, description="the MLflow experiment (default: the name of the Forgefile's folder)")

    @field_validator("mlflow", "tensorboard")
    @classmethod
    def _named(cls, value, info):
        # A PydanticCustomError's message reaches the Forgefile error as written (no "Value error, ").
        if value == "":
            raise PydanticCustomError("track", "empty: write true for the default place, or name one")
        if info.field_name == "tensorboard" and isinstance(value, str) and outside_root(value):
            raise PydanticCustomError("track", f"'{value}' is outside the project folder: name a folder inside it")
        return value

    def modules(self) -> dict[str, str]:
        """What a build that tracks imports, by the extra that installs it (checked before it starts);
        MLflow's SQLite store (the default) takes sqlalchemy and alembic besides mlflow-skinny."""
        modules = {"tensorboard": "track"} if self.tensorboard else {}
        if self.mlflow:
            modules["mlflow"] = "track"
            if not isinstance(self.mlflow, str) or self.mlflow.startswith("sqlite:"):
                modules.update(sqlalchemy="track", alembic="track")
        return modules


class Recipe(BaseModel):
    """Runtime settings every recipe has; none of them enters the action key."""
    model_config = ConfigDict(extra="forbid")
    launch: Launch | None = runtime(None, description=(
        "several processes for this stage (torchrun); the global batch (train.batch_size x grad_accum) stays "
        "the same, each process takes batch_size / processes. Not in the key"))
    threads: int = runtime(0, ge=0, le=limits.THREADS, description="CPU threads for torch; 0 means every core. Not in the key")
    device: Literal["auto", "cpu", "cuda"] = runtime(
        "auto", description="where to train: auto takes a GPU when there is one. Not in the key")
    dataloader_workers: int = runtime(0, ge=0, le=limits.THREADS, description="data loading processes. Not in the key")
    log_every: int = runtime(10, ge=1, le=limits.STEPS, description="steps between progress lines in the stage log. Not in the key")
    checkpoint_every: int = runtime(
        50, ge=1, le=limits.STEPS, description="steps between checkpoints (a killed build resumes from the last). Not in the key")
    track: Track | None = runtime(None, description=(
        "stream the training curve to MLflow and/or TensorBoard, in a run named by the action key (a resumed "
        "build continues it; a cached one logs nothing). Not in the key"))


def reference_problems(params: BaseModel, keys) -> list[tuple[str, str]]:
    problems = []
    for key in keys:
        value = getattr(params, key, None)
        if value is not None and not ADDRESS.match(value):
            problems.append((key, f"'{value}' is not a target reference: write KIND:NAME, e.g. 'model:base'"))
    return problems


# The kinds whose artifact is a dataset's (SPLIT.jsonl and dataset.json): where a recipe takes a dataset
# target, a curate target (verified samples shaped for training) will do.
DATA_KINDS = ("dataset", "curate")


def kind_problems(params: BaseModel, deps: dict, expected: dict, images=()) -> list[tuple[str, str]]:
    """`expected` maps a key to the kind its target must be: base -> model, data -> dataset (or curate);
    a key in `images` takes an images target too."""
    problems = []
    for key, kind in expected.items():
        address = getattr(params, key, None)
        accepted = DATA_KINDS if kind == "dataset" else (kind,)
        if key in images and "images" not in accepted:
            accepted += ("images",)
        if address in deps and deps[address]["kind"] not in accepted:
            named = " or ".join(accepted) if len(accepted) < 3 else f"{', '.join(accepted[:-1])} or {accepted[-1]}"
            problems.append((key, f"{address} is {article(deps[address]['kind'])} target; '{key}' takes "
                                  f"{article(named)} target"))
    return problems


def article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def images_format_problem(params: BaseModel, deps: dict, key: str, allowed: tuple, recipe: str):
    """An images target whose format (caption, vqa, messages, preference) this recipe cannot train on."""
    address = getattr(params, key, None)
    dep = deps.get(address)
    declared = getattr(dep["params"], "format", None) if dep and dep["kind"] == "images" else None
    if declared is not None and declared not in allowed:
        return (key, f"{address} is a '{declared}' images target; recipe \"{recipe}\" trains on "
                     f"{' or '.join(repr(a) for a in allowed)} images")
    return None


# What a model target was made to read, as far as planning can tell from the Forgefile: a recipe "vlm"
# model sees images, a pretrained one text; a fine-tuned one what its data holds (a VLM is only ever
# fine-tuned on images, a text model on text), else what its base saw. An import is unknown until built.
TEXT_RECIPES = ("pretrain", "reward")
IMAGES_NEED_VLM = ("{data} holds images and {base} is a text-only model: recipe \"{recipe}\" on image data needs a "
                   "vision-language base (recipe \"vlm\", or an imported image-text-to-text model)")
VLM_NEEDS_IMAGES = ("{base} is a vision-language model: recipe \"{recipe}\" trains it on an images target "
                    "(data = \"images:NAME\"), not on {data}")


def modality(address: str | None, deps: dict) -> str | None:
    """"image" (a vision-language model), "text", or None where the Forgefile does not say (an import, or
    a chain longer than planning's view of it)."""
    dep = deps.get(address)
    if not dep or dep["kind"] != "model":
        return None
    params, below = dep["params"], dep.get("deps", {})
    if params.recipe == "vlm":
        return "image"
    if params.recipe in TEXT_RECIPES:
        return "text"
    data = below.get(getattr(params, "data", None))
    if data is not None:
        return "image" if data["kind"] == "images" else "text"
    return modality(getattr(params, "base", None), below)


def modality_problems(params: BaseModel, deps: dict) -> list[tuple[str, str]]:
    """Image data for a text-only base, or text data for a vision-language one (`base` and `data` keys)."""
    data = deps.get(params.data)
    seen = modality(params.base, deps)
    if data is None or seen is None:
        return []
    images = data["kind"] == "images"
    if images and seen == "text":
        return [("data", IMAGES_NEED_VLM.format(data=params.data, base=params.base, recipe=params.recipe))]
    if not images and seen == "image":
        return [("data", VLM_NEEDS_IMAGES.format(data=params.data, base=params.base, recipe=params.recipe))]
    return []


def dataset_format_problem(params: BaseModel, deps: dict, key: str, allowed: tuple, recipe: str):
    """A dataset target whose declared format this recipe cannot train on (format "auto" is checked at build),
    or a curate target whose shape makes such a format."""
    address = getattr(params, key, None)
    dep = deps.get(address)
    if dep is None or dep["kind"] not in DATA_KINDS:
        return None
    if dep["kind"] == "curate":
        from forgebuild.rules.synth.shapes import FORMATS

        declared = FORMATS[dep["params"].shape]
    else:
        declared = getattr(dep["params"], "format", "auto")
    if declared != "auto" and declared not in allowed:
        return (key, f"{address} is a '{declared}' dataset; recipe \"{recipe}\" trains on "
                     f"{' or '.join(repr(a) for a in allowed)} data")
    return None


def adapter_base_problem(params: BaseModel, deps: dict, key: str = "base"):
    """A model that emits only a LoRA adapter cannot be trained on further or imported by a recipe."""
    address = getattr(params, key, None)
    dep = deps.get(address)
    lora = getattr(dep["params"], "lora", None) if dep and dep["kind"] == "model" else None
    if lora is not None and not lora.merge:
        return (key, f"{address} emits a LoRA adapter only (lora.merge = false); set merge = true there "
                     f"to build on its weights")
    return None


@dataclass(frozen=True)
class Deps:
    """What a recipe's target references must be, as data: `Deps({"base": "model", "data": ("dataset",
    FORMATS)})`. A key names a kind, or a (kind, formats) pair for a dataset the recipe trains on; each
    `checks` function is a check no declaration can say (a reward model's recipe, FIM tokens). `images` maps
    a key that also takes an images target (image-text data for a vision-language model) to its formats."""
    kinds: dict[str, str | tuple[str, tuple[str, ...]]]
    checks: tuple[Callable[[BaseModel, dict], list[tuple[str, str]]], ...] = ()
    images: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def references(self, params: BaseModel) -> dict[str, str]:
        """The targets the params name, by key (a key left unset names none): a recipe's inputs."""
        return {key: getattr(params, key) for key in self.kinds if getattr(params, key, None) is not None}

    def problems(self, params: BaseModel, deps: dict) -> list[tuple[str, str]]:
        """Wrong kinds first, then wrong formats, then adapter-only models, then the checks."""
        kinds = {key: kind if isinstance(kind, str) else kind[0] for key, kind in self.kinds.items()}
        problems = kind_problems(params, deps, kinds, self.images)
        found = [dataset_format_problem(params, deps, key, kind[1], params.recipe)
                 for key, kind in self.kinds.items() if not isinstance(kind, str)]
        found += [images_format_problem(params, deps, key, formats, params.recipe)
                  for key, formats in self.images.items()]
        # every model a recipe reads, it reads the weights of: an adapter-only one has none
        found += [adapter_base_problem(params, deps, key) for key, kind in kinds.items() if kind == "model"]
        problems += [problem for problem in found if problem]
        for check in self.checks:
            problems += check(params, deps)
        return problems
