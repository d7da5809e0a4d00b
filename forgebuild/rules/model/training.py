"""What every recipe's build does around its trainer: set up the process, build the
trainer arguments, resume from the last complete checkpoint, watch the loss, and save
the artifact. Imported inside build() only: it imports torch and transformers.

Reproducibility: the seed comes from `[forge] seed` and the target's address; the
checkpoints (model, optimizer, scheduler, RNG states, data position) live in the
action key's work folder, so a killed build resumes there and, on CPU, ends with the
same weights as an uninterrupted one. Nothing in the artifact depends on time, paths
or the runtime-only settings: timings go to the build record (ctx.metrics).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time

# A build never reaches a model hub: everything it reads is a local folder.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from forgebuild.rules import identity_params  # noqa: E402

COMPLETE = "forge-complete"  # written into a checkpoint folder once the trainer has saved all of it
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Fields of the trainer's log that measure time or speed: they go to the build record, not the artifact.
TIMING = re.compile(r"(runtime|per_second|_time$|^time|seconds)")


class LossNaN(Exception):
    def __init__(self, step: int):
        super().__init__(f"loss became NaN at step {step}")
        self.step = step


def processes(ctx) -> int:
    """Every process of this stage, on every node."""
    from forgebuild.rules.model.launch import world_size

    return world_size(getattr(ctx.params, "launch", None))


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes the artifact, metrics and log lines."""
    return os.environ.get("RANK", "0") == "0"


def prepare(ctx) -> None:
    """Threads, quiet libraries, seeds: the first thing a recipe's build does. With `launch`,
    the build is run again under torchrun and this process stops here (Delegated)."""
    import warnings

    if processes(ctx) > 1 and "LOCAL_RANK" not in os.environ:
        from forgebuild.rules.model.launch import delegate

        delegate(ctx)
    if "LOCAL_RANK" not in os.environ:
        # One process, one GPU: with several visible, transformers' Trainer would spread the model over
        # all of them (nn.DataParallel), multiplying the batch by a number the key does not hold.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = "0" if visible is None else visible.split(",")[0]  # "" hides all
    if ctx.params.device == "cuda" and not torch.cuda.is_available():
        raise ctx.failure('device = "cuda", but torch sees no GPU here (use device = "auto" to train where it can)')

    ctx.started = float(os.environ.get("FORGE_STAGE_STARTED", time.time()))
    threads = ctx.params.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:
        pass
    transformers.set_seed(ctx.seed)


def on_cpu(ctx) -> bool:
    return ctx.params.device == "cpu" or not torch.cuda.is_available()


def checkpoints_dir(ctx) -> str:
    return os.path.join(ctx.work, "checkpoints")


def trainer_args(ctx, config_class, evaluating: bool = False, **extra):
    """The TrainingArguments (or TRL config) from the recipe's `train` table and runtime settings."""
    p, t = ctx.params, ctx.params.train
    per_process = t.batch_size // processes(ctx)  # the global batch stays train.batch_size
    kwargs = dict(
        output_dir=checkpoints_dir(ctx),
        per_device_train_batch_size=per_process, per_device_eval_batch_size=per_process,
        gradient_accumulation_steps=t.grad_accum, learning_rate=t.lr,
        warmup_steps=t.warmup_steps, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        num_train_epochs=t.epochs, max_steps=t.steps or -1, seed=ctx.seed, data_seed=ctx.seed,
        # Every step is logged (one float per step): the training log then does not depend on
        # `log_every`, and a NaN is caught at the step it appears.
        logging_steps=1, logging_nan_inf_filter=False,
        save_strategy="steps", save_steps=p.checkpoint_every, save_total_limit=2,
        eval_strategy="steps" if evaluating and t.eval_every else "no", eval_steps=t.eval_every,
        report_to=[], disable_tqdm=True, use_cpu=on_cpu(ctx), gradient_checkpointing=False,
        dataloader_num_workers=p.dataloader_workers, **precision_args(ctx),
    )
    if processes(ctx) > 1:
        kwargs["ddp_backend"] = "gloo" if on_cpu(ctx) else "nccl"
        if ctx.params.launch.backend == "deepspeed":
            kwargs["deepspeed"] = deepspeed_config(ctx.params.launch, t.precision)
    kwargs.update(extra)
    kwargs.update(schedule_args(t, kwargs["max_steps"]))
    config = config_class(**kwargs)
    if processes(ctx) > 1 and ctx.params.launch.backend == "deepspeed":
        # A model that TRL loads after this point (GRPO's reference when beta > 0, online-DPO's reward
        # models, both from a path) is built under zero.Init (ZeRO-3), whose config asks deepspeed.comm
        # for the world size. accelerate starts deepspeed.comm on a GPU only; on a CPU it was still
        # unstarted here, so the config took 1 process and failed: "train_batch_size is not equal to
        # micro_batch_per_gpu * gradient_acc_step * world_size 4 != 2 * 1 * 1". Start it now, over the
        # process group the arguments just made (a no-op where accelerate already did).
        import deepspeed

        deepspeed.init_distributed(dist_backend=kwargs["ddp_backend"], auto_mpi_discovery=False)
    return config


