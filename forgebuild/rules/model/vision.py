"""Vision-language models and image-text data, for the recipes that train them (vlm, sft, dpo) and the eval.
Build-only: imported inside a build. `is_vlm` reads a config.json and nothing more, so the `import`
recipe (which needs no ML library) can call it; the loaders import transformers and PIL when called.

A vision-language artifact is a `save_pretrained` folder of a class `AutoModelForImageTextToText`
loads, with its processor beside it (processor_config.json, the tokenizer, chat_template.jinja). An
images target's artifact (forgebuild/rules/images.py) holds `images/<digest>.png` and SPLIT.jsonl
records whose "images" are paths relative to the artifact, already in their declared mode and size.
"""
from __future__ import annotations

import json
import os

# What a model's config.json says when it is an image-text-to-text model: a vision tower's config and a
# generating head (LLaVA, Qwen2-VL, Idefics3, PaliGemma, Gemma 3, Mllama, BLIP-2 all have both). A
# contrastive image-text model (CLIPModel, SiglipModel) has a vision_config too, but generates nothing.
GENERATING = ("ForConditionalGeneration", "ForImageTextToText")
# The files a saved processor leaves beside the weights (processor_config.json since transformers 4.5x;
# preprocessor_config.json when only the image processor was saved, as older folders hold).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def read_config(folder: str) -> dict:
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def is_vlm(folder: str) -> bool:
    """Whether the model folder holds an image-text-to-text model (by its config.json)."""
    config = read_config(folder)
    architectures = config.get("architectures") or []
    return isinstance(config.get("vision_config"), dict) and any(
        isinstance(name, str) and name.endswith(GENERATING) for name in architectures)


def has_processor(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in PROCESSOR_FILES)


def load_processor(folder: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


def load_vlm(ctx, folder: str, address: str):
    """A vision-language model from a model artifact, in float32 (CPU training and exact resumes want it)."""
    import torch
    from transformers import AutoModelForImageTextToText

    if not os.path.exists(os.path.join(folder, "config.json")):
        raise ctx.bad_input(f"{address} is not a model folder: it has no config.json")
    if not is_vlm(folder):
        raise ctx.bad_input(f"{address} is not a vision-language model: its config.json names no image-text-to-text "
                            f"architecture")
    if not has_processor(folder):
        raise ctx.bad_input(f"{address} is a vision-language model without its processor (no processor_config.json "
                            f"beside its weights)")
    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)


def open_images(artifact_folder: str, record: dict) -> list:
    """The record's images, read whole (the files are closed again), in the order its image parts appear."""
    from PIL import Image

    found = []
    for rel in record["images"]:
        with Image.open(os.path.join(artifact_folder, rel)) as image:
            image.load()
            found.append(image.copy())
    return found


# The columns TRL's vision collators read, by format: SFT reads a conversation, DPO a preference pair.
COLUMNS = {"preference": ("prompt", "chosen", "rejected", "images")}
CONVERSATION = ("messages", "images")


def image_split(ctx, address: str, folder: str, split: str, allowed: tuple):
    """One split of an images target as a `datasets.Dataset` of TRL's vision columns, its images opened
    (PIL), after checking the format is one this recipe trains on."""
    from datasets import Dataset

    from forgebuild.rules.model import training

    rows, fmt = training.dataset_rows(ctx, address, folder, split, allowed, noun="images target")
    columns = COLUMNS.get(fmt, CONVERSATION)
    records = [{**{key: row[key] for key in columns if key != "images"}, "images": open_images(folder, row)}
               for row in rows]
    return Dataset.from_list(records), fmt


def modality_problem(ctx, base_folder: str) -> str | None:
    """Image data for a text-only base, or text data for a vision-language one, found at build time
    (planning says so first wherever the Forgefile tells: common.modality_problems)."""
    from forgebuild.rules.model.common import IMAGES_NEED_VLM, VLM_NEEDS_IMAGES

    p = ctx.params
    images, vlm = p.data.startswith("images:"), is_vlm(base_folder)
    if images and not vlm:
        return IMAGES_NEED_VLM.format(data=p.data, base=p.base, recipe=p.recipe)
    if vlm and not images:
        return VLM_NEEDS_IMAGES.format(data=p.data, base=p.base, recipe=p.recipe)
    return None


def chat_template(image_token: str, eos_token: str) -> str:
    """forgebuild's own template for the models the vlm recipe builds: `user: ` and the turn's text on a
    line, an image part as the image token; `assistant:` on a line of its own, then the answer and eos in
    {% generation %} markers (TRL's assistant_only_loss trains on those alone). The answer starts a line
    rather than following a space: a byte-level BPE merges a space into the word after it (" red"), so a
    prompt ending in a space would end in a token the model never saw an answer follow. Content may be a
    string or a list of parts."""
    parts = ("{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image_token +
             "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}")
    text = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}" + parts + "{% endif %}")
    return ("{% for message in messages %}"
            "{% if message['role'] == 'assistant' %}{{ 'assistant:\\n' }}{% generation %}" + text + eos_token +
            "{% endgeneration %}{% else %}{{ message['role'] + ': ' }}" + text + "{% endif %}{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}")


def fine_tune(ctx, model, processor, base_address: str | None, formats: tuple,
              config: dict | None = None) -> None:
    """SFT of a vision-language model on the images target `data` (in one of `formats`) with TRL's SFTTrainer (the processor as
    its processing_class; full weights, or LoRA with the recipe's `lora`), then the artifact with the processor.
    The loss is on the assistant turns alone (the template's generation markers) unless completion_only = false."""
    from trl import SFTConfig, SFTTrainer

    from forgebuild.rules.model import training

    p = ctx.params
    data, fmt = image_split(ctx, p.data, ctx.inputs["data"], p.split, formats)
    evaluation = image_split(ctx, p.data, ctx.inputs["data"], p.eval_split, formats)[0] if p.eval_split else None
    args = training.trainer_args(ctx, SFTConfig, evaluating=evaluation is not None, max_length=p.max_length,
                                 packing=False, padding_free=False, assistant_only_loss=p.completion_only)
    lora = getattr(p, "lora", None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=evaluation,
                         processing_class=processor, peft_config=training.lora_config(lora) if lora else None)
    training.train(ctx, trainer)
    training.save_trained(ctx, trainer, processor, base_address,
                          config={**(config or {}), "format": fmt, "rows": len(data)})
