"""The lm-evaluation-harness bridge: local lm-eval task folders, run offline.

Two halves with different import costs:

- `task_metrics` reads a task folder's YAML with PyYAML and the standard library
  only (never lm_eval, torch or transformers), so the planner can check a
  Forgefile's gates against the metrics a task will report without paying for
  the evaluation stack.
- `run_tasks` loads the model and runs lm_eval.simple_evaluate on it, offline,
  and returns the metrics, the per-example outputs and the per-example metric
  values the caller bootstraps its confidence intervals from.

Metric names are lm-eval's (`exact_match`, `acc`, `acc_norm`, ...). lm-eval keys
its results `metric,filter`; a task with a single filter (lm-eval's default is
one called "none") reports plain `metric`, a task with several filters
(`filter_list` with e.g. "strict-match" and "flexible-extract") reports
`metric,filter` for each, so the names stay unambiguous. `task_metrics` and
`run_tasks` name metrics the same way.

Only the task folder is indexed: lm-eval's ~200 built-in task folders are not
(TaskManager(include_defaults=False)). They would need their datasets from the
Hub, which an offline run cannot fetch, and indexing them costs ~4 s per run.
Groups and tags are not supported: name the tasks themselves.
"""
from __future__ import annotations

import math
import os
import traceback

import yaml

