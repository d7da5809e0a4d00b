"""The model kind: pretrain (dense, MoE, FIM), continue, import and SFT/LoRA, trained for real
on CPU, plus what every recipe promises: reproducible digests, resumes after SIGKILL that end
where an uninterrupted build ends, runtime settings outside the key, NaN failures, and a
planner that never imports torch."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tinylab
from conftest import ENV, Project


def digest_of(project: Project, address: str) -> str:
    return os.path.basename(os.path.realpath(project.run("path", address).stdout.strip()))


def test_pretrain_artifact_loads_and_carries_its_config_log_and_metrics(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    names = set(os.listdir(tiny_base))
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_config.json",
            "training_log.jsonl", "metrics.json"} <= names
    assert "training_args.bin" not in names  # it holds absolute paths: never in an artifact
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert model.config.model_type == "llama" and model.config.hidden_size == 64
    assert model.config.vocab_size == len(tokenizer)
    rows = [json.loads(line) for line in open(os.path.join(tiny_base, "training_log.jsonl"))]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 30 and losses[-1] < losses[0]  # every step logged, and it learned
    assert not any("runtime" in k or "per_second" in k for r in rows for k in r)
    config = json.load(open(os.path.join(tiny_base, "training_config.json")))
    assert config["recipe"] == "pretrain" and config["params"]["train"]["lr"] == 3e-3
    assert set(config["inputs"]) == {"corpus:stdlib", "tokenizer:bpe"}
    assert json.load(open(os.path.join(tiny_base, "metrics.json")))["steps"] == 30


def _wait_for_line(path: str, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and text in open(path, encoding="utf-8").read():
            return
        time.sleep(0.1)
    raise AssertionError(f"'{text}' never appeared in {path}")


def test_killed_training_resumes_and_ends_with_the_digest_of_an_uninterrupted_build(tmp_path, tiny_base):
    """The same Forgefile as the session's base, checkpointing every 5 steps (a runtime setting):
    SIGKILL after a checkpoint, rebuild, and the weights are bit-for-bit those of the clean build."""
    lab = Project(str(tmp_path))
    tinylab.write_stdlib_text(lab.root)
    lab.forgefile(tinylab.BASE_FORGEFILE + "checkpoint_every = 5\nlog_every = 1\n")
    log = os.path.join(lab.root, ".forge/logs/model/base.log")
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", "model:base"], cwd=lab.root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_line(log, "checkpoint at step 10")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not os.path.lexists(os.path.join(lab.root, ".forge/out/model/base"))
    lab.run("model:base", timeout=300)
    assert "resuming from checkpoint-" in open(log, encoding="utf-8").read()
    assert digest_of(lab, "model:base") == os.path.basename(os.path.realpath(tiny_base))
    # runtime-only settings do not change the key: nothing to rebuild
    text = lab.read("Forgefile.toml").replace("threads = 1", "threads = 2\ndevice = \"cpu\"\ndataloader_workers = 1")
    lab.forgefile(text.replace("log_every = 1", "log_every = 7"))
    assert "up to date" in lab.run("explain", "model:base").stdout
    assert lab.build("model:base") == {"corpus:stdlib": "cached", "tokenizer:bpe": "cached", "model:base": "cached"}
    # ...while a training parameter does, with its reason
    lab.forgefile(text.replace("lr = 3e-3", "lr = 1e-3"))
    assert "param train.lr 0.003 -> 0.001" in lab.run("explain", "model:base").stdout


def test_two_clean_builds_give_identical_digests(tmp_path, tiny_base):
    lab = Project(str(tmp_path))
    tinylab.write_stdlib_text(lab.root)
    lab.forgefile(tinylab.BASE_FORGEFILE)
    lab.run("model:base", timeout=300)
    assert digest_of(lab, "model:base") == os.path.basename(os.path.realpath(tiny_base))


FAMILIES = """
[model.mixtral]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
corpus = "corpus:stdlib"
seq_len = 32
arch = { family = "mixtral", hidden = 32, layers = 1, heads = 2, experts = 4, top_k = 2 }
train = { steps = 3, batch_size = 4 }
threads = 1

