"""A release gate's condition (`">= 0.6"`): parsed by the eval rule while the Forgefile is validated
and judged by the eval's build. Standard library only: the planning path imports this module."""
from __future__ import annotations

import re

GATE = re.compile(r"^\s*(>=|<=|==|>|<)\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
OPS = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, ">": lambda v, t: v > t, "<": lambda v, t: v < t,
       "==": lambda v, t: v == t}


def parse_gate(text: str) -> tuple[str, float] | None:
    m = GATE.match(text)
    return (m.group(1), float(m.group(2))) if m else None