# transformers' own names (SchedulerType) for the schedules the `train` table calls otherwise
SCHEDULER_NAMES = {"wsd": "warmup_stable_decay"}


def schedule_args(t, max_steps: int) -> dict:
    """train.schedule as TrainingArguments. wsd is transformers' get_wsd_schedule: linear warmup, the
    peak lr until the decay, then decay_shape down to min_lr_rate x lr over the last decay steps. Its
    lr at a step before the decay does not depend on the run's length: what prefix reuse rests on."""
    args = {"lr_scheduler_type": SCHEDULER_NAMES.get(t.schedule, t.schedule)}
    if t.schedule == "cosine_with_min_lr":
        args["lr_scheduler_kwargs"] = {"min_lr_rate": t.min_lr_rate}
    if t.schedule == "wsd":
        # max_steps > 0 whenever decay_steps is unset (common.Train requires steps then)
        decay = t.decay_length(max_steps) if max_steps > 0 else t.decay_steps
        args["lr_scheduler_kwargs"] = {"num_decay_steps": decay, "decay_type": t.decay_shape or "linear",
                                       "min_lr_ratio": t.min_lr_rate}
    return args


def precision_args(ctx) -> dict:
    """train.precision as TrainingArguments. bf16: mixed precision (autocast to bfloat16, float32 master
    weights), on a CPU too. tf32: float32 matrix products on CUDA tensor cores (Ampere or later); a CPU
    or an older GPU has no TF32 (and TrainingArguments(tf32=True) raises there), so "tf32" then trains
    exactly as "fp32": said in the stage log, and the key still differs (what was asked for is recorded).
    fp32 turns TF32 off explicitly where it exists (torch's default, but a process-wide setting)."""
    from transformers.utils import is_torch_tf32_available

    precision = ctx.params.train.precision
    args = {"bf16": precision == "bf16", "fp16": False}
    if not on_cpu(ctx) and is_torch_tf32_available():
        args["tf32"] = precision == "tf32"
    elif precision == "tf32" and is_main():
        ctx.log("train.precision = \"tf32\": no TF32 on " + ("this CPU" if on_cpu(ctx) else "this GPU (before Ampere)")
                + ", so the float32 products are IEEE float32, as with \"fp32\"")
    return args


def deepspeed_config(launch, precision: str = "fp32") -> dict:
    """ZeRO through the HF Trainer: "auto" lets the Trainer fill in batch sizes and clipping, so the
    `train` table stays the one source of them (this config ran on CPU with 2 processes, gloo).
    bf16 follows train.precision (DeepSpeed then holds the module's weights in bfloat16 and the
    optimizer's float32 master copy: save_trained saves the master copy)."""
    zero = {"stage": launch.zero}
    if launch.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
    if launch.zero == 3:
        # "auto": the Trainer sizes them from the model's hidden size (parameters under 10 x hidden stay
        # whole on every rank, the rest are sharded). gather_16bit (DeepSpeed's name; the module's dtype
        # in fact): each checkpoint folder also gets whole, loadable weights. The artifact's weights are
        # gathered by save_trained (gathered_weights), whatever this says.
        zero.update({"stage3_param_persistence_threshold": "auto", "stage3_prefetch_bucket_size": "auto",
                     "reduce_bucket_size": "auto", "stage3_gather_16bit_weights_on_model_save": True})
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "zero_optimization": zero,
            "zero_allow_untested_optimizer": True, "bf16": {"enabled": precision == "bf16"},
            "fp16": {"enabled": False}}


