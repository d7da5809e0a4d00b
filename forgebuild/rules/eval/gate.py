"""A release gate's conditions: parsed by the eval rule while the Forgefile is validated and judged by
the eval's build. Standard library only: the planning path imports this module.

    ">= 0.6"                      fixed: the judged model's measured value against a number
    "<= 0.1%"                     fixed, as a percentage: "<= 0.1%" is "<= 0.001"
    "<= 0.1 * vocab"              fixed: against a multiple of the judged model's vocabulary size
    ">= model:base + 0.2 @ 95%"   relative: the one-sided 95% bound of the paired difference
    ">= parent - 0.02 @ 95%"        (judged - model:base, or judged - its parent) against the margin

A metric's value in the gate table is one condition or a list of them, all of which must hold.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
NUMBER = rf"[-+]?{UNSIGNED}"
OP = re.compile(r"^\s*(>=|<=|==|>|<)\s*(.*?)\s*$", re.S)
CONFIDENCE = re.compile(r"^(.*?)\s*@\s*(.*)$", re.S)
PERCENT = re.compile(rf"^({NUMBER})\s*%$")
FIXED = re.compile(rf"^({NUMBER})$")
VOCAB = re.compile(rf"^(?:({NUMBER})\s*\*\s*)?vocab$")
RELATIVE = re.compile(rf"^(parent|[a-z][a-z0-9_-]*:[A-Za-z0-9_][A-Za-z0-9_.-]*)\s*(?:([-+])\s*({UNSIGNED}))?$")
OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, ">": lambda v, t: v > t, "<": lambda v, t: v < t,
       "==": lambda v, t: v == t}
FORMS = ('write a number (">= 0.6", "<= 0.1%"), a multiple of the vocabulary size ("<= 0.1 * vocab"), or a model with a '
         'margin and a confidence (">= model:base + 0.2 @ 95%", ">= parent - 0.02 @ 95%")')


class GateError(ValueError):
    """A condition that does not parse; the message quotes it and says what to write."""


@dataclass(frozen=True)
class Condition:
    text: str
    op: str
    number: float  # fixed: the threshold; vocab: the multiplier; relative: the margin
    against: str | None = None  # None, "vocab", "parent" or "model:NAME"
    confidence: float | None = None  # relative: percent, 50 < c < 100

    @property
    def relative(self) -> bool:
        return self.against not in (None, "vocab")


def conditions(value) -> list[str]:
    """The conditions of one gate entry: a string is one, a list is each of its items."""
    return [value] if isinstance(value, str) else list(value)


def parse_condition(text: str) -> Condition:
    op_match = OP.match(text)
    if not op_match:
        raise GateError(f"'{text}' is not a condition: write e.g. \">= 0.6\" (>=, <=, >, <, ==, then a number)")
    op, rest = op_match.groups()
    confidence = None
    if m := CONFIDENCE.match(rest):
        rest, confidence = m.group(1), percent(text, m.group(2))
    if m := FIXED.match(rest):
        return fixed(text, op, float(m.group(1)), None, confidence)  # as before: ">= 1e999" is >= inf
    if m := PERCENT.match(rest):  # a share (contamination, accuracy) written as people say it
        return fixed(text, op, finite(text, m.group(1)) / 100, None, confidence)
    if m := VOCAB.match(rest):
        multiplier = finite(text, m.group(1) or "1")
        if multiplier <= 0:
            raise GateError(f"'{text}': the vocabulary size's multiplier must be above 0")
        return fixed(text, op, multiplier, "vocab", confidence)
    if m := RELATIVE.match(rest):
        return relative(text, op, m.group(1), finite(text, (m.group(2) or "+") + (m.group(3) or "0")), confidence)
    raise GateError(f"'{text}' is not a condition: after {op} {FORMS}")


def gate_conditions(metric: str, value) -> list[tuple[tuple, Condition | str]]:
    """(key, Condition) for each condition of one gate entry, or (key, message) for one that does not
    parse; the items of a list are keyed gate.METRIC[i]."""
    found = []
    for i, text in enumerate(conditions(value)):
        key = ("gate", metric) if isinstance(value, str) else ("gate", metric, i)
        try:
            found.append((key, parse_condition(text)))
        except GateError as e:
            found.append((key, str(e)))
    return found


def stated(row: dict) -> str:
    """A gate row's condition as the Forgefile wrote it; a multiple of the vocabulary with the number it
    came to ('<= 0.1 * vocab = 102.4'). What the log, the reports and a release's model card show."""
    text, threshold = str(row["condition"]), row.get("threshold")
    if (row.get("vocab_size") is not None and isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
            and math.isfinite(threshold)):
        text += f" = {threshold:g}"
    return text


def judged_models(params) -> list[str]:
    """The models an eval's gates judge: gate_models, else the last of models."""
    return params.gate_models or [params.models[-1]]


def fixed(text: str, op: str, number: float, against: str | None, confidence: float | None) -> Condition:
    if confidence is not None:
        raise GateError(f"'{text}': a confidence is for a condition against a model (model:NAME or parent); "
                        f"{'a number' if against is None else 'the vocabulary size'} is compared with the "
                        f"measured value: drop the '@'")
    return Condition(text, op, number, against)


def relative(text: str, op: str, against: str, margin: float, confidence: float | None) -> Condition:
    if against != "parent" and not against.startswith("model:"):
        raise GateError(f"'{text}': {against} is not a model: compare with model:NAME or parent")
    if op not in (">=", "<="):
        raise GateError(f"'{text}': a condition against a model takes >= or <= (the margin is held against a "
                        f"one-sided bound of the difference), not {op}")
    if confidence is None:
        raise GateError(f"'{text}' compares with {against} without a confidence: add e.g. \"@ 95%\"")
    return Condition(text, op, margin, against, confidence)


def percent(text: str, raw: str) -> float:
    m = PERCENT.match(raw.strip())
    value = float(m.group(1)) if m else None
    if value is None or not 50 < value < 100:
        raise GateError(f"'{text}': the confidence must be a percentage above 50 and below 100, e.g. \"@ 95%\"")
    return value


def finite(text: str, raw: str) -> float:
    value = float(raw)
    if value in (float("inf"), float("-inf")):  # "1e999": inf would pass or fail every model alike
        raise GateError(f"'{text}': {raw} is out of range for a number")
    return value


def tail_problem(condition: Condition, resamples: int) -> str | None:
    """A relative condition's bound is a percentile of `resamples` bootstrap differences: with fewer than
    10 of them beyond it (99% of the default 1000 leaves 10) it rests on a handful of draws."""
    beyond = resamples * (100 - condition.confidence) / 100
    if beyond >= 10 - 1e-9:
        return None
    needed = math.ceil(1000 / (100 - condition.confidence) - 1e-9)
    return (f"'{condition.text}': a {condition.confidence:g}% bound from {resamples} bootstrap resamples rests on "
            f"the {beyond:g} beyond it: set bootstrap to {needed} or more, or lower the confidence")
