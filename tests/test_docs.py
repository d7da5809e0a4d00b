"""Every Forgefile key of the model rule is documented in docs/rules/model.md."""
from __future__ import annotations

import os

from forgebuild.rules.model import common
from forgebuild.rules.model import pretrain
from forgebuild.rules.model import reward_functions as rewards
from forgebuild.rules import model

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "rules", "model.md")


def test_every_model_key_is_documented():
    text = open(DOC, encoding="utf-8").read()
    models = [common.Recipe, common.Train, common.Lora, common.Launch, pretrain.Arch, rewards.Reward]
    models += [model.recipe_module(name).Params for name in model.RECIPES]
    missing = sorted({f"{m.__module__}.{m.__name__}.{key}" for m in models for key in m.model_fields
                      if f"`{key}`" not in text and key not in ("recipe",)})
    assert missing == []
    assert all(f"[`{name}`]" in text for name in model.RECIPES)


def test_every_eval_and_release_key_is_documented():
    from forgebuild.rules import eval as eval_rule
    from forgebuild.rules import release

    text = open(os.path.join(os.path.dirname(DOC), "eval.md"), encoding="utf-8").read()
    models = [eval_rule.Params, eval_rule.Benchmark, eval_rule.Generation, release.Params]
    missing = sorted(f"{m.__name__}.{key}" for m in models for key in m.model_fields if f"`{key}`" not in text)
    assert missing == []


def test_every_generate_key_is_documented():
    from forgebuild.rules import generate
    from forgebuild.rules.synth.prompts import Range, Template

    text = open(os.path.join(os.path.dirname(DOC), "generate.md"), encoding="utf-8").read()
    models = [generate.Params, generate.Sampling, Template, Range]
    missing = sorted(f"{m.__name__}.{key}" for m in models for key in m.model_fields if f"`{key}`" not in text)
    assert missing == []


def test_every_images_key_is_documented():
    from forgebuild.rules import images

    text = open(os.path.join(os.path.dirname(DOC), "images.md"), encoding="utf-8").read()
    missing = sorted([f"Params.{key}" for key in images.Params.model_fields if f"`{key}`" not in text]
                     + [f"image.{key}" for key in images.Limits.model_fields if f"`image.{key}`" not in text]
                     + [f"resize.{key}" for key in images.Size.model_fields if f"`resize.{key}`" not in text])
    assert missing == []
    assert all(f"| `{fmt}` |" in text for fmt in images.REQUIRED)  # each format's row in the Formats table
