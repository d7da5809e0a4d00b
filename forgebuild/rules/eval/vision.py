"""Benchmarks with images: the records of an `images` target's split, and a vision-language model's
generations and choice log-likelihoods on them. Build-only (torch at the top, PIL and transformers
inside): the eval's build imports it for a benchmark whose data is an images target.

A record (docs/rules/images.md) holds `images` (paths relative to the artifact, in the order of the
image parts), `messages` in TRL's multimodal form (the prompt is every turn before the last assistant
turn; a preference record's `prompt`), `answer` and, for multiple choice, `choices`. The prompt is
rendered by the model's own processor: `apply_chat_template(prompt, add_generation_prompt=True)`
turns each `{"type": "image"}` part into the image token, and `processor(images=, text=)` expands it
into the image's patch tokens and its pixel values.
"""
from __future__ import annotations

import os
import re

import torch  # this module runs inside an eval's build process only

from forgebuild.rules.eval.scoring import (BenchmarkError, checked_choices, choice_answer, common_prefix, cut_at_stop,
                                           generate_answer, judged)
from forgebuild.rules.model.vision import load_processor, open_images
from forgebuild.rules.rows import json_kind, parse_line

IMAGE = re.compile(r"images/[0-9a-f]{64}\.png")  # the contract's path of a picture in an images artifact


# ------------------------------------------------------------------ records

def read_records(path: str, folder: str, kind: str, where: str, answer_field: str = "answer",
                 choices_field: str = "choices") -> list[dict]:
    """The rows of one split of an images artifact (`folder`), checked: {line, prompt (its text, for the
    report and the contamination check), messages (the prompt turns), images, answer[, choices]}."""
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:  # the data rules' reader: one message for any broken line
                record, problem = parse_line(raw.decode("utf-8"))
            except UnicodeDecodeError:
                record, problem = None, "not UTF-8 text"
            if problem:
                raise BenchmarkError(f"{where}:{number}: {problem}")
            rows.append(record_row(record, number, folder, kind, where, answer_field, choices_field))
    if not rows:
        raise BenchmarkError(f"{where} has no rows")
    return rows


def record_row(record: dict, number: int, folder: str, kind: str, where: str, answer_field: str,
               choices_field: str) -> dict:
    def fail(message: str):
        raise BenchmarkError(f"{where}:{number}: {message}")

    for field in ("images", answer_field) + ((choices_field,) if kind == "choice" else ()):
        if field not in record:
            fail(f"field '{field}' is missing")
    images = record["images"]
    if not isinstance(images, list) or not images or not all(isinstance(i, str) and i for i in images):
        fail(f"field 'images' must be a non-empty list of paths (got {json_kind(images)})")
    for rel in images:
        if not IMAGE.fullmatch(rel) or not os.path.isfile(os.path.join(folder, rel)):
            fail(f"image '{rel}' is not an image of the artifact (images/DIGEST.png)")
    prompt = prompt_turns(record, fail)
    row = {"line": number, "prompt": prompt_text(prompt), "messages": prompt, "images": images}
    if kind == "generate":
        return {**row, "answer": generate_answer(record[answer_field], answer_field, fail)}
    choices = checked_choices(record[choices_field], choices_field, fail)
    return {**row, "choices": choices, "answer": choice_answer(record[answer_field], choices, answer_field, fail)}


def prompt_turns(record: dict, fail) -> list[dict]:
    """The turns the model answers: a preference record's `prompt`, else `messages` without its last
    assistant turn (the reference)."""
    field = "prompt" if "chosen" in record else "messages"
    if field not in record:
        fail(f"field '{field}' is missing")
    turns = record[field]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        fail(f"field '{field}' must be a non-empty list of turns (got {json_kind(turns)})")
    if turns[-1].get("role") == "assistant":
        turns = turns[:-1]
    if not turns:
        fail(f"field '{field}' has no turn before the answer")
    return turns


