"""Vision-language recipes through the real CLI, on generated pictures of one coloured square each: a LLaVA
assembled by recipe "vlm" (from a tokenizer and an arch, or around a model target's language model) and
trained until it names the colour of held-out pictures far above chance; sft on images (full, LoRA merged
and adapter-only) and dpo on image preference pairs (full, LoRA, against another reference, with an eval
split), each measured on held-out images against its parent or reference;
an imported VLM folder trained further, and one without its processor refused; a killed VLM training
resumed to the uninterrupted digest; image data for a text model refused at build time."""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import tinylab
from conftest import ENV, Project
from PIL import Image, ImageDraw
from test_models import _wait_for_line, digest_of

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 30, 220), "yellow": (230, 200, 20)}
CHANCE = 1 / len(COLOURS)

# one images target a format, each reading the same pictures, split by picture
IMAGES = "[forge]\nseed = 11\n" + "".join(f"""
[images.{name}]
source = "data/shapes/{source}.jsonl"
images = "data/shapes/img/"
format = "{fmt}"
splits = {{ train = 0.8, test = 0.2 }}
""" for name, source, fmt in (("shapes", "vqa", "vqa"), ("captions", "captions", "caption"),
                              ("pref", "pref", "preference"))) + """
[corpus.words]
sources = ["text/*.txt"]

[tokenizer.chars]
corpus = "corpus:words"
vocab_size = 300
"""

# 172k parameters; 100 steps of 16 on one thread learn the four colours (~8 s alone on this CPU)
VLM = """
[model.vlm]
recipe = "vlm"
vision = { family = "siglip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }
text = { family = "llama", hidden = 64, layers = 2, heads = 4 }
tokenizer = "tokenizer:chars"
max_length = 64
data = "images:shapes"
train = { lr = 3e-3, steps = 100, batch_size = 16 }
threads = 1
"""

UNTRAINED = """
[model.vlm-untrained]
recipe = "vlm"
vision = { family = "siglip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }
text = { family = "llama", hidden = 64, layers = 2, heads = 4 }
tokenizer = "tokenizer:chars"
max_length = 64
threads = 1
"""

# vlm-other: the same tables as vlm-untrained under another address, so another seed: other weights
MODELS = VLM + UNTRAINED + UNTRAINED.replace("vlm-untrained", "vlm-other") + """

[model.vlm-base]
recipe = "vlm"
vision = { family = "clip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }
language = "model:base"
threads = 1

[model.aligned]
recipe = "vlm"
vision = { family = "siglip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }
language = "model:base"
data = "images:shapes"
freeze = ["vision", "language"]
train = { lr = 3e-3, steps = 5, batch_size = 8 }
threads = 1

[model.sft]
recipe = "sft"
base = "model:vlm-base"
data = "images:shapes"
max_length = 64
train = { lr = 3e-3, steps = 100, batch_size = 16 }
threads = 1

[model.dpo]
recipe = "dpo"
base = "model:vlm-untrained"
data = "images:pref"
max_length = 64
beta = 0.1
train = { lr = 1e-2, steps = 150, batch_size = 16 }
threads = 1

[model.dpo-lora]
recipe = "dpo"
base = "model:vlm-untrained"
data = "images:pref"
max_length = 64
beta = 0.1
lora = { r = 16, alpha = 32, merge = true }
train = { lr = 1e-2, steps = 150, batch_size = 16 }
threads = 1

[model.dpo-ref]
recipe = "dpo"
base = "model:vlm-untrained"
reference = "model:vlm-other"
data = "images:pref"
eval_split = "test"
max_length = 64
beta = 0.1
train = { lr = 1e-2, steps = 150, batch_size = 16, eval_every = 50 }
threads = 1

[model.lora]
recipe = "sft"
base = "model:vlm"
data = "images:captions"
max_length = 128
lora = { r = 16, alpha = 32, merge = true }
train = { lr = 1e-2, steps = 60, batch_size = 16 }
threads = 1
"""
# the same LoRA, written as an adapter alone
MODELS += MODELS[MODELS.index("[model.lora]"):].replace("[model.lora]", "\n[model.adapter]").replace(
    "merge = true", "merge = false")


