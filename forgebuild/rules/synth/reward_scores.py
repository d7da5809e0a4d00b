"""A reward-model target's score of each prompt + completion, for the curate rule's `reward_model`
verifier. Build-only: imports torch at the top.

The model is loaded as the `reward` recipe saves it and GRPO scores with it
(forgebuild/rules/model/grpo.py `load_reward_model`: AutoModelForSequenceClassification with one
output, its pad token set); texts are written as that recipe trained on them: a string prompt
followed by its completion, or a conversation through the tokenizer's chat template.
"""
from __future__ import annotations

import torch

BATCH = 16  # sequences per forward pass: a tiny classifier on CPU is fastest near this


def _text(tokenizer, prompt, completion: str) -> str:
    if isinstance(prompt, str):
        return prompt + completion
    messages = [*prompt, {"role": "assistant", "content": completion}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(m.get("content") or "" for m in messages)


def scores(ctx, folder: str, address: str, prompts: list, completions: list[str]) -> list[float]:
    from forgebuild.rules.model.grpo import load_reward_model

    model, tokenizer = load_reward_model(ctx, folder, address)
    limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    texts = [_text(tokenizer, p, c) for p, c in zip(prompts, completions)]
    found: list[float] = []
    with torch.inference_mode():
        for begin in range(0, len(texts), BATCH):
            batch = tokenizer(texts[begin:begin + BATCH], return_tensors="pt", padding=True, truncation=True,
                              max_length=min(limit, tokenizer.model_max_length))
            found += model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float().tolist()
    return found