class Watch(TrainerCallback):
    """Fails on a non-finite loss, writes progress to the stage log, marks complete checkpoints."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.first_step_at = None

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed state carries the save, log and eval intervals of the run that saved it (trainer_state.json),
        # and transformers keeps them: a resume, from this key's checkpoint or another run's prefix, under
        # another checkpoint_every (runtime) would save on the old one's steps (seen: 50 instead of 5).
        state.compute_steps(args, state.max_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        # No checkpoint at the last step: the artifact is saved right after, so nothing needs it, and
        # transformers resuming from a checkpoint at max_steps trains one step more (seen: 31 of 30).
        if state.global_step >= state.max_steps:
            control.should_save = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        loss = logs.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise LossNaN(state.global_step)
        if not is_main():
            return
        every = self.ctx.params.log_every
        if state.global_step % every == 0 or state.global_step == state.max_steps or "eval_loss" in logs:
            shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()}
            self.ctx.log(f"step {state.global_step}/{state.max_steps} {json.dumps(shown, sort_keys=True)}")

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if is_main() and os.path.isdir(folder):
            with open(os.path.join(folder, COMPLETE), "w") as f:
                f.write(str(state.global_step))
            self.ctx.log(f"checkpoint at step {state.global_step}")


class KeepStable(TrainerCallback):
    """wsd: a checkpoint at the end of the stable phase, kept in the store for longer runs (prefix.py)."""

    def __init__(self, ctx, run):
        self.ctx, self.run = ctx, run

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.run.stable_end:
            control.should_save = True

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.global_step == self.run.stable_end and os.path.exists(os.path.join(folder, COMPLETE)):
            self.run.keep(self.ctx, folder)
            self.ctx.log(f"kept the stable-phase checkpoint (step {state.global_step}) for longer runs")


def step_of(checkpoint: str | None) -> int:
    return int(CHECKPOINT.match(os.path.basename(checkpoint)).group(1)) if checkpoint else 0


def resume_point(ctx, run) -> tuple[str | None, object]:
    """The checkpoint to resume from: this key's own last one, or a longer stored prefix of its run
    (`run`: prefix.Run, or None), copied into the work folder. (path or None, the prefix used or None)."""
    from forgebuild.rules.model.prefix import copy_tree

    folder = checkpoints_dir(ctx)
    own = last_checkpoint(folder)
    found = run.find(ctx, below=step_of(own)) if run is not None else None
    if found is None:
        return own, None
    path = os.path.join(folder, f"checkpoint-{found.step}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    copy_tree(found.folder, path, last=COMPLETE)  # a copy: the stored files stay as they are
    return path, found


def last_checkpoint(folder: str) -> str | None:
    """The newest checkpoint that was written whole; half-written ones (a kill mid-save) are removed."""
    if not os.path.isdir(folder):
        return None
    found = []
    for name in os.listdir(folder):
        m = CHECKPOINT.match(name)
        if not m:
            continue
        path = os.path.join(folder, name)
        if os.path.exists(os.path.join(path, COMPLETE)):
            found.append((int(m.group(1)), path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def train(ctx, trainer, run=None):
    """Run the trainer from the last complete checkpoint of this action key, if any, or from the longest
    stored prefix of `run` (prefix.Run: a wsd run on one process), which it then keeps its own of."""
    from transformers.trainer_callback import PrinterCallback

    from forgebuild.rules.model import tracking

    watch = Watch(ctx)
    trainer.remove_callback(PrinterCallback)  # Watch writes the progress lines, once every log_every steps
    trainer.add_callback(watch)
    resume, prefix = resume_point(ctx, run)
    if run is not None:
        trainer.add_callback(KeepStable(ctx, run))
    for callback in tracking.training_callbacks(ctx):  # `track`: MLflow, TensorBoard (runtime only)
        trainer.add_callback(callback)
    if prefix is not None:
        ctx.log(f"resuming from step {prefix.step}: the stable phase of {prefix.target} (key {prefix.key[:12]}), "
                f"a run that differs from this one only in its length or decay")
        ctx.metrics({"prefix_reused_steps": prefix.step, "prefix_key": prefix.key, "prefix_target": prefix.target})
    elif run is not None:
        ctx.metrics({"prefix_reused_steps": 0})
    if resume and prefix is None and is_main():
        ctx.log(f"resuming from {os.path.basename(resume)} of an earlier, interrupted build")
    if resume:
        load_renamed_weights(trainer)
        trainer.add_callback(TokenCount(trainer))
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except LossNaN as e:
        raise ctx.failure(str(e)) from None
    seconds = time.time() - started
    state = trainer.state
    if not is_main():
        return {"result": result, "seconds": seconds, "steps": state.global_step}
    resumed_at = step_of(resume)
    if run is not None:
        run.note(ctx)
    trained = state.global_step - resumed_at  # the steps this attempt ran, not those it resumed after
    ctx.metrics({
        "train_seconds": round(seconds, 3), "steps": state.global_step, "trained_steps": trained,
        "steps_per_second": round(trained / seconds, 3) if seconds else None,
        "seconds_before_first_step": round(watch.first_step_at - ctx.started, 3) if watch.first_step_at else None,
        "resumed_from_step": resumed_at if resume else None,
    })
    tokens = trained_tokens(state.log_history, resumed_at)
    if tokens and seconds:
        ctx.metrics({"tokens_per_second": round(tokens / seconds, 1)})
    return {"result": result, "seconds": seconds, "steps": trained}


class TokenCount(TrainerCallback):
    """TRL's SFT and DPO trainers log `num_tokens` from a count of their own (_total_train_tokens) that a
    checkpoint does not keep: a resumed run would count again from 0, and its training log (in the
    artifact) would differ from an uninterrupted run's. The count is the last one the resumed log holds."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        counts = [row["num_tokens"] for row in state.log_history if "num_tokens" in row]
        if counts and hasattr(self.trainer, "_total_train_tokens"):
            self.trainer._total_train_tokens = counts[-1]