def write_shapes(root: str, n: int = 400, seed: int = 0) -> None:
    """n 32x32 pictures of one square (random colour, place and size) and three JSON Lines files naming them:
    a question about the colour, a caption, and preference pairs (the colour over each of the other three)."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "data/shapes/img"), exist_ok=True)
    vqa, captions, pref = [], [], []
    for i in range(n):
        colour = rng.choice(sorted(COLOURS))
        image = Image.new("RGB", (32, 32), (255, 255, 255))
        x, y, side = rng.randint(2, 14), rng.randint(2, 14), rng.randint(8, 14)
        ImageDraw.Draw(image).rectangle([x, y, x + side, y + side], fill=COLOURS[colour])
        name = f"img/{i:03d}.png"
        image.save(os.path.join(root, "data/shapes", name))
        vqa.append({"image": name, "question": "what colour?", "answer": colour})
        captions.append({"image": name, "caption": f"a {colour} square"})
        pref += [{"image": name, "prompt": "what colour?", "chosen": colour, "rejected": wrong}
                 for wrong in sorted(set(COLOURS) - {colour})]
    for name, rows in (("vqa", vqa), ("captions", captions), ("pref", pref)):
        tinylab.write_jsonl(os.path.join(root, f"data/shapes/{name}.jsonl"), rows)
    os.makedirs(os.path.join(root, "text"), exist_ok=True)
    with open(os.path.join(root, "text/words.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(f"what colour? a {rng.choice(sorted(COLOURS))} square" for _ in range(300)))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, tiny_base):
    """Every model of MODELS built once, in one run (about 100 s here, one at a time)."""
    lab = Project(str(tmp_path_factory.mktemp("shapes")))
    write_shapes(lab.root)
    lab.text = IMAGES + tinylab.imported_base(tiny_base) + MODELS
    lab.forgefile(lab.text)
    lab.run(timeout=600)
    return lab


def out(project: Project, address: str) -> str:
    return os.path.join(project.root, ".forge/out", *address.split(":"))


def held_out(project: Project, name: str) -> list[dict]:
    with open(os.path.join(out(project, f"images:{name}"), "test.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion."""
    p = hits / n
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def load(folder: str, adapter: str | None = None):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return AutoProcessor.from_pretrained(adapter or folder), model.eval()


