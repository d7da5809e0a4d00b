"""Image benchmarks without a model: an images split's records read and checked (exact messages, and any
broken record one BenchmarkError naming file and line), the Forgefile checks (a split the target lacks, a
text-only model), and report.html's Examples section (each image with its size, alt text and answers)."""
from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from forgebuild.rules import eval as eval_rule
from forgebuild.rules.eval.report import image_examples, render_html, render_markdown
from forgebuild.rules.eval.scoring import BenchmarkError
from forgebuild.rules.eval.vision import read_records

DIGEST = "ab" * 32
PICTURE = f"images/{DIGEST}.png"
WHERE = "images:shapes test.jsonl"


def record(**changes) -> dict:
    found = {"images": [PICTURE], "answer": "red", "choices": ["red", "blue"],
             "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]}
    found.update(changes)
    return {k: v for k, v in found.items() if v is not DROP}


DROP = object()


@pytest.fixture
def artifact(tmp_path):
    os.makedirs(tmp_path / "images")
    Image.new("RGB", (32, 24), (220, 30, 30)).save(tmp_path / PICTURE)
    return tmp_path


def read(artifact, *records, kind="generate", lines=None) -> list[dict]:
    path = artifact / "test.jsonl"
    path.write_bytes(b"".join(lines or [json.dumps(r).encode() + b"\n" for r in records]))
    return read_records(str(path), str(artifact), kind, WHERE)


def test_a_record_is_its_prompt_turns_images_and_answer(artifact):
    rows = read(artifact, record(), record(answer=["red", "crimson"]))
    assert rows[0] == {"line": 1, "prompt": "what colour?", "images": [PICTURE], "answer": "red",
                       "messages": [record()["messages"][0]]}   # the last assistant turn is the reference
    assert rows[1]["answer"] == ["red", "crimson"]
    picked = read(artifact, record(answer="blue"), kind="choice")[0]
    assert picked["choices"] == ["red", "blue"] and picked["answer"] == 1
    preference = record(messages=DROP, prompt=record()["messages"][:1],
                        chosen=[{"role": "assistant", "content": [{"type": "text", "text": "red"}]}], rejected=[])
    assert read(artifact, preference)[0]["messages"] == record()["messages"][:1]


@pytest.mark.parametrize("broken, message", [
    (record(images=DROP), "field 'images' is missing"),
    (record(images=[]), "field 'images' must be a non-empty list of paths (got a list)"),
    (record(images="images/x.png"), "field 'images' must be a non-empty list of paths (got a string)"),
    (record(images=[f"images/{'cd' * 32}.png"]), f"image 'images/{'cd' * 32}.png' is not an image of the artifact "
                                                 f"(images/DIGEST.png)"),
    (record(images=["../secret.png"]), "image '../secret.png' is not an image of the artifact (images/DIGEST.png)"),
    (record(messages=DROP), "field 'messages' is missing"),
    (record(messages=[]), "field 'messages' must be a non-empty list of turns (got a list)"),
    (record(messages=[record()["messages"][1]]), "field 'messages' has no turn before the answer"),
    (record(answer=DROP), "field 'answer' is missing"),
    (record(answer=""), "field 'answer' must be a non-empty string, a number, or a non-empty list of them "
                        "(got an empty string)"),
])
def test_a_broken_record_names_the_split_line_and_field(artifact, broken, message):
    with pytest.raises(BenchmarkError) as e:
        read(artifact, record(), broken)
    assert str(e.value) == f"{WHERE}:2: {message}"


def test_a_choice_record_needs_its_choices_and_an_answer_among_them(artifact):
    for broken, message in ((record(choices=DROP), "field 'choices' is missing"),
                            (record(answer="green"), "answer 'green' is not one of the choices")):
        with pytest.raises(BenchmarkError) as e:
            read(artifact, broken, kind="choice")
        assert str(e.value) == f"{WHERE}:1: {message}"


@settings(max_examples=40, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                      max_size=3), max_leaves=6),
       field=st.sampled_from(["images", "messages", "answer", "choices"]), kind=st.sampled_from(["generate", "choice"]))
