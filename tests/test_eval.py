"""eval and release targets on tiny trained models: metrics with intervals on benchmarks whose
answers are known, per model x benchmark caching, gates that fail the build but keep the
report, and releases that copy only what passed."""
from __future__ import annotations

import json
import os

import pytest
import tinylab

SCORER = '''
def digits(prompts, completions, answer, **kwargs):
    return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]
'''

EVAL = """
[corpus.text]
sources = ["text/*.txt"]
holdout = 0.3

[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = 32
train = { lr = 1e-3, steps = 3, batch_size = 8 }
threads = 1

[eval.check]
models = ["model:base", "model:sft"]
benchmarks = [
    { name = "arith", data = "bench/arith.jsonl", metrics = ["exact_match", "numeric"], tolerance = 100, scorers = ["scorers.py:digits"] },
    { name = "mc", kind = "choice", data = "bench/mc.jsonl" },
    { name = "holdout", kind = "perplexity", corpus = "corpus:text", seq_len = 32 },
]
generation = { max_new_tokens = 4 }
limit = 12
gate = { "arith.exact_match" = ">= 0.9", "holdout.perplexity" = "<= 100000" }
threads = 1
"""


def write_benchmarks(root: str) -> None:
    pairs = tinylab.arithmetic(12, seed=5)
    tinylab.write_jsonl(os.path.join(root, "bench/arith.jsonl"),
                        ({"prompt": f"What is {a}+{b}?\nAnswer:", "answer": str(a + b)} for a, b in pairs))
    tinylab.write_jsonl(os.path.join(root, "bench/mc.jsonl"),
                        ({"prompt": f"What is {a}+{b}?\nAnswer:", "choices": [f" {a + b}", f" {a + b + 7}"], "answer": 0}
                         for a, b in pairs))


@pytest.fixture
def eval_project(recipe_project):
    p = recipe_project
    tinylab.write_stdlib_text(p.root, files=12, max_chars=3000)
    write_benchmarks(p.root)
    p.write("scorers.py", SCORER)
    return p


def evaluations(log: str) -> list[str]:
    return [line.split("evaluating ", 1)[1].split(" (")[0] for line in log.splitlines() if "evaluating " in line]


def test_report_intervals_failed_gate_kept_and_per_model_caching(eval_project):
    p = eval_project
    p.forgefile(p.preamble + EVAL)
    failed = p.run("eval:check", expect=1, timeout=600)
    assert "eval:check: 1 of 2 gates failed" in failed.stdout
    assert "arith.exact_match" in failed.stdout and "FAIL" in failed.stdout
    log = p.read(".forge/logs/eval/check.log")
    assert sorted(evaluations(log)) == sorted(f"{m} on {b}" for m in ("model:base", "model:sft")
                                              for b in ("arith", "mc", "holdout"))
    report = json.loads(p.read(".forge/out/eval/check/report.json"))
    assert report["passed"] is False and report["models"] == ["model:base", "model:sft"]
    for model in report["models"]:
        results = report["results"][model]
        # contamination: model:base is imported, so its build reads no data to check the prompts against:
        # not measured (None), never a 0 that would read as clean; model:sft's build reads its dataset
        counts = {m: results.pop(m) for m in ("arith.contamination", "mc.contamination", "contamination")}
        if model == "model:base":
            assert all(c == {"value": None, "n": 0} for c in counts.values()), counts
        else:
            assert all(c["n"] == 12 for m, c in counts.items() if m != "contamination") and counts["contamination"]["n"] == 24
        assert set(results) == {"arith.exact_match", "arith.numeric", "arith.digits", "mc.accuracy",
                                "mc.accuracy_norm", "holdout.perplexity", "holdout.loss"}
        for stat in results.values():
            assert stat["low"] <= stat["value"] <= stat["high"] and stat["n"] > 0
        assert results["arith.numeric"]["value"] == results["arith.digits"]["value"]  # tolerance 100: any number
    assert {c["metric"] for c in report["comparisons"]} >= {"arith.exact_match", "mc.accuracy"}
    assert all({"diff", "low", "high", "significant"} <= set(c) for c in report["comparisons"])
    gate = {g["metric"]: g for g in report["gates"]}
    assert gate["arith.exact_match"]["model"] == "model:sft" and not gate["arith.exact_match"]["passed"]
    assert gate["holdout.perplexity"]["passed"]
    samples = p.read(".forge/out/eval/check/samples/model-sft/arith.jsonl").splitlines()
    assert len(samples) == 12 and {"prompt", "output", "reference", "scores"} <= set(json.loads(samples[0]))
    html = p.read(".forge/out/eval/check/report.html")
    assert "model:sft" in html and "data:image/png;base64," in html
    assert "arith.exact_match" in p.read(".forge/out/eval/check/report.md")

    # asked again: the same failure from the cache, nothing evaluated
    again = p.run("eval:check", expect=1)
    assert "1 of 2 gates failed" in again.stdout
    assert evaluations(p.read(".forge/logs/eval/check.log")) == evaluations(log)

    # a gate that holds: the eval is rebuilt from the cached evaluations
    p.forgefile(p.read("Forgefile.toml").replace('">= 0.9"', '">= 0.0"'))
    assert p.build("eval:check")["eval:check"] == "built"
    assert evaluations(p.read(".forge/logs/eval/check.log")) == []

    # a new model next to the old ones: only its evaluations run
    p.forgefile(p.read("Forgefile.toml").replace(
        'models = ["model:base", "model:sft"]', 'models = ["model:base", "model:sft", "model:sft2"]')
        + '\n[model.sft2]\nrecipe = "sft"\nbase = "model:base"\ndata = "dataset:sft"\nmax_length = 32\n'
          'train = { lr = 1e-3, steps = 2, batch_size = 8 }\nthreads = 1\n')
    p.run("eval:check", timeout=600)
    assert sorted(evaluations(p.read(".forge/logs/eval/check.log"))) == [
        "model:sft2 on arith", "model:sft2 on holdout", "model:sft2 on mc"]


