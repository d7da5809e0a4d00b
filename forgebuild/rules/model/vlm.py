"""vlm: a small vision-language model assembled from configs (LLaVA: a vision tower, a projector and a
language model), optionally trained on an images target in the same stage.

    [model.vlm]
    recipe = "vlm"
    vision = { family = "siglip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }
    projector = { act = "gelu" }
    language = "model:base"          # a model target: its config, weights and tokenizer; or, from scratch:
    # text = { family = "llama", hidden = 64, layers = 2, heads = 4 }  with  tokenizer = "tokenizer:chars"
    data = "images:shapes"           # optional: SFT on image-text data (caption, vqa, messages)
    freeze = ["vision", "language"]  # train the projector alone (LLaVA's stage-1 alignment)
    train = { lr = 3e-3, steps = 150, batch_size = 16 }

The artifact is a `LlavaForConditionalGeneration` folder that `AutoModelForImageTextToText` loads, with
its processor (`AutoProcessor`: a PIL image processor, the tokenizer with the image token added, and
forgebuild's chat template). Without `data` the recipe only assembles: the vision tower and projector
are freshly initialised and nothing has learnt to look at an image yet.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.rules.model.common import Deps, Recipe, Train
from forgebuild.rules.model.pretrain import DENSE, Arch, arch_problems
from forgebuild.rules.model.sft import IMAGE_FORMATS

version = "1"
FORMATS = IMAGE_FORMATS  # what SFT trains on (sft.py): the vlm recipe's training is an SFT
PARTS = ("vision", "language")


class Vision(BaseModel):
    """`vision = { family = "siglip", hidden = 32, layers = 1, heads = 2, image_size = 32, patch_size = 8 }`"""
    model_config = ConfigDict(extra="forbid")
    family: Literal["siglip", "clip"] = Field(description="the vision tower: a SigLIP or a CLIP vision transformer")
    hidden: int = Field(64, ge=8, le=limits.WIDTH, description="hidden size of the vision transformer")
    layers: int = Field(2, ge=1, le=limits.DEPTH, description="vision transformer blocks")
    heads: int = Field(4, ge=1, le=limits.DEPTH, description="attention heads")
    intermediate: int | None = Field(None, ge=1, le=limits.WIDTH, description="MLP width; default 4 x hidden")
    image_size: int = Field(224, ge=8, le=limits.WIDTH, description="images are resized to image_size x image_size pixels")
    patch_size: int = Field(16, ge=1, le=limits.WIDTH, description="pixels per side of a patch: each patch is one image token")


class Projector(BaseModel):
    """`projector = { act = "gelu" }`: LLaVA's two-layer MLP from the vision features to the language model's width."""
    model_config = ConfigDict(extra="forbid")
    act: Literal["gelu", "relu", "silu", "gelu_pytorch_tanh"] = Field(
        "gelu", description="the activation between the projector's two linear layers")


class Params(Recipe):
    recipe: Literal["vlm"]
    vision: Vision = Field(description="the vision tower: see the `vision` table")
    projector: Projector = Field(default_factory=Projector, description="the projector: see the `projector` table")
    language: str | None = Field(
        None, description="a model target as the language model: its config, weights and tokenizer are copied in")
    text: Arch | None = Field(None, description="a language model from scratch (with `tokenizer`): as pretrain's `arch`")
    tokenizer: str | None = Field(None, description="with `text`: the tokenizer target")
    image_token: str = Field("<image>", min_length=1, pattern=r"^\S+$",
                             description="the token that stands for an image in the text; added if the tokenizer lacks it")
    data: str | None = Field(None, description="an images target (caption, vqa or messages) to train on; unset: assemble only")
    split: str = Field("train", description="the split of `data` to train on")
    eval_split: str | None = Field(None, description="a split for the eval loss every train.eval_every steps")
    max_length: int = Field(512, ge=8, le=limits.TOKENS, description="tokens per example, image tokens included")
    completion_only: bool = Field(True, description="loss on the assistant turns only")
    freeze: list[Literal["vision", "language"]] = Field(
        default_factory=list, description="parts that do not train: [\"vision\", \"language\"] trains the projector alone")
    train: Train = Field(default_factory=Train, description="the schedule: see the `train` table")


def environment(params) -> dict:
    return {"libraries": ["torch", "transformers", "trl", "safetensors", "datasets", "pillow"]}


def check(params: Params) -> list[tuple[str, str]]:
    problems = language_problems(params)
    v = params.vision
    if v.hidden % v.heads:
        problems.append(("vision.heads", f"hidden {v.hidden} is not a multiple of heads {v.heads}"))
    if v.image_size % v.patch_size:
        problems.append(("vision.patch_size", f"image_size {v.image_size} is not a multiple of patch_size {v.patch_size}"))
    repeated = sorted({part for part in params.freeze if params.freeze.count(part) > 1})
    if repeated:
        problems.append(("freeze", f"names {', '.join(repeated)} more than once"))
    if params.freeze and params.data is None:
        problems.append(("freeze", "freezes parts of a training run, and without `data` nothing trains"))
    if params.eval_split is not None and params.data is None:
        problems.append(("eval_split", "is a split of `data`, which is not set"))
    return problems


def language_problems(params: Params) -> list[tuple[str, str]]:
    if bool(params.language) == bool(params.text):
        return [("language", "give either language = \"model:NAME\" (a model target) or text = { family = ... } "
                             "with tokenizer = \"tokenizer:NAME\", not both" if params.language else
                             "no language model: give language = \"model:NAME\" or text = { family = ... } with "
                             "tokenizer = \"tokenizer:NAME\"")]
    if params.language and params.tokenizer:
        return [("tokenizer", f"the tokenizer comes with {params.language}; tokenizer goes with text")]
    if params.text and not params.tokenizer:
        return [("tokenizer", "a language model from scratch (text) needs tokenizer = \"tokenizer:NAME\"")]
    problems = [(f"text.{key.split('.', 1)[1]}", message) for key, message in arch_problems(params.text)] \
        if params.text else []
    if params.text and params.text.family not in DENSE:
        problems.append(("text.family", f"a vision-language model's language model is dense here "
                                        f"({', '.join(DENSE)}), not {params.text.family}"))
    return problems


def language_model_problems(params: Params, deps: dict) -> list[tuple[str, str]]:
    from forgebuild.rules.model.common import modality

    if params.language and modality(params.language, deps) == "image":
        return [("language", f"{params.language} is a vision-language model; `language` takes a text-only one")]
    return []


DEPS = Deps({"language": "model", "tokenizer": "tokenizer", "data": "images"}, (language_model_problems,),
            images={"data": FORMATS})


# ------------------------------------------------------------------ building

def build(ctx) -> None:
    from forgebuild.rules.model import training, vision

    training.prepare(ctx)
    p = ctx.params
    if p.language:
        if vision.is_vlm(ctx.inputs["language"]):
            raise ctx.bad_input(f"{p.language} is a vision-language model; `language` takes a text-only one")
        tokenizer = training.load_tokenizer(ctx.inputs["language"])
        language = training.load_model(ctx, ctx.inputs["language"], p.language)
    else:
        tokenizer, language = training.load_tokenizer(ctx.inputs["tokenizer"]), None
    added = add_image_token(tokenizer, p.image_token)
    model = assemble(ctx, p, tokenizer, language)
    if added and language is not None:
        ctx.log(f"added {p.image_token} to {p.language}'s tokenizer ({len(tokenizer)} tokens)")
    processor = new_processor(p, tokenizer)
    if p.data is None:
        training.save(ctx, model, processor, config=assembly_config(model))
        return
    freeze(model, p.freeze)
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    vision.fine_tune(ctx, model, processor, p.language, FORMATS, config={**assembly_config(model), "trainable": trainable})


def add_image_token(tokenizer, token: str) -> bool:
    """The image token as a special token (never split, never merged); whether it had to be added."""
    if token in tokenizer.get_vocab():
        return False
    tokenizer.add_tokens([token], special_tokens=True)
    return True


def assemble(ctx, p: Params, tokenizer, language):
    """A LlavaForConditionalGeneration; with `language`, its weights copied into the language model and
    the embeddings grown by the tokens the tokenizer gained (the image token)."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = language.config if language is not None else text_config(p, tokenizer)
    config = LlavaConfig(vision_config=vision_config(p.vision), text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(p.image_token),
                         image_seq_length=(p.vision.image_size // p.vision.patch_size) ** 2,
                         projector_hidden_act=p.projector.act, vision_feature_layer=-1,
                         vision_feature_select_strategy=select_strategy(p.vision),
                         tie_word_embeddings=text.tie_word_embeddings)
    torch.manual_seed(ctx.seed)  # the initial weights are the seed's, whatever ran before
    model = LlavaForConditionalGeneration(config).to(torch.float32)
    if language is not None:
        model.model.language_model.load_state_dict(language.model.state_dict())
        model.lm_head.load_state_dict(language.lm_head.state_dict())
        if len(tokenizer) != text.vocab_size:
            model.resize_token_embeddings(len(tokenizer))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # generate() stops at eos and pads with pad
        setattr(model.generation_config, key, getattr(tokenizer, key))
    ctx.log(f"llava ({p.vision.family} vision, {text.model_type} language): "
            f"{sum(t.numel() for t in model.parameters()):,} parameters")
    return model


def text_config(p: Params, tokenizer):
    from transformers import AutoConfig

    from forgebuild.rules.model.pretrain import config_values

    return AutoConfig.for_model(p.text.family, **config_values(p.text, tokenizer, p.max_length))


def vision_config(v: Vision):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    cls = SiglipVisionConfig if v.family == "siglip" else CLIPVisionConfig
    return cls(hidden_size=v.hidden, intermediate_size=v.intermediate or 4 * v.hidden, num_hidden_layers=v.layers,
               num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size, num_channels=3)


def select_strategy(v: Vision) -> str:
    # CLIP's tower puts a class token before the patches, which LLaVA's "default" strategy drops; SigLIP has none
    return "default" if v.family == "clip" else "full"


def new_processor(p: Params, tokenizer):
    """LlavaProcessor: a PIL image processor (no torchvision), the tokenizer, forgebuild's chat template
    (also the tokenizer's own, so the two never disagree)."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor, SiglipImageProcessorPil

    from forgebuild.rules.model.vision import chat_template

    side = p.vision.image_size
    if p.vision.family == "clip":
        images = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    else:
        images = SiglipImageProcessorPil(size={"height": side, "width": side})
    template = chat_template(p.image_token, tokenizer.eos_token)
    tokenizer.chat_template = template
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=p.vision.patch_size,
                          vision_feature_select_strategy=select_strategy(p.vision), chat_template=template,
                          image_token=p.image_token, num_additional_image_tokens=int(p.vision.family == "clip"))


def freeze(model, parts: list[str]) -> None:
    modules = {"vision": [model.model.vision_tower], "language": [model.model.language_model, model.lm_head]}
    for part in parts:
        for module in modules[part]:
            module.requires_grad_(False)


def assembly_config(model) -> dict:
    counts = {"vision": model.model.vision_tower, "projector": model.model.multi_modal_projector,
              "language": model.model.language_model}
    return {"parameters": {name: sum(t.numel() for t in module.parameters()) for name, module in counts.items()}}