def test_any_value_in_any_field_is_read_or_one_benchmark_error_with_its_line(tmp_path_factory, value, field, kind):
    """Whatever JSON sits in a field, the record is read or refused with `WHERE:LINE: ...`: never another
    exception (a traceback)."""
    folder = tmp_path_factory.mktemp("split")
    os.makedirs(folder / "images")
    Image.new("RGB", (4, 4)).save(folder / PICTURE)
    try:
        read(folder, record(), record(**{field: value}), kind=kind)
    except BenchmarkError as e:
        assert str(e).startswith(f"{WHERE}:2: "), e


def test_a_line_that_is_not_json_or_not_utf8(artifact):
    for line, message in ((b"{\"images\": [\n", "1: "), (b"\xff\xfe\n", "1: not UTF-8 text")):
        with pytest.raises(BenchmarkError) as e:
            read(artifact, lines=[line])
        assert str(e.value).startswith(f"{WHERE}:{message}")


# ------------------------------------------------------------------ the Forgefile checks

def target(kind: str, **params) -> dict:
    return {"kind": kind, "params": SimpleNamespace(**params), "deps": {}}


def deps_problems(benchmarks: list[dict], models=("model:vlm",), **deps) -> list[tuple]:
    params = eval_rule.Params(models=list(models), benchmarks=benchmarks)
    found = {"images:shapes": target("images", splits={"train": 0.8, "test": 0.2}),
             "model:vlm": target("model", recipe="vlm"), **deps}
    return eval_rule.check_deps(params, found)


def test_the_split_must_be_one_the_images_target_declares():
    assert deps_problems([{"name": "c", "data": "images:shapes"}]) == []
    assert deps_problems([{"name": "c", "data": "images:shapes", "split": "train"}]) == []
    assert deps_problems([{"name": "c", "data": "images:shapes", "split": "tset"}]) == [
        ("benchmarks.0.split", "images:shapes has no split 'tset'; its splits: test, train")]
    only_train = {"images:shapes": target("images", splits={"train": 1.0})}
    assert deps_problems([{"name": "c", "data": "images:shapes"}], **only_train) == [
        ("benchmarks.0.data", "images:shapes has no split 'test'; its splits: train (set split)")]


def test_split_is_for_a_dataset_like_target_of_a_generate_or_choice_benchmark():
    def problems(bench):
        return [p for p in eval_rule.check(eval_rule.Params(models=["model:vlm"], benchmarks=[bench]))]

    assert problems({"name": "c", "data": "bench/c.jsonl", "split": "test"}) == [
        ("benchmarks.0.split", "'split' names a split of a dataset-like target (images:NAME, dataset:NAME); "
                               "bench/c.jsonl is a file")]
    assert ("benchmarks.0.split", "'split' is not used by a perplexity benchmark (it names a split of a generate "
                                  "or choice benchmark's data)") in problems(
        {"name": "p", "kind": "perplexity", "corpus": "corpus:c", "split": "test"})


def test_a_model_known_to_be_text_only_is_refused_on_an_image_benchmark():
    base = target("model", recipe="pretrain")
    sft = {"kind": "model", "params": SimpleNamespace(recipe="sft", base="model:base"), "deps": {"model:base": base}}
    found = deps_problems([{"name": "colour", "data": "images:shapes"}],
                          models=("model:vlm", "model:base", "model:sft", "model:imported"),
                          **{"model:base": base, "model:sft": sft, "model:imported": target("model", recipe="import")})
    assert found == [
        ("models.1", "model:base is a text-only model (recipe pretrain) and benchmark colour reads images "
                     "(images:shapes): evaluate a vision-language model on it"),
        ("models.2", "model:sft is a text-only model (built on model:base, recipe pretrain) and benchmark colour "
                     "reads images (images:shapes): evaluate a vision-language model on it")]
    # a text benchmark: any model
    assert deps_problems([{"name": "t", "data": "bench/t.jsonl"}], models=("model:base",), **{"model:base": base}) == []


# ------------------------------------------------------------------ report.html

