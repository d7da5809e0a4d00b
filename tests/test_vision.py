"""The vision example (examples/vision): pictures and their questions from files, a LLaVA assembled from a
SigLIP tower and a pretrained language model target, SFT and DPO on pictures, an eval whose report shows
them. Built once, cold, through the CLI: the model learns (held-out accuracy above chance with the
interval apart), the Auto classes load it, the report shows each picture beside its answers in a real
browser, and a redrawn picture makes stale exactly what reads it."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import Project
from test_eval_images import PROBE
from test_eval_report import chromium

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "vision")
# make_shapes.py asks three questions a picture: its colour (1 of 4), its count and its kind (1 of 3 each)
CHANCE = (1 / 4 + 1 / 3 + 1 / 3) / 3
READS_NO_PICTURE = ["corpus:words", "tokenizer:words", "model:lm"]
READS_PICTURES = ["images:captions", "images:pairs", "images:vqa", "model:vlm", "model:vlm-sft", "model:vlm-dpo",
                  "eval:shapes"]


@pytest.fixture(scope="module")
def vision(tmp_path_factory) -> Project:
    project = Project(str(tmp_path_factory.mktemp("vision")))
    for name in ("Forgefile.toml", "make_shapes.py"):
        shutil.copy(os.path.join(EXAMPLE, name), project.root)
    subprocess.run([sys.executable, "make_shapes.py"], cwd=project.root, check=True, capture_output=True)
    project.built = project.build(timeout=900)
    return project


def test_the_example_builds_from_files_and_the_vlm_answers_above_chance(vision):
    assert set(vision.built.values()) == {"built"} and sorted(vision.built) == sorted(READS_NO_PICTURE + READS_PICTURES)
    report = json.loads(vision.read(".forge/out/eval/shapes/report.json"))
    em = {m: r["shapes.exact_match"] for m, r in report["results"].items()}
    assert report["models"] == ["model:vlm", "model:vlm-sft", "model:vlm-dpo"] and {e["n"] for e in em.values()} == {360}
    # the captioner was never asked a question: it answers with captions, never one word
    assert em["model:vlm"]["value"] == 0
    # SFT on the questions: held-out pictures answered well above chance, the 95% interval apart from it
    assert em["model:vlm-sft"]["low"] > CHANCE + 0.2, em
    assert em["model:vlm-dpo"]["low"] > CHANCE, em
    margins = report["training"]["model:vlm-dpo"]["rewards/margins"]
    assert margins["last"] > margins["first"]  # DPO did its job on the pairs: chosen pulled apart from rejected
    assert report["passed"]
    assert set(vision.build().values()) == {"cached"}
    verified = vision.run("verify").stdout.splitlines()
    assert verified[-1].startswith("verified: 10 targets, ") and not [line for line in verified if "CORRUPT" in line]


def test_autoprocessor_and_the_auto_model_class_load_the_artifact_and_it_answers(vision):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = os.path.join(vision.root, ".forge/out/model/vlm-sft")
    processor, model = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder)
    assert type(model).__name__ == "LlavaForConditionalGeneration" and type(processor).__name__ == "LlavaProcessor"
    records = [json.loads(line) for line in vision.read(".forge/out/images/vqa/test.jsonl").splitlines()][:30]
    right = 0
    for record in records:
        prompt = processor.apply_chat_template(record["messages"][:-1], add_generation_prompt=True)
        picture = Image.open(os.path.join(vision.root, ".forge/out/images/vqa", record["images"][0]))
        inputs = processor(images=[picture], text=prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        right += processor.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == record["answer"]
    assert right / len(records) > 0.5  # the eval's own figure for this model is about 0.8


def test_the_report_shows_each_picture_beside_its_answers_in_a_real_browser(vision, tmp_path):
    page = tmp_path / "page"
    shutil.copytree(os.path.join(vision.root, ".forge/out/eval/shapes"), page)
    html = (page / "report.html").read_text()
    (page / "probe.html").write_text(html.replace("</body>", PROBE + "</body>"))
    proc = chromium("--dump-dom", "--virtual-time-budget=10000", (page / "probe.html").as_uri(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(re.search(r'data-loaded="([^"]*)"', proc.stdout).group(1).replace("&quot;", '"'))
    # the first 50 of 360 examples, each picture decoded at its 32 pixels
    assert len(loaded) == 50 and all(natural == 32 and complete for _, natural, complete, _ in loaded), loaded[:3]
    shot = tmp_path / "report.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1200,1600", (page / "report.html").as_uri(), cwd=tmp_path)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]


def test_a_redrawn_picture_makes_stale_exactly_what_reads_it(vision):
    # last in this file: it changes the example's data
    from PIL import Image

    path = os.path.join(vision.root, "data/images/0007.png")
    picture = Image.open(path).convert("RGB")
    picture.putpixel((0, 0), (0, 0, 0))
    picture.save(path)
    status = dict(reversed(line.split()[:2]) for line in vision.run("status").stdout.splitlines() if line.strip())
    assert [t for t in READS_NO_PICTURE if status[t] != "fresh"] == []
    assert [t for t in READS_PICTURES if status[t] == "fresh"] == []
    assert "input data/images/0007.png changed" in vision.run("explain", "images:vqa").stdout
    rebuilt = vision.build("images:captions", "images:vqa", "images:pairs")
    assert set(rebuilt.values()) == {"built"}
