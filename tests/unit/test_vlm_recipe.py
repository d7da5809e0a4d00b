"""The vlm recipe and image data in sft and dpo, in process: every Forgefile error a vision-language
setup can make, with its exact text (nothing is built), and how a model folder is told to be a
vision-language model."""
from __future__ import annotations

import json
import os

import pytest

from forgebuild.errors import ForgefileError
from forgebuild.rules.model import vision, vlm
from unitlab import lab  # noqa: F401  (a fixture)

PROJECT = """
[images.shapes]
source = "data/vqa.jsonl"
format = "vqa"

[images.pref]
source = "data/pref.jsonl"
format = "preference"

[dataset.chat]
source = "data/chat.jsonl"
format = "messages"

[corpus.c]
sources = ["data/chat.jsonl"]
text_field = "messages"

[tokenizer.t]
corpus = "corpus:c"
vocab_size = 300

[model.text]
recipe = "pretrain"
tokenizer = "tokenizer:t"
corpus = "corpus:c"
arch = { family = "llama" }

[model.vlm]
recipe = "vlm"
vision = { family = "siglip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }
language = "model:text"

[model.seeing]
recipe = "sft"
base = "model:vlm"
data = "images:shapes"
"""
LINES = PROJECT.count("\n")  # the line an appended table starts after


def write_sources(lab) -> None:
    lab.write("data/vqa.jsonl", '{"image": "a.png", "question": "what colour?", "answer": "red"}\n')
    lab.write("data/pref.jsonl", '{"image": "a.png", "prompt": "what colour?", "chosen": "red", "rejected": "blue"}\n')
    lab.write("data/chat.jsonl", '{"messages": [{"role": "user", "content": "hi"}, '
                                 '{"role": "assistant", "content": "hello"}]}\n')


def errors(lab, extra: str) -> list[str]:
    write_sources(lab)
    with pytest.raises(ForgefileError) as e:
        lab.plan(PROJECT + extra)
    return str(e.value).splitlines()


def test_the_project_itself_plans(lab):
    write_sources(lab)
    assert "model:seeing" in lab.plan(PROJECT).targets


@pytest.mark.parametrize("extra, line, message", [
    ('\n[model.m]\nrecipe = "sft"\nbase = "model:text"\ndata = "images:shapes"\n', 4,
     "key 'data': images:shapes holds images and model:text is a text-only model: recipe \"sft\" on image data "
     "needs a vision-language base (recipe \"vlm\", or an imported image-text-to-text model)"),
    ('\n[model.m]\nrecipe = "sft"\nbase = "model:vlm"\ndata = "dataset:chat"\n', 4,
     "key 'data': model:vlm is a vision-language model: recipe \"sft\" trains it on an images target "
     "(data = \"images:NAME\"), not on dataset:chat"),
    # an sft model trained on images is a vision-language model too (planning follows the chain)
    ('\n[model.m]\nrecipe = "sft"\nbase = "model:seeing"\ndata = "dataset:chat"\n', 4,
     "key 'data': model:seeing is a vision-language model: recipe \"sft\" trains it on an images target "
     "(data = \"images:NAME\"), not on dataset:chat"),
    ('\n[model.m]\nrecipe = "sft"\nbase = "model:vlm"\ndata = "images:pref"\n', 4,
     "key 'data': images:pref is a 'preference' images target; recipe \"sft\" trains on 'caption' or 'vqa' or "
     "'messages' images"),
    ('\n[model.m]\nrecipe = "dpo"\nbase = "model:vlm"\ndata = "images:shapes"\n', 4,
     "key 'data': images:shapes is a 'vqa' images target; recipe \"dpo\" trains on 'preference' images"),
    ('\n[model.m]\nrecipe = "sft"\nbase = "model:vlm"\ndata = "images:shapes"\npacking = true\n', 5,
     "key 'packing': image-text examples are not packed (each carries its own images): set packing = false"),
    ('\n[model.m]\nrecipe = "dpo"\nbase = "model:vlm"\ndata = "images:pref"\nloss = "odpo"\n', 5,
     "key 'loss': \"odpo\" reads score_chosen and score_rejected, which image preference pairs do not carry"),
    ('\n[model.m]\nrecipe = "vlm"\nvision = { family = "clip" }\nlanguage = "model:text"\ndata = "dataset:chat"\n', 5,
     "key 'data': dataset:chat is a dataset target; 'data' takes an images target"),
    ('\n[model.m]\nrecipe = "vlm"\nvision = { family = "clip" }\nlanguage = "model:seeing"\n', 4,
     "key 'language': model:seeing is a vision-language model; `language` takes a text-only one"),
    ('\n[model.m]\nrecipe = "vlm"\nvision = { family = "clip" }\nlanguage = "tokenizer:t"\n', 4,
     "key 'language': tokenizer:t is a tokenizer target; 'language' takes a model target"),
])
def test_a_wrong_image_setup_is_a_forgefile_error(lab, extra, line, message):
    assert errors(lab, extra) == [f"Forgefile.toml:{LINES + line + 1}: error: model:m: {message}"]


