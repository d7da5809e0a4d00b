"""Generation with vLLM on a GPU (build-only; `engine = "vllm"`).

The same contract as `sampling.TransformersEngine`: render a prompt, complete a batch with one seed
per sample. vLLM takes a seed per request, so a sample's randomness is again its own; its kernels
and sampler differ from transformers', so the samples are not bitwise those of the transformers
engine (the engine is in each sample's key: switching rebuilds, never mixes). Checked on a GPU by
benchmarks/bench_gpu.py, not by the CPU test suite.
"""
from __future__ import annotations

from vllm import LLM, SamplingParams

from forgebuild.rules.model import training


class VllmEngine:
    def __init__(self, ctx):
        import torch

        if not torch.cuda.is_available():
            raise ctx.failure('engine = "vllm" needs a GPU, and torch sees none here: use engine = "transformers"')
        folder = ctx.inputs["model"]
        self.ctx, self.sampling = ctx, ctx.params.sampling
        self.tokenizer = training.load_tokenizer(folder)
        self.llm = LLM(model=folder, tokenizer=folder, seed=ctx.seed, dtype="auto")

    def render(self, prompt) -> tuple[str, bool]:
        from forgebuild.rules.synth.sampling import render

        return render(self.ctx, self.tokenizer, prompt)

    def complete(self, prompts: list[tuple[str, bool]], seeds: list[int]) -> list[tuple[str, str]]:
        s = self.sampling
        params = [SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens,
                                 stop=s.stop or None, seed=seed) for seed in seeds]
        requests = [{"prompt_token_ids": self.tokenizer(text, add_special_tokens=not templated).input_ids}
                    for text, templated in prompts]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        return [finished(out.outputs[0]) for out in outputs]


def finished(output) -> tuple[str, str]:
    """vLLM's finish_reason is "stop" for both a stop string and the end of sequence; stop_reason tells
    them apart (the string, or None / a token id at the end of sequence)."""
    if output.finish_reason == "length":
        return output.text, "length"
    return output.text, "stop" if isinstance(output.stop_reason, str) else "eos"
