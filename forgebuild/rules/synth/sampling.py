"""Batched generation with transformers, each sample drawn with its own generator (build-only).

`model.generate` decodes greedily over scores that `OwnNoise` has turned into a draw: the
temperature-scaled log-probabilities, cut to the top-p nucleus, plus Gumbel noise from the row's own
`torch.Generator`. The argmax of log p + Gumbel is a sample from p (the Gumbel-max trick), and the
noise of row r is a function of r's seed alone, so a sample is the same whatever batch it lands in
and whatever else is in it (up to the floating-point differences of batched matrix products, which
decide a token only at a near-exact tie). Drawing per row costs about 2% against a plain
`generate(do_sample=True)` loop here (benchmarks/bench_synth.py).
"""
from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from forgebuild.rules.model import training

FINISHES = ("stop", "eos", "length")


class OwnNoise(LogitsProcessor):
    """Scores whose argmax is a sample at `temperature` from the top-p nucleus, row r drawn by its own generator."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            logp = nucleus(logp, self.top_p)
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])
        return logp - torch.log(-torch.log(uniform.clamp(min=1e-20, max=1 - 1e-7)))


def nucleus(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """`logp` with every token outside the smallest set holding `top_p` of the probability at -inf
    (the most likely token always stays)."""
    ordered, order = logp.sort(dim=-1, descending=True)
    probs = ordered.exp()
    outside = probs.cumsum(-1) - probs >= top_p
    return logp.scatter(-1, order, ordered.masked_fill(outside, float("-inf")))


class TransformersEngine:
    """The model and tokenizer of a generate target's `model`, loaded once for all its batches."""

    def __init__(self, ctx):
        training.prepare(ctx)  # threads, quiet libraries
        p = ctx.params
        folder = ctx.inputs["model"]
        self.model = training.load_model(ctx, folder, p.model)
        if training.is_moe(self.model.config):  # no router loss under generate(): see training.inference_config
            self.model.config.output_router_logits = False
        if not training.on_cpu(ctx):
            self.model = self.model.to("cuda")
        self.model.eval()
        self.tokenizer = training.load_tokenizer(folder)
        self.tokenizer.padding_side = "left"  # new tokens follow every prompt directly
        self.ctx, self.sampling = ctx, p.sampling
        self.pad = next((t for t in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if t is not None), 0)
        configured = self.model.generation_config.eos_token_id
        self.eos = {t for t in ([self.tokenizer.eos_token_id] + (configured if isinstance(configured, list)
                                                                  else [configured])) if t is not None}

    def render(self, prompt) -> tuple[str, bool]:
        return render(self.ctx, self.tokenizer, prompt)

    @torch.inference_mode()
    def complete(self, prompts: list[tuple[str, bool]], seeds: list[int]) -> list[tuple[str, str]]:
        """(completion, finish) per prompt: cut before the first stop string ("stop"), at the end of
        sequence ("eos"), or after max_new_tokens ("length")."""
        s = self.sampling
        device = next(self.model.parameters()).device
        # a templated text holds its special tokens already: adding a BOS again would double it
        ids = [self.tokenizer(text, add_special_tokens=not templated).input_ids for text, templated in prompts]
        encoded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=s.max_new_tokens,
                                  pad_token_id=self.pad, eos_token_id=sorted(self.eos) or None,
                                  stop_strings=s.stop or None)
        processors = LogitsProcessorList([OwnNoise(seeds, s.temperature, s.top_p, device)] if s.temperature > 0 else [])
        out = self.model.generate(**encoded, generation_config=config, logits_processor=processors,
                                  tokenizer=self.tokenizer if s.stop else None)
        return [self.finished(row) for row in out[:, encoded["input_ids"].shape[1]:].tolist()]

    def finished(self, tokens: list[int]) -> tuple[str, str]:
        ended = next((k for k, t in enumerate(tokens) if t in self.eos), None)
        text = self.tokenizer.decode(tokens[:ended], skip_special_tokens=True)
        cut = min((i for i in (text.find(stop) for stop in self.sampling.stop if stop) if i >= 0), default=None)
        if cut is not None:
            return text[:cut], "stop"
        return text, "eos" if ended is not None else "length"


def render(ctx, tokenizer, prompt) -> tuple[str, bool]:
    """The text the model reads, and whether the chat template made it: a list of messages through the
    template (and, with chat_template = true, a string as one user message); else the string as
    written, tokenized as training tokenized it (with the tokenizer's special tokens)."""
    setting = ctx.params.chat_template
    if isinstance(prompt, str) and setting is not True:
        return prompt, False
    if setting is False:
        raise ctx.bad_input("a prompt is a list of messages, but chat_template = false: set it to \"auto\" or "
                            "give string prompts")
    if not getattr(tokenizer, "chat_template", None):
        raise ctx.bad_input(f"{ctx.params.model}'s tokenizer has no chat template: give string prompts (and "
                            f"chat_template = \"auto\")")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True
