"""The contamination check in process: planning's `upstream_inputs` (each eval gets the corpora and datasets
its models are built from), n-grams and short prompts' exact matches, a line of a corpus document, Parquet
shards streamed a batch at a time, the rates and the lines naming each match (the gate's percentage:
test_gate.py)."""
from __future__ import annotations

import json
import os

import pytest

from forgebuild.errors import ForgefileError
from forgebuild.rules.eval.contamination import Example, Prompts, named, results, scan
from unitlab import lab  # noqa: F401  (a fixture)

CHAIN = """
[corpus.web]
sources = ["text/*.txt"]

[corpus.more]
sources = ["corpus:web"]

[tokenizer.bpe]
corpus = "corpus:more"
vocab_size = 300

[tokens.t]
corpus = "corpus:more"
tokenizer = "tokenizer:bpe"
seq_len = 16

[model.pre]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
tokens = "tokens:t"
arch = { family = "llama", hidden = 16, layers = 1, heads = 2 }

[dataset.sft]
source = "data/sft.jsonl"

[model.sft]
recipe = "sft"
base = "model:pre"
data = "dataset:sft"

[model.again]
recipe = "sft"
base = "model:sft"
data = "dataset:sft"

[model.imported]
recipe = "import"
path = "weights"

[eval.check]
models = ["model:imported",
          "model:again"]
benchmarks = ["bench/arith.jsonl"]
"""


def chain_files(lab) -> None:
    lab.write("text/a.txt", "some text\n")
    lab.write("data/sft.jsonl", '{"prompt": "1+1=", "completion": "2"}\n')
    lab.write("bench/arith.jsonl", '{"prompt": "2+2=", "answer": "4"}\n')
    lab.write("weights/config.json", "{}")


def test_an_eval_reads_every_corpus_and_dataset_its_models_are_built_from(lab):
    chain_files(lab)
    plan = lab.plan(CHAIN)
    target = plan.targets["eval:check"]
    found = {(i.key, i.spec, i.line) for i in target.inputs if i.key.startswith("contamination.")}
    # model:again <- model:sft <- dataset:sft, model:pre <- tokens:t <- corpus:more <- corpus:web (through the
    # tokenizer too); each on the line of the `models` key that named it; an imported model: nothing
    assert found == {("contamination.1", a, 41) for a in ("corpus:more", "corpus:web", "dataset:sft")}
    assert {"corpus:web", "corpus:more", "dataset:sft"} <= set(target.deps)  # built before the eval
    assert plan.order.index("corpus:web") < plan.order.index("eval:check")
    # the plan cache keeps them: the cached plan is the same plan
    assert {(i.key, i.spec) for i in lab.plan().targets["eval:check"].inputs} == {(i.key, i.spec) for i in target.inputs}


def test_check_false_asks_for_nothing_and_a_relative_contamination_gate_is_an_error(lab):
    chain_files(lab)
    plan = lab.plan(CHAIN + "contamination = { check = false }\n")
    assert not [i for i in plan.targets["eval:check"].inputs if i.key.startswith("contamination.")]
    with pytest.raises(ForgefileError) as e:
        lab.plan(CHAIN + 'gate = { contamination = "<= model:imported + 0.01 @ 95%", "arith.contamination" = "<= 0.1%" }\n')
    assert [(p.line, p.key, p.message) for p in e.value.problems] == [
        (44, "gate.contamination", "'<= model:imported + 0.01 @ 95%': contamination is a count of this benchmark's "
                                   "examples, not an estimate: hold it against a number (\"<= 0.1%\")")]


EXAMPLES = [Example("long", 1, "the quick brown fox jumps over the lazy dog near the river bank today"),
            Example("long", 2, "an entirely different question about seven small green apples in a basket"),
            Example("short", 4, "What is  8+9?"), Example("short", 5, "8-9=")]


def test_ngrams_and_short_prompts_exact_matches():
    prompts = Prompts(EXAMPLES, ngram=5)
    # five words of example 1, case and punctuation aside; nothing of example 2
    assert list(prompts.hits("Yesterday THE QUICK, brown fox jumps!")) == [(0, "5-gram")]
    assert list(prompts.hits("quick brown fox jumps")) == []  # four words
    # a short prompt matches a whole text or one line, normalised (NFKC, whitespace, case), never a part of one
    assert list(prompts.hits("what is 8+9?")) == [(2, "exact prompt")]
    assert list(prompts.hits("a document\n  8-9=  \nmore")) == [(3, "exact prompt")]
    assert list(prompts.hits("8+9=")) == [] and list(prompts.hits("so what is 8+9? 17")) == []
    assert Prompts(EXAMPLES, 5).digest != Prompts(EXAMPLES, 6).digest