def prompt_text(turns: list[dict]) -> str:
    """The text parts of the prompt's turns (what a reader and the contamination check see)."""
    parts = []
    for turn in turns:
        content = turn.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [c["text"] for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------ models

def load_model(folder: str):
    """A vision-language model folder's model, in float32."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)


def load(folder: str):
    """(model, processor) of a vision-language model folder."""
    return load_model(folder), load_processor(folder)


def images_of(folder: str, rows: list[dict]) -> list:
    """Every row's images as PIL images, in order (already in the declared mode and size)."""
    return [image for row in rows for image in open_images(folder, row)]


def encoded(processor, images: list, texts: list[str], device, side: str) -> dict:
    """The processor's tensors for these images and texts, padded on `side` (left to generate, right to
    score), the tokenizer's own setting restored."""
    tokenizer = processor.tokenizer
    before, tokenizer.padding_side = tokenizer.padding_side, side
    try:
        batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = before
    return {k: v.to(device) for k, v in batch.items()}


def prompts_of(processor, rows: list[dict]) -> list[str]:
    return [processor.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
            for row in rows]


# ------------------------------------------------------------------ generation

@torch.inference_mode()
def generate(model, processor, folder: str, rows: list[dict], max_new_tokens: int, stop: tuple,
             batch_size: int, temperature: float, seed: int) -> list[str]:
    """Each row's answer: greedy (batched, left padded) or, above temperature 0, sampled one row at a
    time from the seed + its index, so an output depends on neither the batch size nor the other rows."""
    model.eval()
    size = batch_size if temperature == 0 else 1
    outputs = []
    for start in range(0, len(rows), size):
        batch = rows[start:start + size]
        inputs = encoded(processor, images_of(folder, batch), prompts_of(processor, batch),
                         next(model.parameters()).device, "left")
        if temperature > 0:
            torch.manual_seed(seed + start)
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad_id(processor),
                             **sampling(temperature))
        width = inputs["input_ids"].shape[1]
        outputs += [cut_at_stop(processor.decode(o[width:], skip_special_tokens=True), stop) for o in out]
    return outputs


def sampling(temperature: float) -> dict:
    """generate()'s settings: greedy, or sampling from the whole distribution at `temperature` (top_k 0
    and top_p 1 override a generation_config's filters, as the text benchmarks sample: scoring._pick)."""
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def pad_id(processor) -> int:
    tokenizer = processor.tokenizer
    return next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)


# ------------------------------------------------------------------ multiple choice

@torch.inference_mode()
def choice_scores(model, processor, folder: str, rows: list[dict]) -> list[dict]:
    """Per row, as scoring.choice_scores: each choice's log-likelihood after the image and the prompt,
    the prediction, the length-normalised one (per character) and whether each is right. A row's
    choices are one batch (its image repeated), right padded, which a causal model never looks at."""
    model.eval()
    return [judged(row, choice_loglikelihoods(model, processor, folder, row)) for row in rows]


def choice_loglikelihoods(model, processor, folder: str, row: dict) -> list[float]:
    """The summed log-probability of each choice's tokens after the row's image(s) and prompt."""
    prompt = prompts_of(processor, [row])[0]
    device = next(model.parameters()).device
    images = images_of(folder, [row])
    context = processor(images=images, text=prompt, return_tensors="pt")["input_ids"][0].tolist()
    n = len(row["choices"])
    batch = encoded(processor, images * n, [prompt + c for c in row["choices"]], device, "right")
    logprobs = torch.log_softmax(model(**batch).logits.float(), dim=-1)
    found = []
    for i in range(n):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()  # right padded: a prefix
        start = max(1, min(common_prefix(context, ids), len(ids) - 1))  # the image tokens come first: >= 1
        targets = torch.tensor(ids[start:], device=device)
        found.append(float(logprobs[i, start - 1:len(ids) - 1].gather(-1, targets[:, None]).sum()))
    return found