VISION = 'vision = { family = "siglip", hidden = 32, heads = 2, image_size = 32, patch_size = 8 }\n'


@pytest.mark.parametrize("keys, key, message", [
    ('language = "model:text"\ntext = { family = "llama" }\n', "language",
     "give either language = \"model:NAME\" (a model target) or text = { family = ... } with tokenizer = "
     "\"tokenizer:NAME\", not both"),
    ('', "language", "no language model: give language = \"model:NAME\" or text = { family = ... } with "
                   "tokenizer = \"tokenizer:NAME\""),
    ('text = { family = "llama" }\n', "tokenizer", "a language model from scratch (text) needs tokenizer = \"tokenizer:NAME\""),
    ('language = "model:text"\ntokenizer = "tokenizer:t"\n', "tokenizer",
     "the tokenizer comes with model:text; tokenizer goes with text"),
    ('text = { family = "mixtral", hidden = 64, heads = 4 }\ntokenizer = "tokenizer:t"\n', "text.family",
     "a vision-language model's language model is dense here (llama, qwen2, qwen3, mistral), not mixtral"),
    ('text = { family = "llama", hidden = 64, heads = 5 }\ntokenizer = "tokenizer:t"\n', "text.heads",
     "hidden 64 is not a multiple of heads 5"),
    ('language = "model:text"\nfreeze = ["vision"]\n', "freeze",
     "freezes parts of a training run, and without `data` nothing trains"),
    ('language = "model:text"\ndata = "images:shapes"\nfreeze = ["vision", "vision"]\n', "freeze",
     "names vision more than once"),
])
def test_a_wrong_vlm_table_is_a_forgefile_error(lab, keys, key, message):
    found = errors(lab, '\n[model.m]\nrecipe = "vlm"\n' + VISION + keys)
    assert len(found) == 1 and found[0].endswith(f"error: model:m: key '{key}': {message}"), found


def test_vision_sizes_that_do_not_divide_are_forgefile_errors(lab):
    found = errors(lab, '\n[model.m]\nrecipe = "vlm"\nlanguage = "model:text"\n'
                        'vision = { family = "siglip", hidden = 30, heads = 4, image_size = 30, patch_size = 8 }\n')
    assert [line.split("error: ")[1] for line in found] == [
        "model:m: key 'vision.heads': hidden 30 is not a multiple of heads 4",
        "model:m: key 'vision.patch_size': image_size 30 is not a multiple of patch_size 8",
    ]


def test_the_vlm_recipes_keys_are_documented():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "rules", "model.md")).read()
    missing = [f"{m.__name__}.{key}" for m in (vlm.Params, vlm.Vision, vlm.Projector) for key in m.model_fields
               if f"`{key}`" not in doc]
    assert not missing


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"], "vision_config": {}}, True),
    ({"model_type": "qwen2_vl", "architectures": ["Qwen2VLForConditionalGeneration"], "vision_config": {}}, True),
    ({"model_type": "clip", "architectures": ["CLIPModel"], "vision_config": {}}, False),  # contrastive: no text out
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, False),
    (None, False),
])
def test_a_vision_language_folder_is_told_by_its_config(tmp_path, config, expected):
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    assert vision.is_vlm(str(tmp_path)) is expected


def test_the_chat_template_renders_image_parts_as_the_image_token_and_marks_the_answer():
    from transformers.utils.chat_template_utils import _compile_jinja_template, _render_with_assistant_indices

    template = _compile_jinja_template(vision.chat_template("<image>", "</s>"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    rendered, marked = _render_with_assistant_indices(template, messages, None, None, False)
    assert rendered == "user: <image>what colour?\nassistant:\nred</s>\n"
    assert [rendered[start:end] for start, end in marked] == ["red</s>"]  # what assistant_only_loss trains on
    assert template.render(messages=messages[:1], add_generation_prompt=True) == "user: <image>what colour?\nassistant:\n"
    assert template.render(messages=[{"role": "user", "content": "hi"}], add_generation_prompt=False) == "user: hi\n"