YES_MODEL = """
        [dataset.yes]
        source = "data/yes.jsonl"
        format = "prompt_completion"

        [model.yes]
        recipe = "sft"
        base = "model:base"
        data = "dataset:yes"
        max_length = 32
        train = { lr = 5e-3, steps = 25, batch_size = 8, schedule = "constant" }
        threads = 1
"""


def taught_yes(p) -> list[str]:
    """data/yes.jsonl (24 prompts answered " yes", what model:yes of YES_MODEL learns) and bench/yes.jsonl."""
    prompts = [f"Question {i}: is the sky up?\nAnswer:" for i in range(24)]
    tinylab.write_jsonl(os.path.join(p.root, "data/yes.jsonl"), ({"prompt": q, "completion": " yes"} for q in prompts))
    tinylab.write_jsonl(os.path.join(p.root, "bench/yes.jsonl"), ({"prompt": q, "answer": "yes"} for q in prompts[:8]))
    return prompts


def test_known_answers_score_one_and_zero(eval_project):
    """A model taught one answer: a benchmark expecting it scores 1 (interval [1, 1]), one expecting
    another answer scores 0, and multiple choice picks the taught answer."""
    p = eval_project
    prompts = taught_yes(p)
    tinylab.write_jsonl(os.path.join(p.root, "bench/no.jsonl"), ({"prompt": q, "answer": "no"} for q in prompts[:8]))
    tinylab.write_jsonl(os.path.join(p.root, "bench/yes_mc.jsonl"),
                        ({"prompt": q, "choices": [" no", " yes"], "answer": 1} for q in prompts[:8]))
    p.forgefile(p.preamble + YES_MODEL + """
        [eval.known]
        models = ["model:yes"]
        benchmarks = ["bench/yes.jsonl", "bench/no.jsonl", { name = "mc", kind = "choice", data = "bench/yes_mc.jsonl" }]
        generation = { max_new_tokens = 8 }
        threads = 1
    """)
    p.run("eval:known", timeout=300)
    results = json.loads(p.read(".forge/out/eval/known/report.json"))["results"]["model:yes"]
    assert results["yes.exact_match"] == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 8}
    assert results["no.exact_match"]["value"] == 0.0
    assert results["mc.accuracy"]["value"] == 1.0


def test_eval_forgefile_errors(eval_project):
    p = eval_project
    p.forgefile(p.preamble + """
        [eval.bad]
        models = ["model:base"]
        benchmarks = ["bench/arith.jsonl", { name = "ppl", kind = "perplexity", corpus = "corpus:text" }]
        gate = { "arith.exact" = ">= 0.5", "ppl.perplexity" = "below 10" }

        [corpus.text]
        sources = ["text/*.txt"]
    """)
    lines = p.run(expect=2).stderr.strip().splitlines()
    assert ("Forgefile.toml:25: error: eval:bad: key 'gate.arith.exact': the eval produces no metric 'arith.exact'; "
            "it produces arith.exact_match, ppl.perplexity, ppl.loss") in lines, lines
    assert ("Forgefile.toml:25: error: eval:bad: key 'gate.ppl.perplexity': 'below 10' is not a condition: write "
            "e.g. \">= 0.6\" (>=, <=, >, <, ==, then a number)") in lines, lines