class Images(HTMLParser):
    def __init__(self, page: str):
        super().__init__()
        self.images, self.cells, self._td = [], [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "img" and "example" in dict(attrs).get("class", ""):
            self.images.append(dict(attrs))
        if tag == "td":
            self._td = ""

    def handle_data(self, data):
        if self._td is not None:
            self._td += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.cells.append(self._td)
            self._td = None


def test_report_shows_each_image_beside_its_prompt_reference_and_every_models_answer(artifact):
    os.makedirs(artifact / "samples" / "images")
    Image.new("RGB", (32, 24), (220, 30, 30)).save(artifact / "samples" / PICTURE)
    Image.new("RGB", (640, 320), (30, 30, 220)).save(artifact / "samples" / "images" / f"{'ef' * 32}.png")
    rows = [{"line": 1, "prompt": "what colour?", "reference": "red", "images": [f"samples/{PICTURE}"]},
            {"line": 2, "prompt": "and <this>?", "reference": "blue", "images": [f"samples/images/{'ef' * 32}.png"]}]
    answers = {"model:a": ["red", "red"], "model:b": ["", "blue"]}
    report = {"title": "eval:colours", "models": list(answers),
              "benchmarks": [{"name": "colour", "kind": "generate", "metrics": ["exact_match"], "images": True},
                             {"name": "text", "kind": "generate", "metrics": ["exact_match"]}],
              "samples": {m: {"colour": f"samples/{m}/colour.jsonl", "text": f"samples/{m}/text.jsonl"}
                          for m in answers}, "results": {}, "comparisons": [], "gates": []}
    for model, outputs in answers.items():
        os.makedirs(artifact / "samples" / model)
        (artifact / "samples" / model / "colour.jsonl").write_text("".join(
            json.dumps({**r, "output": o, "scores": {"exact_match": float(o == r["reference"])}}) + "\n"
            for r, o in zip(rows, outputs)))
    examples = image_examples(str(artifact), report)
    page = render_html(report, None, examples)
    found = Images(page[page.index('id="examples-colour"'):])
    assert [(i["src"], i["width"], i["height"]) for i in found.images] == [
        (f"samples/{PICTURE}", "96", "72"),                       # 32x24 drawn at 96 px, pixelated
        (f"samples/images/{'ef' * 32}.png", "192", "96")]          # 640x320 down to 192 px
    assert [i["alt"] for i in found.images] == ["the image of: what colour?", "the image of: and <this>?"]
    assert found.cells[:10] == ["", "what colour?", "red", "redexact_match=1", "(nothing)exact_match=0",
                                "", "and <this>?", "blue", "redexact_match=0", "blueexact_match=1"]
    assert "All 2 examples: each image as the model saw it" in page
    assert "The first 1 of 2 examples" in render_html(report, None, image_examples(str(artifact), report, limit=1))
    assert 'id="examples-colour"' in page and 'id="examples-text"' not in page   # image benchmarks only
    assert "<script" not in page
    assert 'id="examples-' not in render_html(report, None)                     # no examples given: none shown
    assert render_markdown(report, None).endswith(
        "\nImages (colour): each picture beside every model's answer in report.html (Examples); the pictures are in "
        "`samples/images/`.\n")


# ------------------------------------------------------------------ contamination by picture

def test_an_image_example_is_contaminated_by_its_picture_not_by_its_repeated_question(tmp_path):
    from forgebuild.rules.eval.contamination import Example, Prompts, scan

    seen, unseen = f"images/{'01' * 32}.png", f"images/{'02' * 32}.png"
    trained = tmp_path / "images-train"   # an images artifact a model was trained from: one picture
    os.makedirs(trained)
    (trained / "dataset.json").write_text(json.dumps({"kind": "images", "splits": {"train": {"path": "train.jsonl"}}}))
    (trained / "train.jsonl").write_text(json.dumps(record(images=[seen])) + "\n")
    chat = tmp_path / "dataset-chat"      # a text dataset that asks the same question
    os.makedirs(chat)
    (chat / "dataset.json").write_text(json.dumps({"splits": {"train": {"path": "train.jsonl"}}}))
    (chat / "train.jsonl").write_text(json.dumps({"prompt": "what colour?", "completion": "red"}) + "\n")
    prompts = Prompts([Example("colour", 1, "what colour?", (seen,)), Example("colour", 2, "what colour?", (unseen,)),
                       Example("text", 1, "what colour?")], ngram=13)
    assert scan(str(trained), prompts) == {0: {"file": "train.jsonl", "where": "line 1", "how": "same image"},
                                           2: {"file": "train.jsonl", "where": "line 1", "how": "exact prompt"}}
    # the question alone flags the text benchmark's example, never an image example
    assert scan(str(chat), prompts) == {2: {"file": "train.jsonl", "where": "line 1", "how": "exact prompt"}}