def exact_matches(project: Project, model_folder: str, images: str) -> tuple[int, int]:
    """Greedy answers to the held-out records of images:NAME, as an eval generates them: (right, asked)."""
    import torch

    from forgebuild.rules.model.vision import open_images

    processor, model = load(model_folder)
    rows, folder = held_out(project, images), out(project, f"images:{images}")
    hits = 0
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"][:-1], add_generation_prompt=True)
        inputs = processor(images=open_images(folder, row), text=prompt, return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        hits += processor.decode(tokens[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == row["answer"]
    return hits, len(rows)


def answer_logps(project: Project, images: str, model_folder: str, adapter: str | None = None) -> list[list[float]]:
    """For each held-out record of images:NAME, the log-likelihood of each of its answers given the picture
    and the prompt (prompt and answer tokenized apart, as TRL's collators do): the chosen and the rejected
    answer of a preference pair, the answer of any other record."""
    import torch

    from forgebuild.rules.model.vision import open_images

    processor, model = load(model_folder, adapter)
    found = []
    for row in held_out(project, images):
        prompt_turns = row.get("prompt") or row["messages"][:-1]
        answers = [row["chosen"], row["rejected"]] if "chosen" in row else [row["messages"][-1:]]
        prompt = processor.apply_chat_template(prompt_turns, add_generation_prompt=True)
        inputs = processor(images=open_images(out(project, f"images:{images}"), row), text=prompt, return_tensors="pt")
        scores = []
        for answer in answers:
            completion = processor.apply_chat_template(prompt_turns + answer)[len(prompt):]
            ids = processor.tokenizer(completion, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.cat([inputs["input_ids"], ids], dim=1),
                               pixel_values=inputs["pixel_values"]).logits
            logp = logits[0, inputs["input_ids"].shape[1] - 1:-1].log_softmax(-1)
            scores.append(logp.gather(1, ids[0][:, None]).sum().item())
        found.append(scores)
    return found


def test_a_vlm_from_configs_learns_the_colour_of_held_out_pictures_and_loads_with_the_auto_classes(shapes):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = out(shapes, "model:vlm")
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja", "tokenizer.json",
            "training_config.json", "training_log.jsonl", "metrics.json"} <= set(os.listdir(folder))
    processor, model = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "SiglipImageProcessorPil"
    assert "<image>" in processor.tokenizer.get_vocab()
    config = json.load(open(os.path.join(folder, "training_config.json")))
    assert config["format"] == "vqa" and config["rows"] > 250 and set(config["parameters"]) == {"vision", "projector", "language"}
    trained = wilson(*exact_matches(shapes, folder, "shapes"))
    untrained = wilson(*exact_matches(shapes, out(shapes, "model:vlm-untrained"), "shapes"))
    # measured: 67 of 67 held-out pictures, [0.95, 1.00], after 100 steps; 0 of 67 before
    assert trained[0] > max(CHANCE, untrained[1]), (trained, untrained)


def test_a_vlm_around_a_model_target_carries_its_weights_and_sft_on_images_teaches_it_colours(shapes, tiny_base):
    from transformers import AutoModelForCausalLM

    folder = out(shapes, "model:vlm-base")
    processor, vlm = load(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    language = vlm.model.language_model
    assert (language.layers[1].mlp.down_proj.weight == base.model.layers[1].mlp.down_proj.weight).all()
    embeddings, words = language.embed_tokens.weight, base.model.embed_tokens.weight
    assert embeddings.shape[0] == words.shape[0] + 1  # the image token, added
    assert (embeddings[:-1] == words).all()
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    assert "Load it with `transformers.AutoModelForImageTextToText" in open(os.path.join(folder, "README.md")).read()
    before = wilson(*exact_matches(shapes, folder, "shapes"))
    after = wilson(*exact_matches(shapes, out(shapes, "model:sft"), "shapes"))
    assert after[0] > max(CHANCE, before[1]), (before, after)


def test_a_frozen_vision_tower_and_language_model_leave_the_projector_alone_to_train(shapes, tiny_base):
    from transformers import AutoModelForCausalLM

    folder = out(shapes, "model:aligned")
    config = json.load(open(os.path.join(folder, "training_config.json")))
    assert config["trainable"] == config["parameters"]["projector"]
    _, vlm = load(folder)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert (vlm.model.language_model.layers[0].self_attn.q_proj.weight == base.model.layers[0].self_attn.q_proj.weight).all()


def test_dpo_on_image_preference_pairs_raises_the_right_colours_reward_on_held_out_pictures(shapes):
    """DPO's implicit reward of a held-out pair is how much more the policy than its reference prefers the
    chosen answer; a policy that learnt nothing gets it right half the time (every colour is rejected as often
    as it is chosen, so without the picture no model can tell the two apart)."""
    before = answer_logps(shapes, "pref", out(shapes, "model:vlm-untrained"))
    after = answer_logps(shapes, "pref", out(shapes, "model:dpo"))
    right = sum(a_chosen - a_rejected > b_chosen - b_rejected
                for (a_chosen, a_rejected), (b_chosen, b_rejected) in zip(after, before))
    # measured: 213 of 219 held-out pairs, [0.94, 0.99]; one pair per picture (a wrong colour drawn at random)
    # gave 43 of 67, [0.52, 0.75], and 80 steps lower bounds from 0.45 to 0.66 by seed
    assert wilson(right, len(after))[0] > 0.5, (right, len(after))
    log = [json.loads(line) for line in open(os.path.join(out(shapes, "model:dpo"), "training_log.jsonl"))]
    margins = [row["rewards/margins"] for row in log if "rewards/margins" in row]
    assert sum(margins[-10:]) > sum(margins[:10])


def implicit_rewards_right(project: Project, policy: str, reference: str) -> tuple[int, int]:
    """Held-out pairs whose DPO implicit reward (policy over reference, chosen minus rejected) is positive."""
    after, before = (answer_logps(project, "pref", out(project, m)) for m in (policy, reference))
    return sum(a_chosen - a_rejected > b_chosen - b_rejected
               for (a_chosen, a_rejected), (b_chosen, b_rejected) in zip(after, before)), len(after)


def test_dpo_with_lora_or_another_reference_learns_the_pairs_against_that_reference(shapes):
    """With `lora` (merged), the reference is the base with the adapter switched off; with `reference`, another
    model: its own untrained weights, so the first step's margins are already not 0, as they are when the
    reference is the policy's starting point. Each is measured against its own reference on held-out pairs,
    and `eval_split` logs the held-out loss, which falls. Measured: LoRA 175 of 219 held-out pairs right,
    [0.74, 0.85]; another reference 200 of 219, [0.87, 0.94], its eval loss 0.56 -> 0.29 -> 0.21, its first
    margin 0.0027 (the LoRA's 0.0)."""
    for policy, reference in (("model:dpo-lora", "model:vlm-untrained"), ("model:dpo-ref", "model:vlm-other")):
        right, n = implicit_rewards_right(shapes, policy, reference)
        assert wilson(right, n)[0] > 0.5, (policy, right, n)
    config = json.load(open(os.path.join(out(shapes, "model:dpo-ref"), "training_config.json")))
    assert config["reference"] == "model:vlm-other"
    log = [json.loads(line) for line in open(os.path.join(out(shapes, "model:dpo-ref"), "training_log.jsonl"))]
    assert abs([row for row in log if "rewards/margins" in row][0]["rewards/margins"]) > 0
    losses = [row["eval_loss"] for row in log if "eval_loss" in row]
    assert len(losses) >= 3 and losses[-1] < losses[0], losses
    lora_log = [json.loads(line) for line in open(os.path.join(out(shapes, "model:dpo-lora"), "training_log.jsonl"))]
    assert [row for row in lora_log if "rewards/margins" in row][0]["rewards/margins"] == 0


def test_lora_on_images_learns_to_caption_merged_and_as_an_adapter(shapes):
    """The parent answers colours; LoRA teaches it captions ("a red square"). Measured as the likelihood of each
    held-out caption: 60 steps raise its mean log-likelihood from -39.8 to -19.2 (higher on 67 of 67
    pictures), not yet to exact captions (0 of 67): LoRA on this 172k-parameter model learns far slower than
    full weights."""
    parent = [s[0] for s in answer_logps(shapes, "captions", out(shapes, "model:vlm"))]
    adapter_folder = out(shapes, "model:adapter")
    config = json.load(open(os.path.join(adapter_folder, "adapter_config.json")))
    assert config["base_model_name_or_path"] == "model:vlm"
    assert "model.safetensors" not in os.listdir(adapter_folder)
    for adapter in (None, adapter_folder):
        tuned = [s[0] for s in answer_logps(shapes, "captions", out(shapes, "model:lora") if adapter is None
                                            else out(shapes, "model:vlm"), adapter)]
        # on every held-out picture the caption is likelier after LoRA than before
        low, _ = wilson(sum(t > p for t, p in zip(tuned, parent)), len(parent))
        assert low > 0.5, (low, tuned[:5], parent[:5])


def test_an_imported_vlm_folder_trains_further_and_one_without_its_processor_is_refused(shapes, tmp_path):
    folder = str(tmp_path / "llava")
    shutil.copytree(out(shapes, "model:vlm"), folder)
    shapes.forgefile(shapes.text + f"""
[model.imported]
recipe = "import"
path = "{folder}"

[model.more]
recipe = "sft"
base = "model:imported"
data = "images:shapes"
max_length = 64
train = {{ lr = 1e-3, steps = 4, batch_size = 8 }}
threads = 1
""")
    shapes.run("model:more", timeout=300)
    processor, model = load(out(shapes, "model:more"))
    assert type(model).__name__ == "LlavaForConditionalGeneration" and processor.image_token == "<image>"
    os.unlink(os.path.join(folder, "processor_config.json"))
    failed = shapes.run("model:imported", expect=2)
    assert (f"{folder} is a vision-language model (llava) without its processor: save it into the folder with "
            f"processor.save_pretrained (processor_config.json)") in failed.stdout + failed.stderr
    shapes.forgefile(shapes.text)


def test_image_data_for_an_imported_text_model_is_refused_when_the_build_reads_it(shapes):
    shapes.forgefile(shapes.text + '\n[model.blind]\nrecipe = "sft"\nbase = "model:base"\ndata = "images:shapes"\n')
    failed = shapes.run("model:blind", expect=2)
    assert ("images:shapes holds images and model:base is a text-only model: recipe \"sft\" on image data needs a "
            "vision-language base (recipe \"vlm\", or an imported image-text-to-text model)") in failed.stdout + failed.stderr
    shapes.forgefile(shapes.text)


def test_a_killed_vlm_training_resumes_and_ends_with_the_uninterrupted_digest(tmp_path):
    lab = Project(str(tmp_path))
    write_shapes(lab.root)
    short = VLM.replace("steps = 100", "steps = 30")
    lab.forgefile(IMAGES + short + "checkpoint_every = 5\nlog_every = 1\n")
    log = os.path.join(lab.root, ".forge/logs/model/vlm.log")
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", "model:vlm"], cwd=lab.root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_line(log, "checkpoint at step 10", timeout=240)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not os.path.lexists(out(lab, "model:vlm"))
    lab.run("model:vlm", timeout=300)
    assert "resuming from checkpoint-10" in open(log, encoding="utf-8").read()
    clean = Project(str(tmp_path / "clean"))
    write_shapes(clean.root)
    clean.forgefile(IMAGES + short)
    clean.run("model:vlm", timeout=300)
    assert digest_of(lab, "model:vlm") == digest_of(clean, "model:vlm")