def test_a_bad_benchmark_row_names_its_line(eval_project):
    p = eval_project
    with open(os.path.join(p.root, "bench/arith.jsonl"), "a") as f:
        f.write('{"prompt": "What is 1+1?"}\n')
    p.forgefile(p.preamble + '\n[eval.e]\nmodels = ["model:base"]\nbenchmarks = ["bench/arith.jsonl"]\nthreads = 1\n')
    proc = p.run("eval:e", expect=2, timeout=300)
    assert "bench/arith.jsonl:13: field 'answer' is missing" in proc.stdout, proc.stdout


RELEASE = """
[eval.gate]
models = ["model:base"]
benchmarks = ["bench/arith.jsonl"]
generation = { max_new_tokens = 2 }
gate = { "arith.exact_match" = "GATE" }
threads = 1

[release.prod]
model = "model:base"
gates = ["eval:gate"]
to = "dist/prod"
"""


def test_release_copies_only_what_passed(eval_project):
    from transformers import AutoModelForCausalLM

    p = eval_project
    p.forgefile(p.preamble + RELEASE.replace("GATE", ">= 0.99"))
    proc = p.run("release:prod", expect=1, timeout=300)
    assert "release:prod" in proc.stdout and "skipped" in proc.stdout
    assert not os.path.exists(os.path.join(p.root, "dist"))
    p.forgefile(p.preamble + RELEASE.replace("GATE", ">= 0.0"))
    p.run("release:prod", timeout=300)
    dest = os.path.join(p.root, "dist/prod")
    assert AutoModelForCausalLM.from_pretrained(dest).config.model_type == "llama"
    card = p.read("dist/prod/README.md")
    assert "## Lineage" in card and "model:base" in card and "arith.exact_match" in card
    manifest = json.loads(p.read("dist/prod/release.json"))
    assert "model.safetensors" in manifest["files"] and manifest["model"] == "model:base"
    assert os.listdir(os.path.join(p.root, "dist")) == ["prod"]  # no staging folder left behind


def test_release_gate_must_evaluate_the_model(eval_project):
    p = eval_project
    p.forgefile(p.preamble + RELEASE.replace("GATE", ">= 0.5") + '\n[release.other]\nmodel = "model:x"\n'
                'gates = ["eval:gate"]\nto = "dist/x"\n[model.x]\nrecipe = "import"\npath = "dist"\n')
    lines = p.run("-n", expect=2).stderr.strip().splitlines()
    assert any(line.endswith("error: release:other: key 'gates[0]': eval:gate does not evaluate model:x "
                             "(it evaluates model:base)") for line in lines), lines


def test_lm_eval_tasks_from_a_local_folder(eval_project):
    from test_eval_harness import write_task_dir

    p = eval_project
    write_task_dir(p.root)
    p.forgefile(p.preamble + """
        [eval.harness]
        models = ["model:base"]
        benchmarks = [{ name = "lm", kind = "lm-eval", path = "tasks", tasks = ["arith_gen", "arith_mc"] }]
        limit = 6
        gate = { "lm.arith_mc.acc" = ">= 0.0" }
        threads = 1
    """)
    p.run("eval:harness", timeout=300)
    report = json.loads(p.read(".forge/out/eval/harness/report.json"))
    results = report["results"]["model:base"]
    assert {"lm.arith_gen.exact_match", "lm.arith_mc.acc"} <= set(results)
    assert results["lm.arith_mc.acc"]["n"] == 6 and report["passed"]
    rows = p.read(".forge/out/eval/harness/samples/model-base/lm.jsonl").splitlines()
    assert len(rows) == 12 and {"task", "prompt", "output", "reference"} <= set(json.loads(rows[0]))
    # a gate on a metric the tasks do not produce: known once their YAML is read, exit 2 listing them
    p.forgefile(p.read("Forgefile.toml").replace('"lm.arith_mc.acc"', '"lm.arith_mc.f1"'))
    proc = p.run("eval:harness", expect=2, timeout=300)
    assert "gate 'lm.arith_mc.f1': the eval produces no such metric; it produces" in proc.stdout


def test_release_to_an_fsspec_url(eval_project, tmp_path_factory):
    p = eval_project
    bucket = tmp_path_factory.mktemp("bucket")
    p.forgefile(p.preamble + RELEASE.replace("GATE", ">= 0.0").replace('to = "dist/prod"', f'to = "file://{bucket}/prod"'))
    p.run("release:prod", timeout=300)
    manifest = json.loads((bucket / "prod" / "release.json").read_text())
    assert sorted(os.listdir(bucket / "prod")) == sorted([*manifest["files"], "release.json"])
    assert "README.md" in manifest["files"] and "model.safetensors" in manifest["files"]


