"""The README's first command: the example Forgefile builds, then has nothing to do."""
from __future__ import annotations

import json
import os
import shutil

from conftest import Project

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TARGETS = {"run:prepare", "run:stats", "run:vocab", "run:report", "run:sums-text", "run:sums-sft", "run:sums-pref",
           "run:sums-prompts", "run:sums-bench", "corpus:counting", "tokenizer:digits", "tokens:counting",
           "dataset:sums-sft", "dataset:sums-pref", "dataset:sums-prompts", "model:base", "model:sft-v1",
           "model:dpo-v2", "model:rl-v3", "eval:arith", "release:rl-v3"}


def test_example_forgefile_builds_learns_and_is_then_up_to_date(tmp_path):
    """The whole example: generated data, then base -> sft -> dpo (ODPO) -> grpo, trained for real, each
    stage doing its job by the report's own numbers (the claims of the Forgefile's header)."""
    from transformers import AutoModelForCausalLM

    project = Project(str(tmp_path / "first"))
    shutil.copytree(os.path.join(REPO, "examples"), os.path.join(project.root, "examples"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "Forgefile.example.toml"), project.root)
    shared = f"file://{tmp_path}/team-cache"
    first = project.build("-f", "Forgefile.example.toml", "--remote", shared, timeout=600)
    assert set(first.values()) == {"built"} and set(first) == TARGETS
    assert set(project.build("-f", "Forgefile.example.toml").values()) == {"cached"}
    assert project.read(".forge/out/run/report/report.md").startswith("# Example corpus report")
    report = json.loads(project.read(".forge/out/eval/arith/report.json"))
    assert_it_learned(report, vocab=AutoModelForCausalLM.from_pretrained(
        os.path.join(project.root, ".forge/out/model/base")).config.vocab_size)
    dpo = json.loads(project.read(".forge/out/model/dpo-v2/training_config.json"))
    assert dpo["params"]["loss"] == ["odpo"]
    assert AutoModelForCausalLM.from_pretrained(os.path.join(project.root, "dist/rl-v3")) is not None
    card = project.read("dist/rl-v3/README.md")
    assert "## Lineage" in card and "| sums.exact_match | >= parent - 0.1 @ 95% | 0.9" in card
    assert "vs model:dpo-v2, bound " in card  # a relative gate as written, with what it compared
    # the release wrote its model card over the model's README.md: the model's stored one is untouched
    verified = project.run("-f", "Forgefile.example.toml", "verify").stdout.splitlines()
    assert verified[-1].startswith(f"verified: {len(TARGETS)} targets, ") and not [l for l in verified if "CORRUPT" in l]
    # a second workspace with an empty cache and the same files, trusting the first one's signing key:
    # everything comes from the shared cache, and not one training step runs
    key = project.run("-f", "Forgefile.example.toml", "keys", "-q").stdout.strip()
    second = Project(str(tmp_path / "second"))
    shutil.copytree(project.root, second.root, ignore=shutil.ignore_patterns(".forge", "dist"))
    events = second.events("-f", "Forgefile.example.toml", "--remote", shared, env={"FORGE_TRUSTED_KEYS": key})
    assert not [e for e in events if e["event"] == "start"]
    assert {t["action"] for t in events[-1]["targets"]} == {"cached"}
    # editing the reward code retrains the last stage only (and what reads it)
    with open(os.path.join(project.root, "examples/rewards.py"), "a") as f:
        f.write("\n# tuned\n")
    stale = [line.split()[1] for line in project.run("-f", "Forgefile.example.toml", "status").stdout.splitlines()
             if not line.startswith("fresh")]
    assert stale == ["model:rl-v3", "eval:arith", "release:rl-v3"]


def assert_it_learned(report: dict, vocab: int) -> None:
    """Each stage did its job: SFT lifted held-out exact match from the base's ~0 to >= 0.5 with the
    95% intervals apart; ODPO raised the chosen-rejected reward margin; GRPO's reward rose over its run
    and its exact match stays at SFT's level (within 0.05: the last points differ from one CPU to another,
    see docs/design.md); the base models its corpus far better than guessing."""
    em = {m: r["sums.exact_match"] for m, r in report["results"].items()}
    assert report["models"] == ["model:base", "model:sft-v1", "model:dpo-v2", "model:rl-v3"]
    assert all(e["n"] == 500 for e in em.values())
    assert em["model:base"]["value"] <= 0.05 and em["model:sft-v1"]["value"] >= 0.5
    assert em["model:sft-v1"]["low"] > em["model:base"]["high"]
    assert em["model:rl-v3"]["value"] >= em["model:sft-v1"]["value"] - 0.05
    assert report["results"]["model:base"]["holdout.perplexity"]["value"] < 0.1 * vocab
    trends = report["training"]
    margins, reward = trends["model:dpo-v2"]["rewards/margins"], trends["model:rl-v3"]["reward"]
    assert margins["last"] > margins["first"] and trends["model:dpo-v2"]["rewards/accuracies"]["last"] > 0.5
    assert reward["last"] > reward["first"]
    assert report["passed"] and {g["condition"] for g in report["gates"]} == {
        ">= model:base + 0.5 @ 95%", ">= parent - 0.1 @ 95%", "<= 0.1%"}
    # the held-out digit sets were designed so: no sum of the benchmark is in any data the model was built from
    checked = report["contamination"]["models"]["model:rl-v3"]
    assert checked["data"] == ["corpus:counting", "dataset:sums-pref", "dataset:sums-prompts", "dataset:sums-sft"]
    assert report["results"]["model:rl-v3"]["contamination"] == {"value": 0.0, "n": 500}
    assert all(not r.get("contamination", {}).get("value") for r in report["results"].values())


def test_the_learn_preset_is_the_examples_pipeline():
    """`forgebuild init learn` writes the example's own stages (the test above builds them): the same
    tables but for where the scripts lie, and the same scripts byte for byte."""
    import tomllib

    preset = os.path.join(REPO, "forgebuild", "presets", "learn")
    with open(os.path.join(REPO, "Forgefile.example.toml"), "rb") as f:
        example = tomllib.load(f)
    with open(os.path.join(preset, "Forgefile.toml"), "rb") as f:
        learn = tomllib.load(f)
    moved = json.loads(json.dumps(learn).replace('"scripts/', '"examples/scripts/')
                       .replace('"rewards.py:', '"examples/rewards.py:'))
    for kind, targets in moved.items():
        if kind != "forge":
            for name, table in targets.items():
                assert table == example[kind][name], f"{kind}.{name}"
    assert moved["forge"]["seed"] == example["forge"]["seed"]
    assert sum(len(t) for k, t in moved.items() if k != "forge") == len(TARGETS) - 4  # all but the run:* tour
    for rel, mirror in (("scripts/make_sums.py", "examples/scripts/make_sums.py"), ("rewards.py", "examples/rewards.py")):
        with open(os.path.join(preset, rel), "rb") as a, open(os.path.join(REPO, mirror), "rb") as b:
            assert a.read() == b.read(), rel
