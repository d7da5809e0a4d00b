"""eval on images: a tiny vision-language model, trained here for a few seconds to name the colour of a
square, scored through the CLI on held-out images (generate and choice) beats chance with its interval
apart while an untrained one does not; report.html shows each image beside its answer in a real browser;
a changed image re-evaluates; a text-only model on an image benchmark is a clear error."""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import pytest
import tinylab
from test_eval_report import chromium

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20)}
QUESTION = "what colour?"
CHANCE = 1 / len(COLOURS)
PER_COLOUR = 10  # held-out images per colour: 40, balanced, so a constant answer scores exactly chance


def square(colour: str, rng: random.Random):
    """A 32x32 white picture with one square of `colour`, placed and sized at random."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (32, 32), (255, 255, 255))
    x, y, side = rng.randint(2, 14), rng.randint(2, 14), rng.randint(8, 14)
    ImageDraw.Draw(image).rectangle([x, y, x + side, y + side], fill=COLOURS[colour])
    return image


def user_turn() -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}


# ------------------------------------------------------------------ the tiny VLM (transformers, plain torch)

def char_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<image>": 3}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789 ?.,:":
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Split("", "isolated"), decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


TEMPLATE = ("{% for m in messages %}{% if m['role']=='user' %}user: {% for c in m['content'] %}"
            "{% if c['type']=='image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
            "{% else %}assistant: {% generation %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}</s>"
            "{% endgeneration %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")


def tiny_vlm(seed: int):
    """A 115k-parameter LLaVA (SigLIP, 1 layer; llama, 2 layers) and its processor (/tmp/p17/probe.py)."""
    import torch
    from transformers import (LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              SiglipImageProcessorPil, SiglipVisionConfig)

    torch.manual_seed(seed)
    tokenizer = char_tokenizer()
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=8, num_channels=3)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                       tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=3, projector_hidden_act="gelu",
                         vision_feature_select_strategy="full", vision_feature_layer=-1, image_seq_length=16)
    processor = LlavaProcessor(image_processor=SiglipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="full",
                               chat_template=TEMPLATE, image_token="<image>", num_additional_image_tokens=0)
    return LlavaForConditionalGeneration(config), processor


def train(model, processor, steps: int, batch: int = 16, seed: int = 0) -> None:
    """Plain torch: the answer's tokens (and the end of turn) given the image and the question."""
    import torch

    rng, optimiser = random.Random(seed), torch.optim.AdamW(model.parameters(), lr=3e-3)
    prompt = processor.apply_chat_template([user_turn()], add_generation_prompt=True, tokenize=False)
    model.train()
    for _ in range(steps):
        colours = [rng.choice(list(COLOURS)) for _ in range(batch)]
        inputs = processor(images=[square(c, rng) for c in colours], text=[f"{prompt}{c}</s>" for c in colours],
                           padding=True, return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[:, :len(processor(images=[square("red", rng)], text=prompt).input_ids[0])] = -100
        labels[inputs["attention_mask"] == 0] = -100
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    """{"trained": folder, "untrained": folder}: save_pretrained of model and processor, as the contract says."""
    import torch

    torch.set_num_threads(1)
    folders = {}
    for name, steps in (("trained", 150), ("untrained", 0)):
        model, processor = tiny_vlm(seed=3)
        train(model, processor, steps)
        folder = str(tmp_path_factory.mktemp(f"vlm-{name}"))
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[name] = folder
    return folders


# ------------------------------------------------------------------ the images target

def write_shapes(root: str, seed: int = 7) -> list[dict]:
    """shapes/NN.png and shapes/test.jsonl: PER_COLOUR held-out squares of each colour, with the question,
    the answer and the choices (vqa)."""
    rng, rows = random.Random(seed), []
    os.makedirs(os.path.join(root, "shapes"), exist_ok=True)
    for i, colour in enumerate(c for c in COLOURS for _ in range(PER_COLOUR)):
        square(colour, rng).save(os.path.join(root, "shapes", f"{i:02d}.png"))
        rows.append({"image": f"{i:02d}.png", "question": QUESTION, "answer": colour, "choices": list(COLOURS)})
    tinylab.write_jsonl(os.path.join(root, "shapes", "test.jsonl"), rows)
    return rows


SHAPES = """
[images.shapes]
source = "shapes/"
format = "vqa"
splits = { test = 1.0 }
"""

def eval_table(models: list[str], data: str = "images:shapes", more: str = "") -> str:
    return f'''
[eval.colours]
models = {json.dumps(models)}
benchmarks = [
    {{ name = "colour", data = "{data}", metrics = ["exact_match", "contains"] }},
    {{ name = "pick", kind = "choice", data = "{data}" }},{more}
]
generation = {{ max_new_tokens = 8 }}
threads = 1
'''


def imported(name: str, folder: str) -> str:
    return f'\n[model.{name}]\nrecipe = "import"\npath = "{folder}"\n'


TEXT_BENCH = [{"prompt": "user: abc", "answer": "d"}, {"prompt": "user: red", "answer": "blue"}]


@pytest.fixture(scope="module")
def colours(tmp_path_factory, vlms):
    """A project whose eval:colours (built once here) scores the untrained and the trained VLM on the
    held-out squares (generate and choice) and on a text benchmark."""
    from conftest import Project

    p = Project(str(tmp_path_factory.mktemp("colours")))
    write_shapes(p.root)
    tinylab.write_jsonl(os.path.join(p.root, "bench", "text.jsonl"), TEXT_BENCH)
    p.preamble = SHAPES + imported("vlm", vlms["trained"]) + imported("blank", vlms["untrained"])
    p.forgefile(p.preamble + eval_table(["model:blank", "model:vlm"], more='\n    { name = "text", data = "bench/text.jsonl" },'))
    p.run("eval:colours", timeout=300)
    p.first = evaluations(p.read(".forge/logs/eval/colours.log"))
    p.out = p.run("path", "eval:colours").stdout.strip()
    return p


def evaluations(log: str) -> list[str]:
    return [line.split("evaluating ", 1)[1].split(" (")[0] for line in log.splitlines() if "evaluating " in line]


# ------------------------------------------------------------------ tests

def test_trained_vlm_beats_chance_with_its_interval_apart_and_an_untrained_one_does_not(colours):
    report = json.loads(colours.read(".forge/out/eval/colours/report.json"))
    trained, blank = report["results"]["model:vlm"], report["results"]["model:blank"]
    for metric in ("colour.exact_match", "colour.contains", "pick.accuracy"):
        assert trained[metric]["n"] == 4 * PER_COLOUR
        assert trained[metric]["low"] > CHANCE, (metric, trained[metric])     # learnt: the interval above chance
        assert blank[metric]["high"] < trained[metric]["low"], (metric, blank[metric], trained[metric])
    assert blank["pick.accuracy"]["low"] <= CHANCE <= blank["pick.accuracy"]["high"]   # guessing: chance inside
    paired = {c["metric"]: c for c in report["comparisons"]}
    assert paired["colour.exact_match"]["significant"] and paired["colour.exact_match"]["low"] > 0
    assert [b.get("images", False) for b in report["benchmarks"]] == [True, True, False]
    # a VLM on a text benchmark answers through its tokenizer, as any causal model
    assert trained["text.exact_match"]["n"] == len(TEXT_BENCH)
    assert sorted(colours.first) == sorted(f"{m} on {b}" for m in ("model:blank", "model:vlm")
                                           for b in ("colour", "pick", "text"))


def test_samples_name_their_images_and_the_artifact_keeps_one_copy_of_each(colours):
    samples = [json.loads(line) for line in colours.read(".forge/out/eval/colours/samples/model-vlm/colour.jsonl")
               .splitlines()]
    assert len(samples) == 4 * PER_COLOUR and {s["prompt"] for s in samples} == {QUESTION}
    assert {s["reference"] for s in samples} == set(COLOURS)
    assert all(re.fullmatch(r"samples/images/[0-9a-f]{64}\.png", rel) for s in samples for rel in s["images"])
    assert all(os.path.isfile(os.path.join(colours.out, rel)) for s in samples for rel in s["images"])
    # two models, two image benchmarks, one picture each: 40 files
    assert len(os.listdir(os.path.join(colours.out, "samples", "images"))) == 4 * PER_COLOUR
    picked = json.loads(colours.read(".forge/out/eval/colours/samples/model-vlm/pick.jsonl").splitlines()[0])
    assert len(picked["loglikelihoods"]) == len(COLOURS) and picked["images"] == samples[0]["images"]


# each <img> of the Examples tables reports what the browser decoded: the report itself runs no script
PROBE = """<script>
window.addEventListener("load", () => {
  const found = [...document.querySelectorAll("img.example")].map(i => [i.getAttribute("src"), i.naturalWidth,
                                                                       i.complete, i.width]);
  document.body.setAttribute("data-loaded", JSON.stringify(found));
});
</script>"""


def test_report_html_shows_each_image_beside_its_answers_in_a_real_browser(colours, tmp_path):
    page = tmp_path / "page"
    shutil.copytree(colours.out, page)  # the artifact is the store's: the probe goes into a copy
    html = (page / "report.html").read_text()
    assert "<script" not in html
    (page / "probe.html").write_text(html.replace("</body>", PROBE + "</body>"))
    proc = chromium("--dump-dom", "--virtual-time-budget=10000", (page / "probe.html").as_uri(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(re.search(r'data-loaded="([^"]*)"', proc.stdout).group(1).replace("&quot;", '"'))
    # 2 image benchmarks x 40 examples, each picture decoded at its 32 px and drawn at 96 px
    assert len(loaded) == 2 * 4 * PER_COLOUR
    assert all(natural == 32 and complete and shown == 96 for _, natural, complete, shown in loaded), loaded[:3]
    # the picture, the question, the reference, then each model's answer, in one row
    row = re.search(r'<tr><td class="img"><img class="example" src="([^"]+)"[^>]*alt="([^"]+)"></td><td>([^<]*)</td>'
                    r'<td>([^<]*)</td><td class="(right|wrong)"><span class="output">', html)
    assert row and row.group(2) == f"the image of: {QUESTION}" and row.group(3) == QUESTION
    assert row.group(4) in COLOURS


def test_a_changed_image_evaluates_every_model_again_on_the_benchmarks_that_read_it(colours):
    from PIL import Image

    p = colours
    Image.new("RGB", (32, 32), COLOURS["blue"]).save(os.path.join(p.root, "shapes", "00.png"))
    p.run("eval:colours", timeout=300)
    assert sorted(evaluations(p.read(".forge/logs/eval/colours.log"))) == sorted(
        f"{m} on {b}" for m in ("model:blank", "model:vlm") for b in ("colour", "pick"))   # not the text one
    first = json.loads(p.read(".forge/out/eval/colours/samples/model-vlm/colour.jsonl").splitlines()[0])
    assert first["reference"] == "red" and first["output"] == "blue"   # the record says red; the picture is blue


def test_a_text_only_model_on_an_image_benchmark_is_an_error_naming_both(project, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    p = project
    write_shapes(p.root)
    p.write("text/a.txt", "some text\n")
    # planning: the model's chain starts at a pretrain, so it is text-only before anything runs
    p.forgefile(tinylab.BASE_FORGEFILE + SHAPES + eval_table(["model:base"]))
    out = p.run("eval:colours", expect=2)
    line = p.read("Forgefile.toml").splitlines().index("[eval.colours]") + 2   # models = [...]
    assert out.stderr == (f"Forgefile.toml:{line}: error: eval:colours: key 'models[0]': model:base is a text-only "
                          f"model (recipe pretrain) and benchmark colour reads images (images:shapes): evaluate a "
                          f"vision-language model on it\n")
    # an imported folder: only its config can say, when the evaluation starts
    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    p.forgefile(SHAPES + imported("text", str(folder)) + eval_table(["model:text"]))
    out = p.run("eval:colours", expect=2, timeout=300)
    assert ("FAILED  eval:colours: model:text is a text-only model (model_type llama) and benchmark colour reads "
            "images (images:shapes): evaluate a vision-language model on it\n") in out.stdout


def test_answers_do_not_depend_on_the_batch_and_stop_strings_cut_them(colours, vlms):
    """Greedy answers batched (left padded) equal those one at a time; sampled ones depend on the seed and
    the example only; a stop string ends an answer where it first appears."""
    from forgebuild.rules.eval import vision

    data = colours.run("path", "images:shapes").stdout.strip()
    rows = vision.read_records(os.path.join(data, "test.jsonl"), data, "generate", "shapes")[::5]
    model, processor = vision.load(vlms["trained"])

    def answers(batch_size, temperature=0.0, stop=("\n",)):
        return vision.generate(model, processor, data, rows, 6, stop, batch_size, temperature, seed=4)

    greedy = answers(1)
    assert answers(8) == greedy and sum(a == r["answer"] for a, r in zip(greedy, rows)) > len(rows) * CHANCE
    assert answers(3, temperature=1.0) == answers(8, temperature=1.0)
    assert answers(8, stop=("e",)) == [a[:a.index("e")] if "e" in a else a for a in greedy]


def test_a_vlm_reads_a_text_benchmark_through_its_tokenizer(vlms):
    """No image: the language model scores choices and measures perplexity as any causal model does."""
    import math

    from forgebuild.rules.eval import scoring, vision
    from transformers import AutoTokenizer

    model, tokenizer = vision.load_model(vlms["trained"]), AutoTokenizer.from_pretrained(vlms["trained"])
    picked = scoring.choice_scores(model, tokenizer, [{"prompt": "user: abc", "choices": ["d", "xyz"], "answer": 0}])
    assert len(picked[0]["loglikelihoods"]) == 2 and all(math.isfinite(v) for v in picked[0]["loglikelihoods"])
    docs = scoring.perplexity(model, tokenizer, ["what colour? red", "assistant: blue"], seq_len=8)
    assert [d["tokens"] for d in docs] == [17, 16] and all(math.isfinite(d["nll"]) and d["nll"] > 0 for d in docs)


def test_a_vlm_built_from_an_images_target_is_contaminated_by_its_training_pictures_only(project, tmp_path):
    """model:vlm (the vlm recipe, a text model imported as its language model) trains two steps on the
    train split of images:shapes: evaluated on that split, every example's picture is in its training
    data; on the test split none is, though every question is the same."""
    from transformers import LlamaConfig, LlamaForCausalLM

    p = project
    write_shapes(p.root)
    folder = tmp_path / "lm"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(char_tokenizer()), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    p.forgefile(SHAPES.replace("test = 1.0", "train = 0.5, test = 0.5") + imported("lm", str(folder)) + '''
[model.vlm]
recipe = "vlm"
vision = { family = "siglip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }
language = "model:lm"
data = "images:shapes"
train = { lr = 1e-3, steps = 2, batch_size = 4 }
threads = 1
''' + eval_table(["model:vlm"], more='\n    { name = "seen", data = "images:shapes", split = "train" },'))
    p.run("eval:colours", timeout=300)
    section = json.loads(p.read(".forge/out/eval/colours/report.json"))["contamination"]["models"]["model:vlm"]
    assert section["data"] == ["images:shapes"]
    found = section["benchmarks"]
    assert found["seen"]["examples"] > 0 and found["seen"]["rate"] == 1.0
    assert {m["how"] for m in found["seen"]["matches"]} == {"same image"}
    assert found["colour"]["contaminated"] == found["pick"]["contaminated"] == 0
    assert found["colour"]["examples"] + found["seen"]["examples"] == 4 * PER_COLOUR


def test_lm_eval_text_tasks_score_a_vlm_through_its_language_model(vlms, project):
    """lm-evaluation-harness's text tasks run on a vision-language model as on a causal LM, by its forward pass
    without pixels: whether training on pictures cost the model its text is measured with the same tasks."""
    from test_eval_harness import write_task_dir

    write_task_dir(project.root)
    project.forgefile(imported("vlm", vlms["trained"]) + """
[eval.text]
models = ["model:vlm"]
benchmarks = [{ name = "lm", kind = "lm-eval", path = "tasks", tasks = ["arith_gen", "arith_mc"] }]
limit = 6
threads = 1
""")
    project.run("eval:text", timeout=300)
    report = json.loads(project.read(".forge/out/eval/text/report.json"))
    results = report["results"]["model:vlm"]
    assert results["lm.arith_mc.acc"]["n"] == results["lm.arith_gen.exact_match"]["n"] == 6
    rows = [json.loads(line) for line in project.read(".forge/out/eval/text/samples/model-vlm/lm.jsonl").splitlines()]
    assert len(rows) == 12 and {row["task"] for row in rows} == {"arith_gen", "arith_mc"}