DEFAULT_METRICS = {
    "generate_until": ["exact_match"],
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# lm-eval bootstraps the stderr of non-mean metrics (perplexity, f1, bleu, ...) itself, by default with
# 100000 resamples in a multiprocessing pool of cpu_count() workers. Its stderr is only informational here
# (the caller bootstraps from per_example), so fewer resamples, in-process.
BOOTSTRAP_ITERS = 1000
_IGNORE_DIRS = {"__pycache__", ".ipynb_checkpoints"}


class HarnessError(Exception):
    """A task folder, task name or lm-eval run that cannot be used; the message says which and why."""


# ------------------------------------------------------------------ reading task folders (planner-safe)

class _FunctionRef(str):
    """The text of a `!function module.name` tag (lm-eval resolves it to a Python callable; we do not)."""


class _TolerantLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader that reads lm-eval's `!function` and any other unknown tag as plain data."""


def _function_tag(loader, node):
    return _FunctionRef(loader.construct_scalar(node))


def _any_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_TolerantLoader.add_constructor("!function", _function_tag)
_TolerantLoader.add_multi_constructor("!", _any_tag)


def _read_yaml(path: str):
    try:
        with open(path, "rb") as f:
            return yaml.load(f, Loader=_TolerantLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}" if mark is not None else path
        problem = ": ".join(p for p in (err.context, err.problem) if p) or str(err)
        raise HarnessError(f"{where}: cannot read YAML: {problem}") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as err:
        raise HarnessError(f"{path}: cannot read YAML: {err}") from None


def _load_config(path: str, seen: tuple[str, ...] = ()) -> dict | None:
    """The file's mapping with its `include:` files merged under it (as lm-eval does); None if not a mapping."""
    real = os.path.realpath(path)
    if real in seen:
        raise HarnessError(f"{path}: include cycle ({' -> '.join(seen + (real,))})")
    cfg = _read_yaml(path)
    if not isinstance(cfg, dict):
        return None
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        inc_path = inc if os.path.isabs(str(inc)) else os.path.join(os.path.dirname(path), str(inc))
        if not os.path.isfile(inc_path):
            raise HarnessError(f"{path}: include '{inc}' not found ({inc_path})")
        inc_cfg = _load_config(inc_path, seen + (real,))
        if inc_cfg is None:
            raise HarnessError(f"{path}: include '{inc}' is not a YAML mapping")
        inc_cfg.pop("task_list", None)
        merged.update(inc_cfg)
    merged.update(cfg)
    return merged


def _yaml_files(task_dir: str) -> list[str]:
    """Every *.yaml under task_dir (lm-eval indexes only this suffix), in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(task_dir):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORE_DIRS)
        found.extend(os.path.join(dirpath, name) for name in sorted(filenames) if name.endswith(".yaml"))
    return found


def _index(task_dir: str) -> dict[str, tuple[str, dict]]:
    """{task name: (yaml path, merged config)} for every task (a mapping with a string `task:`) in task_dir."""
    if not os.path.isdir(task_dir):
        raise HarnessError(f"task folder {task_dir} does not exist")
    index: dict[str, tuple[str, dict]] = {}
    for path in _yaml_files(task_dir):
        cfg = _load_config(path)
        if cfg is None or "group" in cfg or not isinstance(cfg.get("task"), str):
            continue  # a template for `include:`, a group, or not a task config at all
        name = cfg["task"]
        if name in index:
            raise HarnessError(f"task '{name}' is defined twice in {task_dir}: {index[name][0]} and {path}")
        index[name] = (path, cfg)
    return index


def _filter_names(path: str, cfg: dict) -> list[str]:
    filters = cfg.get("filter_list")
    if filters is None:
        return ["none"]
    if not isinstance(filters, list) or not all(isinstance(f, dict) and "name" in f for f in filters):
        raise HarnessError(f"{path}: filter_list must be a list of mappings, each with a 'name'")
    return [str(f["name"]) for f in filters]


def _base_metrics(path: str, cfg: dict) -> list[str]:
    metric_list = cfg.get("metric_list")
    if metric_list is None:
        output_type = cfg.get("output_type", "generate_until")  # lm-eval's TaskConfig default
        if output_type not in DEFAULT_METRICS:
            raise HarnessError(f"{path}: task '{cfg['task']}' has output_type '{output_type}' "
                               f"(expected one of {', '.join(sorted(DEFAULT_METRICS))})")
        return list(DEFAULT_METRICS[output_type])
    if not isinstance(metric_list, list):
        raise HarnessError(f"{path}: metric_list must be a list of mappings with a 'metric' key")
    names = []
    for entry in metric_list:
        if not isinstance(entry, dict) or "metric" not in entry:
            raise HarnessError(f"{path}: an entry of metric_list has no 'metric' key: {entry!r}")
        metric = entry["metric"]
        # `metric: !function utils.my_metric` is reported under the function's name, as lm-eval does
        names.append(metric.rpartition(".")[2] if isinstance(metric, _FunctionRef) else str(metric))
    return names


def _metric_names(path: str, cfg: dict) -> list[str]:
    base = _base_metrics(path, cfg)
    filters = _filter_names(path, cfg)
    if len(filters) == 1:
        return base
    return [f"{metric},{flt}" for flt in filters for metric in base]


def task_metrics(task_dir: str, tasks: list[str]) -> dict[str, list[str]]:
    """{task: [metric names]} for the named tasks of an lm-eval task folder, read from its YAML alone.

    Every *.yaml under task_dir is read (so a broken file is an error even when it is not the one
    asked for: lm-eval would silently skip it, and with it any task it defines)."""
    return _task_metrics(_index(task_dir), task_dir, tasks)


def _task_metrics(index: dict[str, tuple[str, dict]], task_dir: str, tasks: list[str]) -> dict[str, list[str]]:
    result = {}
    for task in tasks:
        if task not in index:
            there = ", ".join(sorted(index)) or "none"
            raise HarnessError(f"task '{task}' not found in {task_dir} (tasks there: {there})")
        path, cfg = index[task]
        result[task] = _metric_names(path, cfg)
    return result


# ------------------------------------------------------------------ running lm-eval

def _plain(value):
    """JSON-friendly: numpy scalars to Python numbers, tuples to lists."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        try:
            return _plain(value.item())
        except (TypeError, ValueError):
            pass
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


def _sample_view(sample: dict, output_type: str, metrics: list[str]) -> dict:
    """prompt / output / reference of one lm-eval logged sample, whatever its output type."""
    args = sample.get("arguments") or []
    prompt = args[0][0] if args and isinstance(args[0], (list, tuple)) and args[0] else ""
    target = sample.get("target")
    resps = sample.get("filtered_resps")
    output, reference = resps, target
    if output_type == "generate_until":
        output = resps[0] if isinstance(resps, list) and len(resps) == 1 else resps
    elif output_type == "multiple_choice":
        lls = [r[0] if isinstance(r, (list, tuple)) else r for r in (resps or [])]
        n = len(lls) // 2 if "acc_mutual_info" in metrics else len(lls)
        continuations = [a[1] if isinstance(a, (list, tuple)) and len(a) > 1 else "" for a in args[:n]]
        if n and all(_number(x) is not None for x in lls[:n]):
            best = max(range(n), key=lambda i: float(lls[i]))
            output = continuations[best].strip() if best < len(continuations) else best
        if isinstance(target, int) and 0 <= target < len(continuations):
            reference = continuations[target].strip()
        elif isinstance(target, list) and all(isinstance(t, int) and 0 <= t < len(continuations) for t in target):
            reference = [continuations[t].strip() for t in target]
    elif output_type == "loglikelihood":
        reference = args[0][1] if args and len(args[0]) > 1 else target
        output = resps[0] if isinstance(resps, list) and resps else resps
    elif output_type == "loglikelihood_rolling":
        output = resps[0] if isinstance(resps, list) and resps else resps
        reference = ""
    return {"prompt": prompt, "output": _plain(output), "reference": _plain(reference)}


def _set_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap: in-process, not a cpu_count() pool


def _lm_eval_reason(path: str) -> str:
    """Why lm-eval's own YAML loader rejects a file (it skips such files silently when indexing)."""
    try:
        from lm_eval.tasks._yaml_loader import load_yaml  # private, hence the guard
    except ImportError:
        return ""
    try:
        load_yaml(path, resolve_func=False)
    except Exception as err:  # noqa: BLE001 - any reason is the answer
        return f" (lm-eval cannot read {path}: {type(err).__name__}: {err})"
    return ""


def run_tasks(model_path: str, task_dir: str, tasks: list[str], limit: int | None, batch_size: int, seed: int,
              log=print) -> dict:
    """Evaluate the model folder on lm-eval tasks from task_dir, offline.

    Returns {"metrics": {"task.metric": {"value", "stderr", "aggregation", "higher_is_better", "n"}},
             "samples": {task: [{"doc_id", "prompt", "output", "reference", "score", "metrics"}]},
             "per_example": {"task.metric": [one value per sample, in doc order]}}.
    per_example values are floats for mean-aggregated metrics (acc, exact_match, ...: bootstrap their mean).
    Metrics that lm-eval aggregates otherwise keep lm-eval's per-sample values, as "aggregation" says:
    perplexity (a log-likelihood per sample; value = exp(-mean)), word_perplexity / byte_perplexity /
    bits_per_byte ([log-likelihood, words or bytes] pairs), f1 / bleu ([reference, prediction]).
    "score" in samples is the task's first metric (under its first filter) for that sample.

    Sets HF_DATASETS_OFFLINE, HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and DISABLE_MULTIPROC in os.environ
    where they are unset (the HF ones are read when datasets / transformers are first imported). Runs on
    cuda when torch sees one, else on the CPU. Error messages name task_dir as an absolute path.
    """
    _set_offline_env()
    task_dir = os.path.abspath(task_dir)
    index = _index(task_dir)
    expected = _task_metrics(index, task_dir, tasks)  # the clear errors for unknown tasks and broken YAML

    try:
        import lm_eval
        import torch
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
        from transformers import AutoTokenizer
    except ImportError as err:
        raise HarnessError(f"lm-eval tasks need lm_eval, torch and transformers installed ({err})") from None

    manager = TaskManager(include_path=task_dir, include_defaults=False)
    loaded = {}
    for task in tasks:
        try:
            loaded[task] = manager.load([task])["tasks"][task]
        except Exception as err:  # noqa: BLE001 - lm-eval raises whatever its loaders raise
            log(traceback.format_exc())
            if isinstance(err, KeyError) and task not in manager.all_tasks:
                reason = _lm_eval_reason(index[task][0])
                raise HarnessError(f"lm-eval does not know task '{task}' in {task_dir}{reason}") from None
            raise HarnessError(f"lm-eval task '{task}' in {task_dir} does not load ({index[task][0]}): "
                               f"{type(err).__name__}: {err}") from None

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not os.path.isdir(model_path):
        raise HarnessError(f"model folder {model_path} does not exist")
    try:
        model = _causal_model(model_path).to(device)
        # a mixture of experts: no router loss under generate() (see training.inference_config)
        if getattr(model.config, "output_router_logits", False):
            model.config.output_router_logits = False
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as err:  # noqa: BLE001
        log(traceback.format_exc())
        raise HarnessError(f"cannot load the model at {model_path}: {type(err).__name__}: {err}") from None
    model.eval()

    log(f"lm-eval {getattr(lm_eval, '__version__', '?')}: {', '.join(tasks)} from {task_dir} on {device}, "
        f"limit {limit}, batch size {batch_size}, seed {seed}")
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device, backend="causal",
                  max_length=_positions(model.config))
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[loaded[t] for t in tasks], task_manager=manager, limit=limit, log_samples=True,
            bootstrap_iters=BOOTSTRAP_ITERS, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed)
    except Exception as err:  # noqa: BLE001
        log(traceback.format_exc())
        raise HarnessError(f"lm-eval failed evaluating {', '.join(tasks)} from {task_dir}: "
                           f"{type(err).__name__}: {err}") from None
    if results is None:
        raise HarnessError("lm-eval returned no results (not the main process of a distributed run?)")
    filters = {task: _filter_names(*index[task]) for task in tasks}
    return _collect(results, loaded, expected, filters)


