"""The swept values an eval's models carry in their addresses, and what the report charts of them.

A matrix cell's address names its values (planning/matrix.py): `model:sft[lr=0.001,r=8]` is the
cell of `model:sft` with lr 0.001 and r 8. This module reads them back, so report.json can list them
(`cells`) and the report can chart each metric against each swept param. Standard library and the
matrix's own formatting only: it is data, drawn by report.py.
"""
from __future__ import annotations

import math
import re

from forgebuild.planning.matrix import format_value

ADDRESS = re.compile(r"^(?P<group>[^\[\]]+)\[(?P<values>[^\[\]]*)\]$")
INTEGER = re.compile(r"^[+-]?[0-9]+$")
# what repr() writes for a float (float() alone would also take '1_000', a name a matrix may hold)
FLOAT = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^[+-]?(inf|nan)$")
LOG_SPAN = 10  # values spanning 10x or more get a log axis: a learning-rate sweep's 1e-4..1e-2


def parse_value(text: str):
    """A value as an address wrote it, back as TOML gave it: 8, 0.001, 1e-05, True, or the name."""
    if text in ("true", "false"):
        return text == "true"
    if INTEGER.match(text):
        return int(text)
    return float(text) if FLOAT.match(text) else text


def cell_values(address: str) -> tuple[str, dict]:
    """(the matrix's address, {short name: value}); (address, {}) for a target that is no cell."""
    found = ADDRESS.match(address)
    if not found or not found["values"]:
        return address, {}
    pairs = [item.partition("=") for item in found["values"].split(",")]
    if any(not name or not sep or not text for name, sep, text in pairs):
        return address, {}
    return found["group"], {name: parse_value(text) for name, _, text in pairs}


def cells_of(models: list[str]) -> dict[str, dict]:
    """address -> its swept values, for each model that is a cell (report.json's `cells`)."""
    return {a: values for a in models for _, values in [cell_values(a)] if values}


def sweeps(models: list[str]) -> dict[str, dict[str, dict]]:
    """matrix address -> {cell address: values} for each matrix with two or more cells among models."""
    groups: dict[str, dict[str, dict]] = {}
    for address in models:
        group, values = cell_values(address)
        if values:
            groups.setdefault(group, {})[address] = values
    return {g: cells for g, cells in groups.items() if len(cells) >= 2}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def swept(cells: dict[str, dict]) -> dict[str, list]:
    """name -> its distinct values among the cells, for each name with two or more: numbers
    ascending, anything else in the order the cells give it (the matrix's order)."""
    found: dict[str, list] = {}
    for values in cells.values():
        for name, value in values.items():
            seen = found.setdefault(name, [])
            if not any(type(v) is type(value) and v == value for v in seen):
                seen.append(value)
    return {name: sorted(seen) if all(_number(v) for v in seen) else seen
            for name, seen in found.items() if len(seen) >= 2}


def log_axis(values: list) -> bool:
    """All positive numbers spanning LOG_SPAN times or more."""
    return all(_number(v) and v > 0 for v in values) and max(values) / min(values) >= LOG_SPAN


def chart(results: dict, cells: dict[str, dict], metric: str, param: str) -> dict | None:
    """The data of one chart: `metric` of each cell against its value of `param`, a line per
    combination of the other swept params; None when no cell has a finite value.

    {"param", "metric", "log", "numeric", "ticks": [(x, label)], "lines": [{"label", "joined",
    "points": [{"model", "x", "value", "low", "high"}]}]}; x is the value itself on a numeric axis and
    its index among the values otherwise. A line is joined when it has two or more points; when no
    combination has two (a search's cells, every other value different), every point is one
    unjoined line."""
    values = swept(cells)
    xs, others = values[param], [n for n in values if n != param]
    numeric = all(_number(v) for v in xs)
    at = {format_value(v): (v if numeric else i) for i, v in enumerate(xs)}
    lines: dict[tuple, list] = {}
    for address, cell in cells.items():
        entry = results.get(address, {}).get(metric) or {}
        if param not in cell or not _number(entry.get("value")):
            continue
        key = tuple(_order(values[n], cell.get(n)) for n in others)
        ends = [entry.get(k) if _number(entry.get(k)) else None for k in ("low", "high")]
        lines.setdefault(key, []).append({"model": address, "x": at[format_value(cell[param])],
                                          "value": entry["value"], "low": ends[0], "high": ends[1]})
    if not lines:
        return None
    drawn = [{"label": ", ".join(f"{n}={format_value(values[n][i])}" for n, i in zip(others, key) if i is not None),
              "joined": len(points) > 1, "points": sorted(points, key=lambda p: p["x"])}
             for key, points in sorted(lines.items(), key=lambda kv: [-1 if i is None else i for i in kv[0]])]
    if len(drawn) > 1 and not any(line["joined"] for line in drawn):
        drawn = [{"label": "each cell", "joined": False,
                  "points": sorted((p for line in drawn for p in line["points"]), key=lambda p: p["x"])}]
    return {"param": param, "metric": metric, "log": log_axis(xs), "numeric": numeric,
            "ticks": [(x, label) for label, x in at.items()], "lines": drawn}


def _order(values: list, value) -> int | None:
    """A value's index among a param's values; None for a cell without that param."""
    return next((i for i, v in enumerate(values) if type(v) is type(value) and v == value), None)