def write_corpus(folder: str, parts: dict[str, list[tuple[str, str]]], batch: int = 2) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part, docs in parts.items():
        os.makedirs(os.path.join(folder, part), exist_ok=True)
        table = pa.table({"text": [t for _, t in docs], "id": [i for i, _ in docs], "source": ["s"] * len(docs)})
        pq.write_table(table, os.path.join(folder, part, "part-00003.parquet"), row_group_size=batch)


def test_a_corpus_is_streamed_over_its_shards_and_a_planted_line_is_found(tmp_path):
    folder = str(tmp_path / "corpus")
    filler = [(f"d{i}", f"filler document number {i}") for i in range(7)]
    write_corpus(folder, {"train": [*filler, ("planted", "header\nWhat is 8+9?\nfooter")],
                          "holdout": [("h1", "THE QUICK BROWN FOX JUMPS over it")]})
    found = scan(folder, Prompts(EXAMPLES, ngram=5))
    assert found == {2: {"file": "train/part-00003.parquet", "where": "document planted", "how": "exact prompt"},
                     0: {"file": "holdout/part-00003.parquet", "where": "document h1", "how": "5-gram"}}


def test_a_datasets_splits_are_read_as_its_dataset_json_names_them(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({"splits": {"train": {"path": "train.jsonl"},
                                                                "test": {"path": "test.jsonl"}}}))
    (folder / "train.jsonl").write_text('{"prompt": "1+1=", "completion": "2"}\n')
    (folder / "test.jsonl").write_text('{"messages": [{"role": "user", "content": "8-9="}]}\n'
                                       '{"messages": [{"role": "8-9=", "content": "x"}]}\n')
    assert scan(str(folder), Prompts(EXAMPLES, ngram=5)) == {3: {"file": "test.jsonl", "where": "line 1",
                                                                  "how": "exact prompt"}}


def test_rates_per_benchmark_and_the_named_examples():
    section = {"ngram": 5, "models": {"model:m": {"data": ["corpus:web"], "benchmarks": {
        "long": {"examples": 2, "contaminated": 0, "rate": 0.0, "matches": []},
        "short": {"examples": 2, "contaminated": 1, "rate": 0.5, "matches": [
            {"line": 4, "prompt": "What is 8+9?", "how": "exact prompt", "address": "corpus:web",
             "file": "train/part-00003.parquet", "where": "document planted"}]}}}}}
    assert results(section) == {"model:m": {"contamination": {"value": 0.25, "n": 4},
                                            "long.contamination": {"value": 0.0, "n": 2},
                                            "short.contamination": {"value": 0.5, "n": 2}}}
    assert named(section, "model:m") == ["short line 4 'What is 8+9?': exact prompt in corpus:web "
                                         "train/part-00003.parquet (document planted)"]


def test_a_model_whose_build_reads_no_data_is_not_measured_never_clean():
    """An imported model: nothing in its graph to check the prompts against. Its values are None, so a gate
    fails, and the report and the release card say `not measured`, never 0.00%."""
    from forgebuild.rules.eval.gate import parse_condition
    from forgebuild.rules.eval.evaluate import judge
    from forgebuild.rules.eval.report import _contamination_rows
    from forgebuild.rules.release import contamination_lines

    report = {"contamination": {"ngram": 13, "models": {"model:base": {"data": [], "benchmarks": {
        "qa": {"examples": 3, "contaminated": 0, "rate": 0.0, "matches": []}}}}}}
    found = results(report["contamination"])
    assert found == {"model:base": {"contamination": {"value": None, "n": 0}, "qa.contamination": {"value": None, "n": 0}}}
    row = judge(parse_condition("<= 0.1%"), "contamination", "model:base", found, {}, 100, 0)
    assert row["passed"] is False and row["value"] is None
    assert _contamination_rows(report) == [["model:base", "qa", "3", "—", "not measured", "none in its graph"]]
    assert "| qa | 3 | — | not measured |" in contamination_lines(report, "model:base")
