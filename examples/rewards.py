"""Reward functions for the example's GRPO stage. forgebuild hashes this file: editing it
retrains model:rl-v3 and nothing before it.

TRL calls a reward with the prompts, the completions and every other column of the
prompts dataset (here `answer`) as keyword arguments; it returns one float per completion.
"""


def exact_answer(completions, answer, **kwargs):
    """1 for the right number first, 0.5 for it anywhere, 0.1 for any digit: partial credit
    keeps the rewards of a group apart, and GRPO learns nothing from a group of equal rewards."""
    scores = []
    for completion, expected in zip(completions, answer):
        words = completion.split()
        if words and words[0].strip(".,") == expected:
            scores.append(1.0)
        elif expected in words:
            scores.append(0.5)
        else:
            scores.append(0.1 if any(ch.isdigit() for ch in completion) else 0.0)
    return scores
