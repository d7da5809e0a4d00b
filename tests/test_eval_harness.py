"""forgebuild.rules.eval.harness: lm-eval task folders read without lm-eval (task_metrics), and run offline on
the session's tiny model (run_tasks)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

import tinylab
from forgebuild.rules.eval.harness import HarnessError, run_tasks, task_metrics

# The two task YAMLs that ran offline with lm-eval 0.4.13 (the team's reference files), verbatim but for the
# data path, which lm-eval wants absolute.
ARITH_GEN = """\
task: arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}  # lm-eval wants an absolute path
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<|eos|>", "\\n"]
  max_gen_toks: 5
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: [" "]
"""
ARITH_MC = """\
task: arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}  # lm-eval wants an absolute path
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
target_delimiter: " "
doc_to_target: label
metric_list:
  - metric: acc
"""
ROWS = 12


def arith_rows(n: int = ROWS) -> list[dict]:
    """prompt/answer for arith_gen, choices/label for arith_mc: the sum and three near misses, the sum at a
    rotating position."""
    rows = []
    for i, (a, b) in enumerate(tinylab.arithmetic(n)):
        s = a + b
        choices = [str(s + d) for d in (1, 2, 3)]
        choices.insert(i % 4, str(s))
        rows.append({"prompt": f"What is {a}+{b}?\nAnswer:", "answer": str(s), "choices": choices, "label": i % 4})
    return rows


def write_task_dir(root: str, data_path: str | None = None) -> str:
    task_dir = os.path.join(root, "tasks")
    data = tinylab.write_jsonl(os.path.join(task_dir, "data", "arith.jsonl"), arith_rows())
    for name, text in (("arith_gen", ARITH_GEN), ("arith_mc", ARITH_MC)):
        with open(os.path.join(task_dir, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(text.format(data=data_path or data))
    return task_dir


@pytest.fixture
def task_dir(tmp_path):
    return write_task_dir(str(tmp_path))


def write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# ------------------------------------------------------------------ task_metrics

def test_task_metrics_reads_metric_list(task_dir):
    assert task_metrics(task_dir, ["arith_gen", "arith_mc"]) == {"arith_gen": ["exact_match"], "arith_mc": ["acc"]}
    assert task_metrics(task_dir, ["arith_mc"]) == {"arith_mc": ["acc"]}


def test_task_metrics_defaults_includes_function_tags_and_filters(tmp_path):
    d = str(tmp_path / "tasks")
    for output_type in ("generate_until", "multiple_choice", "loglikelihood", "loglikelihood_rolling"):
        # !function tags (resolved to Python by lm-eval) and unknown tags are read as plain text
        write(f"{d}/sub/{output_type}.yaml", f"task: t_{output_type}\noutput_type: {output_type}\n"
                                            "doc_to_text: !function utils.doc_to_text\nx: !custom {a: 1}\n")
    write(f"{d}/no_type.yaml", "task: t_none\n")  # lm-eval's default output_type is generate_until
    write(f"{d}/_template.yaml", "output_type: multiple_choice\nmetric_list:\n  - metric: acc_norm\n")
    write(f"{d}/inherits.yaml", "include: _template.yaml\ntask: t_inherits\n")
    write(f"{d}/fn_metric.yaml", "task: t_fn\nmetric_list:\n  - metric: !function utils.my_score\n")
    write(f"{d}/filters.yaml", "task: t_filters\nfilter_list:\n  - name: strict\n    filter: [{function: take_first}]\n"
                               "  - name: loose\n    filter: [{function: take_first}]\n")
    write(f"{d}/group.yaml", "group: g\ntask: [t_none]\n")
    write(f"{d}/empty.yaml", "")
    names = ["t_generate_until", "t_multiple_choice", "t_loglikelihood", "t_loglikelihood_rolling", "t_none",
             "t_inherits", "t_fn", "t_filters"]
    assert task_metrics(d, names) == {
        "t_generate_until": ["exact_match"],
        "t_multiple_choice": ["acc", "acc_norm"],
        "t_loglikelihood": ["perplexity", "acc"],
        "t_loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
        "t_none": ["exact_match"],
        "t_inherits": ["acc_norm"],
        "t_fn": ["my_score"],
        "t_filters": ["exact_match,strict", "exact_match,loose"],
    }


def test_task_metrics_imports_neither_torch_nor_lm_eval(task_dir):
    code = ("import json, sys; from forgebuild.rules.eval.harness import task_metrics; "
            f"m = task_metrics({task_dir!r}, ['arith_gen', 'arith_mc']); "
            "print(json.dumps([m, [k for k in ('torch', 'lm_eval', 'transformers', 'datasets') if k in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    metrics, heavy = json.loads(proc.stdout)
    assert metrics == {"arith_gen": ["exact_match"], "arith_mc": ["acc"]}
    assert heavy == []


def test_task_metrics_errors(task_dir, tmp_path):
    with pytest.raises(HarnessError) as err:
        task_metrics(task_dir, ["arith_gen", "arith_sub"])
    assert str(err.value) == f"task 'arith_sub' not found in {task_dir} (tasks there: arith_gen, arith_mc)"

    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    with pytest.raises(HarnessError) as err:
        task_metrics(empty, ["arith_gen"])
    assert str(err.value) == f"task 'arith_gen' not found in {empty} (tasks there: none)"

    missing = str(tmp_path / "nowhere")
    with pytest.raises(HarnessError) as err:
        task_metrics(missing, ["arith_gen"])
    assert str(err.value) == f"task folder {missing} does not exist"

    # a broken file is an error even when another task is asked for: lm-eval would silently drop it
    broken = write(os.path.join(task_dir, "more", "broken.yaml"),
                   "task: arith_sub\noutput_type: generate_until\nmetric_list:\n  - metric: exact_match\n"
                   "   aggregation: mean\n")
    with pytest.raises(HarnessError) as err:
        task_metrics(task_dir, ["arith_gen"])
    assert str(err.value) == (f"{broken}, line 5: cannot read YAML: while parsing a block collection: "
                              "did not find expected '-' indicator")

    write(broken, "task: arith_gen\n")
    with pytest.raises(HarnessError) as err:
        task_metrics(task_dir, ["arith_mc"])
    assert str(err.value) == (f"task 'arith_gen' is defined twice in {task_dir}: "
                              f"{task_dir}/arith_gen.yaml and {broken}")

    write(broken, "task: arith_sub\ninclude: base.yaml\n")
    with pytest.raises(HarnessError) as err:
        task_metrics(task_dir, ["arith_mc"])
    assert str(err.value) == f"{broken}: include 'base.yaml' not found ({task_dir}/more/base.yaml)"

    write(broken, "task: arith_sub\noutput_type: generate\n")
    with pytest.raises(HarnessError) as err:
        task_metrics(task_dir, ["arith_sub"])
    assert str(err.value) == (f"{broken}: task 'arith_sub' has output_type 'generate' (expected one of "
                              "generate_until, loglikelihood, loglikelihood_rolling, multiple_choice)")

    write(broken, "task: arith_sub\nmetric_list:\n  - aggregation: mean\n")
    with pytest.raises(HarnessError) as err:
        task_metrics(task_dir, ["arith_sub"])
    assert str(err.value) == f"{broken}: an entry of metric_list has no 'metric' key: {{'aggregation': 'mean'}}"


# ------------------------------------------------------------------ run_tasks

def test_run_tasks_on_tiny_base(tiny_base, task_dir):
    import torch

    torch.set_num_threads(1)
    logged = []
    result = run_tasks(tiny_base, task_dir, ["arith_gen", "arith_mc"], limit=8, batch_size=4, seed=3,
                       log=logged.append)
    assert set(result["metrics"]) == {"arith_gen.exact_match", "arith_mc.acc"}
    rows = arith_rows()[:8]
    for key, metric in result["metrics"].items():
        values = result["per_example"][key]
        assert len(values) == 8 and all(v in (0.0, 1.0) for v in values), (key, values)
        assert math.isfinite(metric["value"]) and 0.0 <= metric["value"] <= 1.0
        assert metric["value"] == pytest.approx(sum(values) / 8)  # per-example scores are what lm-eval averaged
        assert metric["stderr"] is not None and math.isfinite(metric["stderr"])
        assert metric["aggregation"] == "mean" and metric["higher_is_better"] is True and metric["n"] == 8

    gen = result["samples"]["arith_gen"]
    assert [s["prompt"] for s in gen] == [r["prompt"] for r in rows]
    assert [s["reference"] for s in gen] == [r["answer"] for r in rows]
    # exact_match ignores spaces (regexes_to_ignore: [" "]), and stopped at "\n" or 5 tokens
    for s in gen:
        assert isinstance(s["output"], str) and "\n" not in s["output"]
        assert s["score"] == float(s["output"].replace(" ", "") == s["reference"])
    assert [s["score"] for s in gen] == result["per_example"]["arith_gen.exact_match"]

    mc = result["samples"]["arith_mc"]
    assert [s["reference"] for s in mc] == [r["answer"] for r in rows]
    for s, r in zip(mc, rows):
        assert s["output"] in r["choices"]  # the choice with the highest log-likelihood
        assert s["score"] == float(s["output"] == s["reference"])
    assert [s["score"] for s in mc] == result["per_example"]["arith_mc.acc"]
    assert any("arith_gen, arith_mc" in line for line in logged)
    json.dumps(result)  # plain data, ready for the caller's JSONL and report.json


def test_run_tasks_errors(tiny_base, task_dir, tmp_path):
    logged = []
    with pytest.raises(HarnessError) as err:
        run_tasks(tiny_base, task_dir, ["arith_sub"], limit=2, batch_size=2, seed=0, log=logged.append)
    assert str(err.value) == f"task 'arith_sub' not found in {task_dir} (tasks there: arith_gen, arith_mc)"

    # YAML that reads, but whose data file is not there: lm-eval cannot load the task
    gone = str(tmp_path / "gone" / "arith.jsonl")
    bad_dir = write_task_dir(str(tmp_path / "bad"), data_path=gone)
    with pytest.raises(HarnessError) as err:
        run_tasks(tiny_base, bad_dir, ["arith_gen"], limit=2, batch_size=2, seed=0, log=logged.append)
    assert str(err.value).startswith(f"lm-eval task 'arith_gen' in {bad_dir} does not load "
                                     f"({bad_dir}/arith_gen.yaml): FileNotFoundError: ")
    assert gone in str(err.value)
    assert "Traceback" in logged[-1] and "FileNotFoundError" in logged[-1]

    # a tag PyYAML reads but lm-eval's loader rejects: lm-eval skips the file, the error says why
    write(os.path.join(bad_dir, "arith_gen.yaml"), "task: arith_gen\ndoc_to_text: !jinja '{{prompt}}'\n")
    with pytest.raises(HarnessError) as err:
        run_tasks(tiny_base, bad_dir, ["arith_gen"], limit=2, batch_size=2, seed=0, log=logged.append)
    assert str(err.value).startswith(f"lm-eval does not know task 'arith_gen' in {bad_dir} (lm-eval cannot read "
                                     f"{bad_dir}/arith_gen.yaml: ConstructorError: could not determine a "
                                     "constructor for the tag '!jinja'")