def load_renamed_weights(trainer) -> None:
    """transformers' Trainer resumes a checkpoint's weights with model.load_state_dict(the file's tensors,
    strict=False). A model whose save_pretrained writes them under other names than its modules' (LLaVA
    writes "language_model.model.*" for "model.language_model.*", transformers 5.25) then resumes with
    none of them, silently: seen as a loss back at its step-1 value after the resume. Such a checkpoint
    is read back with from_pretrained, which maps the names, and copied into the model whole."""
    from safetensors import safe_open

    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint, model=None):
        model = model if model is not None else trainer.model
        path = os.path.join(resume_from_checkpoint, "model.safetensors")
        if not os.path.isfile(path) or not isinstance(model, transformers.PreTrainedModel):
            return original(resume_from_checkpoint, model)  # sharded, or a peft model's adapter: its own names
        with safe_open(path, "pt") as f:
            renamed = not set(f.keys()) <= set(model.state_dict())
        if not renamed:
            return original(resume_from_checkpoint, model)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=torch.float32)
        model.load_state_dict(saved.state_dict(), strict=True)

    trainer._load_from_checkpoint = load


def trained_tokens(log_history: list[dict], resumed_at: int) -> float | None:
    """Tokens this process trained on, from TRL's cumulative `num_tokens` (sft, dpo, grpo log it)."""
    counts = [(row.get("step", 0), row["num_tokens"]) for row in log_history if "num_tokens" in row]
    if not counts:
        return None
    before = max((n for step, n in counts if step <= resumed_at), default=0)
    return counts[-1][1] - before


def training_log(trainer) -> list[dict]:
    """The trainer's per-step log without timings (the artifact must not change between identical builds)."""
    rows = []
    for entry in trainer.state.log_history:
        rows.append({k: v for k, v in entry.items() if not TIMING.search(k) and k != "total_flos"})
    # The trainer's train_loss averages the steps of this process only: after a resume it would
    # differ from an uninterrupted run's. The mean of every step's loss is the same either way.
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
    for row in rows:
        if "train_loss" in row and losses:
            row["train_loss"] = sum(losses) / len(losses)
    return rows


def final_metrics(rows: list[dict], **extra) -> dict:
    """The last value of every logged quantity, plus what the recipe adds."""
    last = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                last[key] = value
    steps = max((r.get("step", 0) for r in rows), default=0)
    return {**last, "steps": steps, **extra}