def _causal_model(model_path: str):
    """The folder's model as lm-eval's HFLM drives a causal LM: an image-text-to-text model (a LLaVA) is one
    too when given token ids alone, its language model scoring text with no picture, so text tasks measure
    what training on pictures did to its text."""
    from forgebuild.rules.model.vision import is_vlm

    if is_vlm(model_path):
        from forgebuild.rules.eval.vision import load_model

        return load_model(model_path)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path)


def _positions(config) -> int | None:
    """The language model's context length. HFLM looks for it on the top config only, where a LLaVA has none
    (it is in text_config), and would then take the tokenizer's (often unset: 2048 tokens by default)."""
    for source in (config, getattr(config, "text_config", None)):
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            if isinstance(getattr(source, name, None), int):
                return getattr(source, name)
    return None


def _collect(results: dict, loaded: dict, expected: dict[str, list[str]], filters: dict[str, list[str]]) -> dict:
    metrics: dict[str, dict] = {}
    per_example: dict[str, list] = {}
    samples_out: dict[str, list[dict]] = {}
    for task, task_obj in loaded.items():
        row = results["results"].get(task, {})
        output_type = task_obj.get_config("output_type")
        aggregations = task_obj.aggregation()
        higher = task_obj.higher_is_better()
        base = list(aggregations)
        main_filter = filters[task][0]
        samples = results.get("samples", {}).get(task, [])
        for name in expected[task]:
            metric, _, flt = name.partition(",")
            flt = flt or main_filter
            value = row.get(f"{metric},{flt}")
            stderr = row.get(f"{metric}_stderr,{flt}")
            agg = aggregations.get(metric)
            values = [s.get(metric) for s in samples if s.get("filter", flt) == flt]
            mean_agg = getattr(agg, "__name__", "") == "mean"
            metrics[f"{task}.{name}"] = {
                "value": _number(value) if value is not None else None,
                "stderr": _number(stderr) if _number(stderr) is not None and math.isfinite(_number(stderr)) else None,
                "aggregation": getattr(agg, "__name__", str(agg)),
                "higher_is_better": bool(higher.get(metric, True)),
                "n": len(values),
            }
            per_example[f"{task}.{name}"] = [float(v) if mean_agg and _number(v) is not None else _plain(v)
                                             for v in values]
        main_metric = base[0] if base else None
        rows = []
        for s in samples:
            if s.get("filter", main_filter) != main_filter:
                continue
            view = _sample_view(s, output_type, base)
            score = s.get(main_metric)
            rows.append({"doc_id": s.get("doc_id"), **view,
                         "score": _number(score) if _number(score) is not None else _plain(score),
                         "metrics": {m: _plain(s.get(m)) for m in base if m in s}})
        samples_out[task] = rows
    return {"metrics": metrics, "samples": samples_out, "per_example": per_example}
