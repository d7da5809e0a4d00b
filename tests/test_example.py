"""The README's first command: the example Forgefile builds, then has nothing to do."""
from __future__ import annotations

import json
import os
import shutil

from conftest import Project

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_example_forgefile_builds_and_is_then_up_to_date(tmp_path):
    """The whole example: data targets, then base -> sft -> dpo (ODPO) -> grpo, trained for real."""
    from transformers import AutoModelForCausalLM

    project = Project(str(tmp_path / "first"))
    for folder in ("examples", "forgebuild", "docs"):  # the corpus reads the repository's own code and docs
        shutil.copytree(os.path.join(REPO, folder), os.path.join(project.root, folder),
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "Forgefile.example.toml"), project.root)
    shared = f"file://{tmp_path}/team-cache"
    first = project.build("-f", "Forgefile.example.toml", "--remote", shared)
    assert set(first.values()) == {"built"}
    assert set(first) == {"run:prepare", "run:stats", "run:vocab", "run:report", "corpus:repo", "tokenizer:bpe",
                          "tokens:repo", "dataset:arith-sft", "dataset:arith-pref", "dataset:arith-prompts",
                          "model:base", "model:sft-v1", "model:dpo-v2", "model:rl-v3", "eval:arith",
                          "release:rl-v3"}
    assert set(project.build("-f", "Forgefile.example.toml").values()) == {"cached"}
    meta = json.loads(project.read(".forge/out/tokens/repo/meta.json"))
    assert meta["seq_len"] == 128 and meta["splits"]["train"]["sequences"] > 0
    assert project.read(".forge/out/run/report/report.md").startswith("# Example corpus report")
    rl = os.path.join(project.root, ".forge/out/model/rl-v3")
    assert AutoModelForCausalLM.from_pretrained(rl).config.model_type == "llama"
    dpo = json.loads(project.read(".forge/out/model/dpo-v2/training_config.json"))
    assert dpo["params"]["loss"] == ["odpo"]
    report = json.loads(project.read(".forge/out/eval/arith/report.json"))
    assert report["passed"] and set(report["results"]) == {"model:sft-v1", "model:dpo-v2", "model:rl-v3"}
    assert AutoModelForCausalLM.from_pretrained(os.path.join(project.root, "dist/rl-v3")) is not None
    assert "## Lineage" in project.read("dist/rl-v3/README.md")
    # the release wrote its model card over the model's README.md: the model's stored one is untouched
    verified = project.run("-f", "Forgefile.example.toml", "verify").stdout.splitlines()
    assert verified[-1].startswith("verified: 16 targets, ") and not [line for line in verified if "CORRUPT" in line]
    # editing the reward code retrains the last stage only (and what reads it)
    # a second workspace with an empty cache and the same files, trusting the first one's signing key:
    # everything comes from the shared cache, and not one training step runs
    key = project.run("-f", "Forgefile.example.toml", "keys", "-q").stdout.strip()
    second = Project(str(tmp_path / "second"))
    shutil.copytree(project.root, second.root, ignore=shutil.ignore_patterns(".forge", "dist"))
    events = second.events("-f", "Forgefile.example.toml", "--remote", shared, env={"FORGE_TRUSTED_KEYS": key})
    assert not [e for e in events if e["event"] == "start"]
    assert {t["action"] for t in events[-1]["targets"]} == {"cached"}
    with open(os.path.join(project.root, "examples/rewards.py"), "a") as f:
        f.write("\n# tuned\n")
    stale = [line.split()[1] for line in project.run("-f", "Forgefile.example.toml", "status").stdout.splitlines()
             if not line.startswith("fresh")]
    assert stale == ["model:rl-v3", "eval:arith", "release:rl-v3"]
