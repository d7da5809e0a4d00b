"""import: a Hugging Face model folder already on disk (an open-weight base model) as a target.

    [model.llama]
    recipe = "import"
    path = "/models/Llama-3.2-1B"    # absolute, ~, or relative to the Forgefile; may be outside the project

The folder is content-hashed through the stat cache, so a 15 GB folder is read
once and then only stat()ed; its path never enters the key, so the same weights
in another place (another machine's /models) are the same target. The artifact is
a copy of the folder's files, checked to hold a config and weights, and a vision-language
model's folder to hold its processor too (what turns images and text into its inputs).
"""
from __future__ import annotations

import os
import shutil
from typing import Literal

from forgebuild.rules import runtime
from forgebuild.rules.model.common import Recipe

version = "1"
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
LEFT_OUT = (".git", ".cache")  # a clone's git objects and the hub's download cache are not the model


class Params(Recipe):
    recipe: Literal["import"]
    # Where the folder lies is not what it is: its content enters the key (as an external input), its path does not.
    path: str = runtime(..., description="the model folder (config.json, weights, tokenizer); may be outside "
                                         "the project. Its files' content is in the key, its path is not")


def inputs(params: Params) -> dict:
    return {}


def external_inputs(params: Params) -> dict:
    return {"path": params.path}


def environment(params) -> dict:
    return {"libraries": []}


def build(ctx) -> None:
    folder = ctx.inputs["path"]
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    if "config.json" not in names:
        raise ctx.bad_input(f"{ctx.params.path} is not a Hugging Face model folder: it has no config.json")
    if not any(n.endswith(WEIGHTS) for n in names) and not any(n.endswith(".index.json") for n in names):
        raise ctx.bad_input(f"{ctx.params.path} has no weights (*.safetensors or *.bin)")
    from forgebuild.rules.model import vision  # reads config.json only: an import needs no ML library

    if vision.is_vlm(folder) and not vision.has_processor(folder):
        model_type = vision.read_config(folder).get("model_type", "?")
        raise ctx.bad_input(f"{ctx.params.path} is a vision-language model ({model_type}) without its processor: "
                            f"save it into the folder with processor.save_pretrained (processor_config.json)")
    if "tokenizer.json" not in names and "tokenizer_config.json" not in names:
        ctx.log(f"note: {ctx.params.path} has no tokenizer; recipes built on it will need one")
    copied = 0
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in LEFT_OUT)
        for name in sorted(files):
            src = os.path.join(parent, name)
            dst = os.path.join(ctx.out, os.path.relpath(src, folder))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            # a copy, never a hardlink: the store makes its files read-only, and these are the user's
            shutil.copyfile(src, dst)
            copied += os.path.getsize(dst)
    ctx.metrics({"bytes": copied})
    ctx.log(f"imported {copied:,} bytes from {ctx.params.path}")
