"""A newcomer's first ten minutes (issue 11, section 5): what would fail after minutes of work is
said before the first stage starts, in one line with file, line, target and key; a mixture of
experts evaluates; a reordered `models` list reads as moved; `-v` prints what the docs show."""
from __future__ import annotations

import json
import os

import tinylab
from conftest import Project
from test_models import FAMILIES  # a tiny mixtral and a tiny qwen3_moe

from forgebuild.engine.preflight import install_command

# ------------------------------------------------------------------ missing packages

HIDE_MATPLOTLIB = "import sys\nsys.modules['matplotlib'] = None  # find_spec() answers None, import fails\n"

EVAL_ONLY = """
[run.first]
cmd = "echo first >> runs.txt; echo x > {out}/x"

[model.m]
recipe = "import"
path = "weights"

[eval.check]
models = ["model:m"]
benchmarks = ["bench.jsonl"]
"""


def test_a_missing_extra_stops_the_build_before_any_stage_starts(project, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(HIDE_MATPLOTLIB)
    hidden = {"PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    project.write("weights/config.json", "{}\n")
    tinylab.write_jsonl(os.path.join(project.root, "bench.jsonl"), [{"prompt": "1+1=", "answer": "2"}])
    project.forgefile(EVAL_ONLY)
    proc = project.run(expect=2, env=hidden)
    assert proc.stderr == (f"forgebuild: not installed: matplotlib (for eval:check); "
                           f"run: {install_command(['eval'])}\n")
    assert project.runs() == [] and not os.path.exists(os.path.join(project.root, ".forge", "out"))
    # only what is about to build is checked: run:first needs nothing
    assert project.build("run:first", env=hidden) == {"run:first": "built"}
    assert project.runs() == ["first"]


def test_the_install_line_names_the_checkout_forgebuild_runs_from(tmp_path):
    checkout = tmp_path / "my forge"
    checkout.mkdir()
    (checkout / "pyproject.toml").write_text("[project]\nname = 'forgebuild'\n")
    assert install_command(["eval", "train"], str(checkout)) == f"pip install -e '{checkout}[eval,train]'"
    assert install_command(["eval"], str(tmp_path)) == "pip install 'forgebuild[eval]'"  # site-packages


# ------------------------------------------------------------------ files checked before building

REWARDS = '''
def exact_answer(prompts, completions, answer, **kwargs):
    return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]
'''

TYPOS = """
[model.base]
recipe = "import"
path = "weights"

[dataset.prompts]
source = "data/prompts.jsonl"
format = "prompts"

[model.rl]
recipe = "grpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = ["rewards.py:exact_answr", { builtin = "exact", weight = 0.5 }]
train = { steps = 1, batch_size = 4 }
generations = 4

[eval.check]
models = ["model:rl"]
benchmarks = [{ name = "sums", data = "bench.jsonl", scorers = ["rewards.py:exact_answers"] }]
"""


def test_a_reward_or_scorer_missing_from_its_file_is_a_forgefile_error(project, no_torch_env):
    project.write("weights/config.json", "{}\n")
    project.write("rewards.py", REWARDS)
    tinylab.write_arith_data(project.root, n=8)
    tinylab.write_jsonl(os.path.join(project.root, "bench.jsonl"), [{"prompt": "1+1=", "answer": "2"}])
    project.forgefile(TYPOS)
    # the file is parsed, never imported, and nothing is built: torch is a tripwire here
    proc = project.run(expect=2, env=no_torch_env)
    assert proc.stderr.splitlines() == [
        "Forgefile.toml:14: error: model:rl: key 'rewards[0]': rewards.py has no function 'exact_answr' "
        "(did you mean 'exact_answer'?)",
        "Forgefile.toml:20: error: eval:check: key 'benchmarks[0].scorers[0]': rewards.py has no function "
        "'exact_answers' (did you mean 'exact_answer'?)",
    ]
    assert not os.path.exists(os.path.join(project.root, ".forge", "out"))
    project.write("rewards.py", "def exact_answer(:\n")
    proc = project.run(expect=2, env=no_torch_env)
    assert proc.stderr.splitlines()[0] == ("Forgefile.toml:14: error: model:rl: key 'rewards[0]': rewards.py does "
                                           "not parse: invalid syntax (line 1)")


DECONTAMINATE = """
[dataset.sft]
source = "data/train.jsonl"
format = "prompt_completion"
decontaminate = "bench.jsonl"
decontaminate_fields = ["prompt"]
"""


def _contaminated(root: str) -> None:
    """41 training rows that copy a benchmark prompt word for word, and 30 that do not."""
    pairs = tinylab.arithmetic(71, seed=3)
    bench = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a, b in pairs[:41]]
    tinylab.write_jsonl(os.path.join(root, "bench.jsonl"), bench)
    rows = [{"prompt": f"What is {a} plus {b}?", "completion": f" {a + b}"} for a, b in pairs[:41]]
    rows += [{"prompt": f"Add {a} and {b}.", "completion": f" {a + b}"} for a, b in pairs[41:]]
    tinylab.write_jsonl(os.path.join(root, "data/train.jsonl"), rows)


def test_an_ngram_longer_than_every_benchmark_text_is_an_error(project, no_torch_env):
    _contaminated(project.root)
    project.forgefile(DECONTAMINATE)  # ngram defaults to 13; the prompts have 5 words
    dry = project.run("-n", expect=2, env=no_torch_env)  # a dry run says it too, before anything is built
    proc = project.run(expect=2, env=no_torch_env)
    assert dry.stderr == proc.stderr == ("Forgefile.toml:2: error: dataset:sft: key 'ngram': ngram = 13 is longer than every "
                           "text of bench.jsonl (the longest has 5 words): decontamination could remove no copy of "
                           "it; set ngram = 5 or less\n")
    project.forgefile(DECONTAMINATE + "ngram = 5\n")
    assert project.build(env=no_torch_env) == {"dataset:sft": "built"}
    stats = json.loads(project.read(".forge/out/dataset/sft/stats.json"))
    assert stats["decontaminated"]["rows"] == 41 and stats["splits"]["train"] == 30
    # the benchmark edited, the Forgefile not (its validation is cached): checked again all the same
    tinylab.write_jsonl(os.path.join(project.root, "bench.jsonl"), [{"prompt": "Add 2 and 3.", "answer": "5"}])
    proc = project.run(expect=2, env=no_torch_env)
    assert proc.stderr == ("Forgefile.toml:7: error: dataset:sft: key 'ngram': ngram = 5 is longer than every "
                           "text of bench.jsonl (the longest has 4 words): decontamination could remove no copy of "
                           "it; set ngram = 4 or less\n")


def test_a_benchmark_target_too_short_for_the_ngram_fails_its_build(project, no_torch_env):
    _contaminated(project.root)
    project.forgefile(DECONTAMINATE.replace('decontaminate = "bench.jsonl"', 'decontaminate = "dataset:bench"') + """
[dataset.bench]
source = "bench.jsonl"
format = "prompts"
""")
    proc = project.run("--json", expect=2, env=no_torch_env)
    failed = [json.loads(line) for line in proc.stdout.splitlines() if '"failed"' in line]
    assert [e["reason"] for e in failed if e["event"] == "failed"] == [
        "ngram = 13 is longer than every text of dataset:bench (the longest has 5 words): decontamination could "
        "remove no copy of it; set ngram = 5 or less"]


# ------------------------------------------------------------------ perplexity without a holdout

HOLDOUTS = """
[corpus.a]
sources = ["text/a.txt"]
holdout = 0.2

[corpus.b]
sources = ["text/b.txt"]

[corpus.mix]
mix = { "corpus:a" = 0.5, "corpus:b" = 0.5 }

[corpus.mix-a]
mix = { "corpus:a" = 1.0, "corpus:b" = 0 }

[corpus.plain]
sources = ["text/*.txt"]

[corpus.kept]
sources = ["corpus:a"]

[model.m]
recipe = "import"
path = "weights"

[eval.e]
models = ["model:m"]
benchmarks = [
    { name = "p1", kind = "perplexity", corpus = "corpus:mix" },
    { name = "p2", kind = "perplexity", corpus = "corpus:plain" },
    { name = "p3", kind = "perplexity", corpus = "corpus:kept" },
    { name = "p4", kind = "perplexity", corpus = "corpus:a" },
    { name = "p5", kind = "perplexity", corpus = "corpus:mix-a" },
]
"""


def test_perplexity_of_a_corpus_without_holdout_is_a_forgefile_error(project, no_torch_env):
    project.write("weights/config.json", "{}\n")
    project.write("text/a.txt", "some words in a file\n")
    project.write("text/b.txt", "other words in another file\n")
    project.forgefile(HOLDOUTS)
    proc = project.run("status", expect=2, env=no_torch_env)
    assert proc.stderr.splitlines() == [
        "Forgefile.toml:27: error: eval:e: key 'benchmarks[0].corpus': corpus:mix has no holdout to measure "
        "perplexity on: it mixes corpus:b, which has none (a mix holds out from every part in proportion); "
        "set holdout in corpus:b",
        "Forgefile.toml:27: error: eval:e: key 'benchmarks[1].corpus': corpus:plain has no holdout to measure "
        "perplexity on: set holdout (a fraction, e.g. 0.05) in corpus:plain",
    ]


# ------------------------------------------------------------------ mixture of experts, reordered models

MOE = FAMILIES + """
[eval.moe]
models = ["model:mixtral", "model:qwen3moe-fim"]
benchmarks = [
    { name = "sums", data = "bench.jsonl" },
    { name = "holdout", kind = "perplexity", corpus = "corpus:stdlib", seq_len = 32 },
]
generation = { max_new_tokens = 3 }
limit = 4
bootstrap = 100
threads = 1

[dataset.prompts]
source = "data/prompts.jsonl"
format = "prompts"

[model.moe-rl]
recipe = "grpo"
base = "model:mixtral"
prompts = "dataset:prompts"
rewards = ["exact"]
generations = 2
max_completion_length = 4
train = { steps = 1, batch_size = 4 }
threads = 1
"""


def test_mixture_of_experts_models_generate_and_score_perplexity(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    lab = Project(str(tmp_path))
    tinylab.write_stdlib_text(lab.root, files=10)
    tinylab.write_arith_data(lab.root, n=16)
    tinylab.write_jsonl(os.path.join(lab.root, "bench.jsonl"),
                        ({"prompt": f"What is {a}+{b}?\nAnswer:", "answer": str(a + b)} for a, b in tinylab.arithmetic(4)))
    base = tinylab.BASE_FORGEFILE.split("[model.base]")[0].replace("holdout = 0.1", "holdout = 0.3")
    lab.forgefile(base + MOE)
    lab.run("eval:moe", timeout=600)
    report = json.loads(lab.read(".forge/out/eval/moe/report.json"))
    for model in ("model:mixtral", "model:qwen3moe-fim"):
        results = report["results"][model]
        assert results["holdout.perplexity"]["value"] > 1 and 0 <= results["sums.exact_match"]["value"] <= 1
        samples = lab.read(f".forge/out/eval/moe/samples/{model.replace(':', '-')}/sums.jsonl").splitlines()
        assert len(samples) == 4
    # the saved config generates for anyone who loads it: no router loss outside training
    folder = lab.run("path", "model:mixtral").stdout.strip()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.output_router_logits is False
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 7, 8]])
    out = model.generate(input_ids=ids, attention_mask=(ids != 0).long(), max_new_tokens=2, do_sample=False)
    assert out.shape == (2, 6)
    # GRPO samples from it while training, and TRL still adds the router's load-balancing loss
    lab.run("model:moe-rl", timeout=600)
    assert "aux_loss" in json.loads(lab.read(".forge/out/model/moe-rl/training_log.jsonl").splitlines()[0])

    # the same models in another order: a reorder, not two models removed and added
    lab.forgefile(base + MOE.replace('models = ["model:mixtral", "model:qwen3moe-fim"]',
                                     'models = ["model:qwen3moe-fim", "model:mixtral"]'))
    assert lab.run("explain", "eval:moe").stdout == (
        "eval:moe: stale\n"
        '  - param models ["model:mixtral", "model:qwen3moe-fim"] -> ["model:qwen3moe-fim", "model:mixtral"]\n'
        "  - dependency model:mixtral moved: models.0 -> models.1\n"
        "  - dependency model:qwen3moe-fim moved: models.1 -> models.0\n")


# ------------------------------------------------------------------ -v shows what the docs show

CHAIN = """
[run.a]
cmd = "echo {params.n} > {out}/a"
params = { n = 1 }

[run.b]
cmd = "cat {in.a}/a > {out}/b"
inputs = { a = "run:a" }
"""


def test_verbose_prints_a_cached_line_per_local_hit(project):
    project.forgefile(CHAIN)
    project.run()
    project.forgefile(CHAIN.replace("n = 1", "n = 2"))
    project.run()
    project.forgefile(CHAIN)
    lines = project.run("-v").stdout.splitlines()
    assert lines[:2] == ["cached  run:a", "cached  run:b"]
    assert lines[2].startswith("ok: 2 cached (") or lines[2].startswith("nothing to do: 2 targets up to date (")