def save(ctx, model, tokenizer, trainer=None, config: dict | None = None, metrics: dict | None = None,
         state_dict: dict | None = None) -> None:
    """The artifact: save_pretrained weights (safetensors) and tokenizer, the resolved config,
    the training log and the final metrics. `state_dict`: the weights to write instead of the
    model's own (DeepSpeed's gathered master weights: see gathered_weights)."""
    if not is_main():  # rank 0 alone writes the artifact
        return
    with inference_config(model):
        model.save_pretrained(ctx.out, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    tokenizer.save_pretrained(ctx.out)  # a vision-language model's processor: its tokenizer, image processor, template
    rows = training_log(trainer) if trainer is not None else []
    identity = identity_params(ctx.params)
    resolved = {"target": ctx.target, "recipe": ctx.params.recipe, "seed": ctx.seed, "params": identity,
                "inputs": dict(sorted(ctx.dep_digests.items())), "versions": library_versions(), **(config or {})}
    write_json(os.path.join(ctx.out, "training_config.json"), resolved)
    if trainer is not None:
        with open(os.path.join(ctx.out, "training_log.jsonl"), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=True) + "\n")
    final = final_metrics(rows, **(metrics or {}))
    write_json(os.path.join(ctx.out, "metrics.json"), final)
    with open(os.path.join(ctx.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(ctx, identity, final, vision=hasattr(tokenizer, "image_processor")))
    ctx.metrics({k: v for k, v in final.items() if k in ("loss", "eval_loss", "steps", "train_loss")})


def model_card(ctx, identity: dict, final: dict, vision: bool = False) -> str:
    """README.md: what the model is and what it was made from (the release card adds eval metrics)."""
    name = ctx.target.split(":", 1)[1]
    lines = [f"# {name}", "", f"Built by forgebuild as `{ctx.target}` with recipe `{ctx.params.recipe}` "
             f"(seed {ctx.seed}).", "", "## Made from", "", "| input | digest |", "|---|---|"]
    lines += [f"| `{address}` | `{digest}` |" for address, digest in sorted(ctx.dep_digests.items())]
    lines += ["", "## Hyper-parameters", "", "```json", json.dumps(identity, indent=2, sort_keys=True), "```", "",
              "## Final training metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(final.items())]
    versions = ", ".join(f"{k} {v}" for k, v in sorted(library_versions().items()))
    loader = ("AutoModelForImageTextToText.from_pretrained(path)` and its processor with "
              "`transformers.AutoProcessor.from_pretrained(path)`" if vision else "AutoModelForCausalLM.from_pretrained(path)`")
    lines += ["", f"Libraries: {versions}.", "",
              f"Load it with `transformers.{loader}"
              + (" (a LoRA adapter: `peft.PeftModel.from_pretrained(base, path)`)."
                 if getattr(ctx.params, "lora", None) is not None and not ctx.params.lora.merge else "."), ""]
    return "\n".join(lines)


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "trl", "peft"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load_model(ctx, folder: str, address: str):
    """A causal LM from a model artifact, in float32 (CPU training and exact resumes want it)."""
    from transformers import AutoModelForCausalLM

    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ctx.bad_input(f"{address} is not a model folder: it has no config.json")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def is_moe(config) -> bool:
    return hasattr(config, "output_router_logits") and hasattr(config, "router_aux_loss_coef")


@contextlib.contextmanager
def inference_config(model):
    """The config as inference wants it, for saving: `output_router_logits = true` makes a mixture
    of experts add its router loss on every forward, and under generate() that loss pairs the new
    token's router logits with the whole attention mask: "The size of tensor a (2) must match the
    size of tensor b (10)" in every eval and every user's generate (transformers 5.24). Training
    keeps the loss: TRL's trainers (sft, dpo, grpo) ask for the router logits per forward whatever
    the config says, and pretrain / continue (transformers' Trainer) turn the config back on (pretrain.fit)."""
    routed = is_moe(model.config) and model.config.output_router_logits
    if routed:
        model.config.output_router_logits = False
    try:
        yield model
    finally:
        if routed:
            model.config.output_router_logits = True


def dataset_split(ctx, address: str, folder: str, split: str, allowed: tuple):
    """One split of a dataset target as an in-memory `datasets.Dataset` (no cache files written
    anywhere), after checking its format is one this recipe trains on."""
    from datasets import Dataset

    rows, fmt = dataset_rows(ctx, address, folder, split, allowed)
    return Dataset.from_list(rows), fmt


def dataset_rows(ctx, address: str, folder: str, split: str, allowed: tuple, noun: str = "dataset"):
    """One split's records of a dataset-like artifact (dataset.json + SPLIT.jsonl: a dataset, curate or
    images target) and its format, after checking the format is one this recipe trains on."""
    meta_path = os.path.join(folder, "dataset.json")
    if not os.path.isfile(meta_path):
        raise ctx.bad_input(f"{address} is not a dataset artifact: it has no dataset.json")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta["format"] not in allowed:
        raise ctx.bad_input(f"{address} is a '{meta['format']}' {noun}; recipe \"{ctx.params.recipe}\" trains on "
                            f"{' or '.join(repr(a) for a in allowed)} {'data' if noun == 'dataset' else 'images'}")
    if split not in meta["splits"]:
        raise ctx.bad_input(f"{address} has no split '{split}' (it has {', '.join(sorted(meta['splits']))})")
    with open(os.path.join(folder, meta["splits"][split]["path"]), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise ctx.bad_input(f"{address} split '{split}' has no rows")
    return rows, meta["format"]


def lora_config(lora):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                      target_modules=lora.target_modules)


def gathered_weights(trainer) -> dict | None:
    """Under DeepSpeed, when the module's own parameters are not the trained float32 weights (ZeRO-3:
    each rank holds a shard of each; bf16: the module holds bfloat16 copies): the optimizer's float32
    master weights, gathered from every rank, one parameter at a time, as the module's state dict.
    Collective: EVERY rank must call it (a rank that skips it leaves the others waiting); rank 0
    gets the dict, the others None. None as well when there is nothing to gather (one process, DDP,
    ZeRO-1/2 in float32: the module's parameters are the whole weights on every rank)."""
    if not getattr(trainer, "is_deepspeed_enabled", False):
        return None
    engine = trainer.model_wrapped
    sharded = engine.zero_optimization_partition_weights()
    if not sharded and not engine.bfloat16_enabled():
        return None
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    module, full = engine.module, {}
    for param in module.parameters():  # shared (tied) parameters once
        value = safe_get_full_fp32_param(param) if param.requires_grad else None
        if value is None:  # frozen (a LoRA's base weights): not in the optimizer, the module's copy is theirs
            with deepspeed.zero.GatheredParameters([param], enabled=sharded):
                value = param.detach().clone()
        if is_main():
            full[id(param)] = value.detach().to("cpu", torch.float32).contiguous()
    if not is_main():
        return None
    # keep_vars: the Parameter objects themselves, so tied names map to the one gathered tensor
    return {key: full[id(value)] if id(value) in full else value.detach().cpu()
            for key, value in module.state_dict(keep_vars=True).items()}


def merged_copy(ctx, trainer, weights: dict):
    """Rank 0, LoRA merged under DeepSpeed: the module's parameters are shards or bfloat16, so merge a
    plain float32 copy built from the gathered weights (same classes and adapter config, no hooks).
    Under DeepSpeed bf16 the frozen base weights exist only as bfloat16 copies: the copy then takes
    them from the base artifact, in float32 as they were, and only the trained ones from `weights`."""
    from peft import get_peft_model
    from transformers.integrations import deepspeed as hf_deepspeed

    peft_model = trainer.model
    base = peft_model.get_base_model()
    folder = ctx.inputs.get("base") if trainer.model_wrapped.bfloat16_enabled() else None
    kept = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()  # a plain module on this rank alone: no zero.Init (collective)
    try:
        with torch.device("cpu"):
            plain = (type(base).from_pretrained(folder, dtype=torch.float32) if folder
                     else type(base)(base.config).to(torch.float32))
            copy = get_peft_model(plain, peft_model.peft_config["default"])
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = kept
    if folder:
        trained = {name for name, param in peft_model.named_parameters() if param.requires_grad}
        missing = copy.load_state_dict({k: v for k, v in weights.items() if k in trained}, strict=False)[0]
        assert not trained & set(missing), f"trained weights without a place in the copy: {trained & set(missing)}"
    else:
        copy.load_state_dict(weights, strict=True)
    return copy.merge_and_unload()


def save_trained(ctx, trainer, tokenizer, base_address: str, **kwargs) -> None:
    """Save a TRL trainer's model: full weights, LoRA merged into them, or the adapter alone.
    Called on every rank: under DeepSpeed ZeRO-3 (or bf16) the weights are gathered first, by all."""
    weights = gathered_weights(trainer)
    if not is_main():
        return
    model = trainer.model
    lora = getattr(ctx.params, "lora", None)
    if lora is not None and lora.merge:
        if weights is not None:
            model, weights = merged_copy(ctx, trainer, weights), None
        else:
            model = model.merge_and_unload()
    save(ctx, model, tokenizer, trainer, state_dict=weights, **kwargs)
    if lora is not None and not lora.merge:
        # peft writes the base's folder path, which differs between machines: name the target instead.
        # Load with PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<base path>), <this folder>).
        path = os.path.join(ctx.out, "adapter_config.json")
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        config["base_model_name_or_path"] = base_address
        if isinstance(config.get("target_modules"), list):  # peft writes a set: its order varies by run
            config["target_modules"] = sorted(config["target_modules"])
        write_json(path, config)