[model.qwen3moe-fim]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
corpus = "corpus:stdlib"
seq_len = 32
arch = { family = "qwen3_moe", hidden = 32, layers = 1, heads = 2, experts = 4, top_k = 1, router_aux_loss = 0.05 }
fim_rate = 0.5
fim_format = "spm"
train = { steps = 3, batch_size = 4 }
threads = 1

[model.qwen2]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
corpus = "corpus:stdlib"
seq_len = 32
arch = { family = "qwen2", hidden = 32, layers = 1, heads = 2, kv_heads = 1 }
budget_tokens = 384
train = { batch_size = 4 }
threads = 1
"""


def test_moe_families_fim_and_a_token_budget(tmp_path):
    from transformers import AutoModelForCausalLM

    lab = Project(str(tmp_path))
    tinylab.write_stdlib_text(lab.root, files=10)
    lab.forgefile(tinylab.BASE_FORGEFILE + FAMILIES)
    lab.run("model:mixtral", "model:qwen3moe-fim", "model:qwen2", timeout=300)
    mixtral = AutoModelForCausalLM.from_pretrained(lab.run("path", "model:mixtral").stdout.strip())
    # saved for inference (the router loss is on while training only): see training.inference_config
    assert mixtral.config.num_local_experts == 4 and mixtral.config.output_router_logits is False
    moe_path = lab.run("path", "model:qwen3moe-fim").stdout.strip()
    moe = AutoModelForCausalLM.from_pretrained(moe_path)
    assert moe.config.num_experts == 4 and moe.config.router_aux_loss_coef == 0.05
    fim = json.load(open(os.path.join(moe_path, "training_config.json")))["fim"]
    assert fim["format"] == "spm" and fim["rate"] == 0.5
    qwen2 = lab.run("path", "model:qwen2").stdout.strip()
    assert json.load(open(os.path.join(qwen2, "metrics.json")))["steps"] == 3  # 384 tokens / (4 x 32)


def test_fim_rearranges_documents_at_token_level():
    import random

    from forgebuild.rules.model.packed import fim_row

    fim = {"rate": 1.0, "format": "psm", "prefix": 90, "middle": 91, "suffix": 92, "eos": 2}
    row = [10, 11, 12, 13, 2, 20, 21, 22, 2, 30]
    out = fim_row(row, fim, random.Random(0))
    assert len(out) == len(row) and out[0] == 90  # cut back to the row's length
    first = out[:out.index(2)]
    body = first[1:]
    pre, rest = body[:body.index(92)], body[body.index(92) + 1:]
    suf, mid = rest[:rest.index(91)], rest[rest.index(91) + 1:]
    assert pre + mid + suf == [10, 11, 12, 13]  # the document is all there, rearranged
    spm = fim_row(row, {**fim, "format": "spm"}, random.Random(0))
    assert spm[:2] == [90, 92]
    assert fim_row(row, {**fim, "rate": 0.0}, random.Random(0)) == row


def test_nan_loss_fails_the_stage_and_caches_nothing(tmp_path):
    lab = Project(str(tmp_path))
    tinylab.write_stdlib_text(lab.root, files=10)
    lab.forgefile(tinylab.BASE_FORGEFILE.replace(
        "train = { lr = 3e-3, steps = 30, batch_size = 8, warmup_steps = 3 }",
        "train = { lr = 1e30, steps = 8, batch_size = 8, max_grad_norm = 0.0 }"))
    proc = lab.run("model:base", expect=1, timeout=300)
    assert "model:base: loss became NaN at step " in proc.stdout, proc.stdout
    assert not os.path.lexists(os.path.join(lab.root, ".forge/out/model/base"))
    assert "missing model:base     never built" in lab.run("status").stdout


def test_sft_full_lora_merged_and_adapter(recipe_project):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    p = recipe_project
    p.forgefile(p.preamble + """
        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "dataset:sft"
        max_length = 32
        train = { lr = 1e-3, steps = 4, batch_size = 8 }
        threads = 1

        [model.chat-merged]
        recipe = "sft"
        base = "model:base"
        data = "dataset:chat"
        max_length = 48
        lora = { r = 4, alpha = 8, target_modules = ["q_proj", "v_proj"] }
        train = { lr = 1e-3, steps = 4, batch_size = 8 }
        threads = 1

        [model.chat-adapter]
        recipe = "sft"
        base = "model:base"
        data = "dataset:chat"
        max_length = 48
        lora = { r = 4, alpha = 8, merge = false }
        train = { lr = 1e-3, steps = 4, batch_size = 8 }
        threads = 1
    """)
    p.run("model:sft", "model:chat-merged", "model:chat-adapter", timeout=300)
    base = p.run("path", "model:base").stdout.strip()
    for name in ("sft", "chat-merged"):
        path = p.run("path", f"model:{name}").stdout.strip()
        model = AutoModelForCausalLM.from_pretrained(path)
        assert "adapter_config.json" not in os.listdir(path)
        assert not any("lora" in n for n, _ in model.named_parameters())
        rows = [json.loads(line) for line in open(os.path.join(path, "training_log.jsonl"))]
        assert sum("loss" in r for r in rows) == 4
    adapter = p.run("path", "model:chat-adapter").stdout.strip()
    config = json.load(open(os.path.join(adapter, "adapter_config.json")))
    assert config["base_model_name_or_path"] == "model:base" and "model.safetensors" not in os.listdir(adapter)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    assert any("lora" in n for n, _ in tuned.named_parameters())


def test_import_keys_by_content_not_path_and_continue_trains_on_it(recipe_project, tiny_base, tmp_path_factory):
    p = recipe_project
    p.write("text/a.txt", "def answer():\n    return 42\n" * 200)
    p.forgefile(p.preamble + """
        [corpus.more]
        sources = ["text/*.txt"]

        [model.more]
        recipe = "continue"
        base = "model:base"
        corpus = "corpus:more"
        seq_len = 32
        train = { lr = 1e-3, steps = 3, batch_size = 4 }
        threads = 1
    """)
    p.run("model:more", timeout=300)
    assert json.load(open(os.path.join(p.run("path", "model:more").stdout.strip(), "metrics.json")))["steps"] == 3
    moved = str(tmp_path_factory.mktemp("elsewhere") / "base")
    shutil.copytree(tiny_base, moved)
    p.forgefile(p.read("Forgefile.toml").replace(tiny_base, moved))
    assert moved in p.read("Forgefile.toml")
    assert "up to date" in p.run("explain", "model:more").stdout  # same weights elsewhere: the same target


ERRORS = [
    ('arch = { family = "lama" }',
     "key 'arch.family': expected one of llama, qwen2, qwen3, mistral, mixtral, qwen3_moe, got string \"lama\" "
     "(did you mean 'llama'?)"),
    ('arch = { family = "llama" }\nlora = { r = 4 }',
     "key 'lora': LoRA adapts existing weights, and a from-scratch pretrain has none: train the full model here, "
     "or use lora in a \"continue\" or \"sft\" model built on this one"),
    ('arch = { family = "llama", experts = 4 }',
     "key 'arch.experts': 'experts' is for mixture-of-experts families (mixtral, qwen3_moe); llama is dense"),
]


@pytest.mark.parametrize("arch,message", ERRORS)
def test_pretrain_forgefile_errors(project, arch, message):
    project.write("a.txt", "hello\n")
    project.forgefile('[model.m]\nrecipe = "pretrain"\ntokenizer = "tokenizer:t"\ncorpus = "corpus:c"\n' + arch + "\n"
                      '[corpus.c]\nsources = ["a.txt"]\n[tokenizer.t]\ncorpus = "corpus:c"\nvocab_size = 300\n')
    proc = project.run(expect=2)
    assert proc.stderr.strip().splitlines()[0].split(": error: model:m: ", 1)[1] == message


def test_cross_target_errors_come_before_any_training(recipe_project):
    p = recipe_project
    p.forgefile(p.preamble + """
        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "dataset:pref"

        [model.fim]
        recipe = "pretrain"
        tokenizer = "tokenizer:plain"
        corpus = "corpus:c"
        arch = { family = "llama" }
        fim_rate = 0.5

        [corpus.c]
        sources = ["data/sft.jsonl"]
        text_field = "prompt"

        [tokenizer.plain]
        corpus = "corpus:c"
        vocab_size = 300

        [model.recipeless]
        recipe = "sfft"
        base = "model:base"
    """)
    lines = p.run("-n", expect=2).stderr.strip().splitlines()
    assert any(line.endswith("error: model:sft: key 'data': dataset:pref is a 'preference' dataset; recipe \"sft\" "
                             "trains on 'prompt_completion' or 'messages' data") for line in lines), lines
    assert any(line.endswith("error: model:fim: key 'fim_rate': fill-in-the-middle needs the FIM tokens: set "
                             "fim = true in tokenizer:plain") for line in lines), lines
    assert any("error: model:recipeless: key 'recipe': expected one of import, pretrain, continue, sft, dpo, "
               "online-dpo, reward, grpo, select, vlm, got string \"sfft\" (did you mean 'sft'?)" in line for line in lines), lines
    assert not os.path.exists(os.path.join(p.root, ".forge/logs"))


def test_planning_model_targets_never_imports_torch(recipe_project, no_torch_env):
    env = no_torch_env
    p = recipe_project
    p.write("rewards.py", "def score(completions, **kw):\n    return [1.0 for _ in completions]\n")
    p.forgefile(p.preamble + """
        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "dataset:sft"
        [model.dpo]
        recipe = "dpo"
        base = "model:sft"
        data = "dataset:pref"
        [model.rm]
        recipe = "reward"
        base = "model:sft"
        data = "dataset:pref"
        [model.rl]
        recipe = "grpo"
        base = "model:dpo"
        prompts = "dataset:prompts"
        rewards = ["rewards.py:score", { model = "model:rm" }]
        [model.online]
        recipe = "online-dpo"
        base = "model:sft"
        prompts = "dataset:prompts"
        rewards = ["rewards.py:score"]
    """)
    for args in (["-n", "model:rl", "model:online"], ["status"], ["explain", "model:rl"], ["graph"], ["schema"]):
        p.run(*args, env=env)


KILLING_REWARD = '''
import os, signal

CALLS = [0]


def exact(completions, answer, **kwargs):
    CALLS[0] += 1
    if CALLS[0] == int(os.environ.get("KILL_AT_CALL", "0")):
        os.kill(os.getpid(), signal.SIGKILL)  # the build process dies mid-training, as under the OOM killer
    return [1.0 if c.strip().startswith(a) else 0.1 * any(ch.isdigit() for ch in c) for c, a in zip(completions, answer)]
'''

GRPO = """
[model.rl]
recipe = "grpo"
base = "model:base"
prompts = "dataset:prompts"
rewards = ["rewards.py:exact"]
generations = 4
max_completion_length = 4
train = { lr = 1e-4, steps = 6, batch_size = 8 }
checkpoint_every = 2
threads = 1
"""


def test_a_trl_recipe_killed_mid_training_resumes_to_the_uninterrupted_digest(recipe_project, tmp_path_factory,
                                                                             tiny_base):
    """GRPO (sampling, a reward function, TRL's trainer): SIGKILLed at its 5th reward call (step 5,
    after the step-4 checkpoint), rebuilt, and the digest is the one an uninterrupted build gives."""
    clean = Project(str(tmp_path_factory.mktemp("uninterrupted")))
    for project in (clean, recipe_project):
        tinylab.write_arith_data(project.root)
        project.write("rewards.py", KILLING_REWARD)
        project.forgefile(tinylab.imported_base(tiny_base) + tinylab.DATASETS + GRPO)
    clean.run("model:rl", timeout=300)
    killed = recipe_project.run("model:rl", expect=1, env={"KILL_AT_CALL": "5"}, timeout=300)
    assert "killed by signal 9" in killed.stdout, killed.stdout
    recipe_project.run("model:rl", timeout=300)
    log = recipe_project.read(".forge/logs/model/rl.log")
    assert "resuming from checkpoint-4" in log
    assert digest_of(recipe_project, "model:rl") == digest_of(clean, "model:rl")
