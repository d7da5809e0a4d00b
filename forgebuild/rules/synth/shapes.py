"""The `curate` rule's shapes: verified samples turned into the records a trainer reads.

- prompt_completion: per prompt, the best passing sample (highest score, then lowest sample index);
- samples: every passing sample with a distinct completion (rejection-sampling fine-tuning);
- preference: chosen = the best passing sample, rejected = the lowest-ranked one (any failing sample
  ranks below every passing one), kept when their texts differ, with score_chosen and score_rejected;
- prompts: one row per prompt for RL (prompt, `answer` when the columns have one, the other columns,
  `pass_rate`), optionally only the prompts whose pass rate is in `pass_rate = [lo, hi]`.

A prompt that is a list of messages makes conversational records (the completion an assistant
message). The prompt row's columns are kept as extra columns, as a dataset's `keep`. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass

from forgebuild.rules.dataset import canonical, normal_content

# The dataset format each shape writes (docs/rules/dataset.md), which decides the trainers that read it.
FORMATS = {"prompt_completion": "prompt_completion", "samples": "prompt_completion", "preference": "preference",
           "prompts": "prompts"}
FIELDS = {"prompt_completion": ("prompt", "completion"), "preference": ("prompt", "chosen", "rejected",
                                                                         "score_chosen", "score_rejected"),
          "prompts": ("prompt", "answer", "pass_rate")}


@dataclass
class Judged:
    """One sample with its verdict: passed every verifier, and the number that ranks it."""
    sample: dict
    passed: bool
    score: float

    @property
    def rank(self) -> tuple:
        """Higher is better: passing first, then by score, then the earlier sample."""
        return (self.passed, self.score, -self.sample["sample"])


def by_prompt(judged: list[Judged]) -> list[list[Judged]]:
    groups: dict[int, list[Judged]] = {}
    for j in judged:
        groups.setdefault(j.sample["prompt_index"], []).append(j)
    return [groups[i] for i in sorted(groups)]


def _answer_of(prompt, completion):
    return [{"role": "assistant", "content": completion}] if isinstance(prompt, list) else completion


def _extras(sample: dict, fmt: str) -> dict:
    return {k: v for k, v in sample["columns"].items() if k not in FIELDS[fmt]}


def _same(a, b) -> bool:
    return canonical(normal_content(a)) == canonical(normal_content(b))


def _pair(best: Judged) -> dict:
    s = best.sample
    return {**_extras(s, "prompt_completion"), "prompt": s["prompt"], "completion": _answer_of(s["prompt"], s["completion"])}


def shape(name: str, judged: list[Judged], pass_rate: tuple[float, float] | None = None) -> tuple[list[dict], dict]:
    """(records in prompt order, {"kept": prompts kept, "dropped": {why: prompts}})."""
    rows, dropped = [], {}

    def drop(why: str) -> None:
        dropped[why] = dropped.get(why, 0) + 1

    for group in by_prompt(judged):
        passing = sorted((j for j in group if j.passed), key=lambda j: j.rank, reverse=True)
        if name == "prompts":
            rate = len(passing) / len(group)
            if pass_rate and not pass_rate[0] <= rate <= pass_rate[1]:
                drop("pass rate outside pass_rate")
                continue
            rows.append(_prompt_row(group[0].sample, rate))
            continue
        if not passing:
            drop("no passing sample")
        elif name == "prompt_completion":
            rows.append(_pair(passing[0]))
        elif name == "samples":
            distinct = []
            for j in sorted(passing, key=lambda j: j.sample["sample"]):
                if not any(_same(j.sample["completion"], d.sample["completion"]) for d in distinct):
                    distinct.append(j)
            rows += [_pair(j) for j in distinct]
        else:
            worst = min(group, key=lambda j: j.rank)
            if _same(passing[0].sample["completion"], worst.sample["completion"]):
                drop("no sample differing from the best")
                continue
            rows.append(_preference(passing[0], worst))
    return rows, {"kept": len({canonical(r["prompt"]) for r in rows}), "dropped": dropped}


def _preference(chosen: Judged, rejected: Judged) -> dict:
    s = chosen.sample
    return {**_extras(s, "preference"), "prompt": s["prompt"],
            "chosen": _answer_of(s["prompt"], s["completion"]),
            "rejected": _answer_of(s["prompt"], rejected.sample["completion"]),
            "score_chosen": float(chosen.score), "score_rejected": float(rejected.score)}


def _prompt_row(sample: dict, rate: float) -> dict:
    row = {**_extras(sample, "prompts"), "prompt": sample["prompt"], "pass_rate": rate}
    answer = sample["columns"].get("answer")
    if answer is not None:  # text, as a dataset's `answer` column (numbers written as text)
        row["answer"] = answer if isinstance(answer, str) else repr(answer)
    return row
