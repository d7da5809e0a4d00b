"""Reward functions for the example's GRPO stage. forgebuild hashes this file: editing it
retrains model:rl-v3 and nothing before it.

TRL calls a reward with the prompts, the completions and every other column of the
prompts dataset (here `answer`, the three-digit sum) as keyword arguments; it returns one
float per completion.
"""


def _first_word(completion: str) -> str:
    words = completion.split()
    return words[0] if words else ""


def exact_answer(completions, answer, **kwargs):
    """1 when the completion's first word is the sum, else 0."""
    return [float(_first_word(c) == expected) for c, expected in zip(completions, answer)]


def digits_right(completions, answer, **kwargs):
    """The share of the sum's digits in their place: partial credit keeps a group's rewards
    apart when no completion is exact (GRPO learns nothing from a group of equal rewards)."""
    scores = []
    for completion, expected in zip(completions, answer):
        got = _first_word(completion)
        scores.append(sum(x == y for x, y in zip(got, expected)) / len(expected) if len(got) == len(expected) else 0.0)
    return scores