def test_relative_gates_against_the_ancestors(eval_project):
    """`ancestors = true` evaluates model:yes's base as well (root first); a gain over the parent passes
    its paired gate, an impossible perplexity drop fails with its difference and bound in the table,
    and the vocabulary gate's threshold is the model's own vocab_size. Without the option the parent
    is not evaluated: a Forgefile error."""
    p = eval_project
    taught_yes(p)
    forgefile = p.preamble + """
        [corpus.text]
        sources = ["text/*.txt"]
        holdout = 0.3
    """ + YES_MODEL + """
        [eval.rel]
        models = ["model:yes"]
        ancestors = true
        benchmarks = ["bench/yes.jsonl", { name = "holdout", kind = "perplexity", corpus = "corpus:text", seq_len = 32 }]
        generation = { max_new_tokens = 8 }
        limit = 8
        gate = { "yes.exact_match" = ">= parent + 0.5 @ 95%", "holdout.perplexity" = ["<= 1000 * vocab", "<= parent - 1e9 @ 95%"] }
        threads = 1
    """
    p.forgefile(forgefile)
    failed = p.run("eval:rel", expect=1, timeout=600)
    assert "eval:rel: 1 of 3 gates failed" in failed.stdout and "difference (bound)" in failed.stdout
    assert sorted(evaluations(p.read(".forge/logs/eval/rel.log"))) == [
        "model:base on holdout", "model:base on yes", "model:yes on holdout", "model:yes on yes"]
    report = json.loads(p.read(".forge/out/eval/rel/report.json"))
    assert report["models"] == ["model:base", "model:yes"] and report["ancestors"] == ["model:base"]
    assert [(c["a"], c["b"]) for c in report["comparisons"]][0] == ("model:base", "model:yes")
    vocab, drop, gain = report["gates"]  # by metric, then in the order written
    assert (gain["condition"], gain["against"], gain["side"], gain["pairs"]) == (
        ">= parent + 0.5 @ 95%", "model:base", "lower", 8)
    assert gain["passed"] and gain["diff"] == 1.0 and gain["bound"] == 1.0
    assert gain["value"] == 1.0 and gain["against_value"] == 0.0 and gain["threshold"] == 0.5
    config = json.loads(p.read(".forge/out/model/yes/config.json"))
    assert vocab["passed"] and vocab["vocab_size"] == config["vocab_size"] and vocab["threshold"] == 1000 * config["vocab_size"]
    base_ppl = report["results"]["model:base"]["holdout.perplexity"]["value"]
    assert not drop["passed"] and drop["side"] == "upper" and drop["bound"] > -1e9
    assert drop["diff"] == pytest.approx(report["results"]["model:yes"]["holdout.perplexity"]["value"] - base_ppl)

    # without ancestors, the parent the gate compares with is not evaluated: the Forgefile says so
    p.forgefile(forgefile.replace("ancestors = true\n", ""))
    lines = p.run("-n", expect=2).stderr.strip().splitlines()
    assert any(line.endswith("error: eval:rel: key 'gate.yes.exact_match': '>= parent + 0.5 @ 95%': the parent of "
                             "model:yes is model:base, which is not evaluated: add it to models, or set "
                             "ancestors = true") for line in lines), lines


def test_a_benchmark_from_a_targets_output(eval_project):
    """`data = "run:NAME"`: a generator's one .jsonl file is the benchmark; two are bad input naming the target."""
    p = eval_project
    p.write("gen.py", "import shutil, sys\nfor name in sys.argv[3:]:\n    shutil.copy(sys.argv[1], sys.argv[2] + '/' + name)\n")
    table = ('\n[run.bench]\ncmd = "python3 {in.script} {in.rows} {out} NAMES"\ninputs = { script = "gen.py", rows = '
             '"bench/arith.jsonl" }\noutputs = [OUTPUTS]\n\n[eval.e]\nmodels = ["model:base"]\nbenchmarks = [{ name = '
             '"gen", data = "run:bench" }]\ngeneration = { max_new_tokens = 2 }\nthreads = 1\n')
    p.forgefile(p.preamble + table.replace("NAMES", "a.jsonl").replace("OUTPUTS", '"a.jsonl"'))
    p.run("eval:e", timeout=300)
    report = json.loads(p.read(".forge/out/eval/e/report.json"))
    assert report["results"]["model:base"]["gen.exact_match"]["n"] == 12
    p.forgefile(p.preamble + table.replace("NAMES", "a.jsonl b.jsonl").replace("OUTPUTS", '"a.jsonl", "b.jsonl"'))
    proc = p.run("eval:e", expect=2, timeout=300)
    assert "benchmark gen: run:bench must hold one .jsonl file to read as the benchmark; it holds 2" in proc.stdout, \
        proc.stdout
