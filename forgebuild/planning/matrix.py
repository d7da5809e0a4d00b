"""Matrices: one Forgefile table that stands for a grid of targets, each an ordinary target.

    [model.sft-v1]
    matrix = { "train.lr" = [1e-3, 3e-4], "lora.r" = [8, 16] }   # 4 cells

    [eval.sweep]
    models = ["model:sft-v1"]            # in an array, a matrix's address means all its cells

    [eval.per-cell]
    matrix_with = "model:sft-v1"         # one eval per cell: eval:per-cell[lr=0.001,r=8], ...
    models = ["model:sft-v1"]            # here: that cell's model

Each cell is the table with the matrix's values written into it, validated and keyed like any
target: its address names its values (`model:sft-v1[lr=0.001,r=8]`, by the last part of each
dotted key; by the whole key where two would read alike), so adding a value adds cells and
leaves the others' keys, and their cached artifacts, as they were. The cells of one matrix share
their seed (keys.py derives it from the address before `[`): two cells differ by their values
alone, which is what a sweep compares. A search (rules/search) makes cells the same way, from
proposals instead of a grid: `cell_name` and `with_values` are its entry points.

Reads raw TOML tables and writes new ones, before any rule validates them: standard library only.
A no-op build never runs it (the plan cache holds the cells).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

from forgebuild.planning.plan import CELL_VALUE

MATRIX, WITH = "matrix", "matrix_with"
MAX_CELLS = 10_000  # a grid this big is a typo (a 10^4 sweep of model trainings is not a Forgefile's job)


@dataclass
class Cell:
    """One target a table stands for: the table itself (no matrix), or one cell of its grid."""

    name: str  # the target's name: "sft-v1", or "sft-v1[lr=0.001,r=8]"
    declared: str  # the table's name in the Forgefile
    body: dict  # the raw table, the cell's values written in, `matrix` and `matrix_with` removed
    values: dict = field(default_factory=dict)  # dotted param path -> value, this cell's (upstream's first)
    group: str | None = None  # the table's address when it is a grid
    paired: dict = field(default_factory=dict)  # matrix_with: the group's address -> this cell's cell of it


def format_value(value) -> str:
    """A value as an address shows it: 0.001, 1e-05, 8, true, a name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def short_names(paths: list[str]) -> dict[str, str]:
    """Each dotted path by its last part (`train.lr` -> `lr`), or whole where two would read alike."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: (short if last.count(short) == 1 else p) for p, short in zip(paths, last)}


def cell_name(declared: str, values: dict) -> str:
    """`sft-v1[lr=0.001,r=8]`: the values in the order the matrix wrote them."""
    names = short_names(list(values))
    return f"{declared}[{','.join(f'{names[p]}={format_value(v)}' for p, v in values.items())}]"


def with_values(body: dict, values: dict) -> dict:
    """A copy of the raw table with each dotted path set (tables made where missing)."""
    body = copy.deepcopy(body)
    for path, value in values.items():
        *tables, name = path.split(".")
        node = body
        for table in tables:
            node = node.setdefault(table, {})
            if not isinstance(node, dict):
                raise ValueError(f"'{table}' is not a table")
        node[name] = value
    return body


# ------------------------------------------------------------------ a table's own grid

def grid_problems(matrix) -> list[tuple[list, str]]:
    """(key path inside `matrix`, message) for every way `matrix` is unusable."""
    if not isinstance(matrix, dict) or not matrix:
        return [([], 'expected a table of arrays, e.g. { "train.lr" = [1e-3, 3e-4] }')]
    found, cells = [], 1
    for path, values in matrix.items():
        if path in (MATRIX, WITH, "resources") or not all(path.split(".")):
            found.append(([path], f"'{path}' cannot be swept: name a param, e.g. \"train.lr\""))
        elif not isinstance(values, list) or not values:
            found.append(([path], "expected a non-empty array of values"))
        else:
            bad = next((v for v in values if isinstance(v, (dict, list))
                        or (isinstance(v, str) and not CELL_VALUE.match(v))), None)
            if bad is not None:
                found.append(([path], "a swept value must be a number, true/false or a name of letters, "
                                      f"digits and '_.+-', got {_shown(bad)}"))
            elif len({(type(v), v) for v in values}) != len(values):
                found.append(([path], "a value is listed twice"))
            cells *= len(values)
    if cells > MAX_CELLS:
        found.append(([], f"{cells} cells: at most {MAX_CELLS}"))
    return found


def _shown(value) -> str:
    return "a table" if isinstance(value, dict) else "an array" if isinstance(value, list) else repr(value)


def grid(matrix: dict) -> list[dict]:
    """Every combination, the first key varying slowest: [{"train.lr": 0.001, "lora.r": 8}, ...]."""
    paths = list(matrix)
    return [dict(zip(paths, combo)) for combo in itertools.product(*(matrix[p] for p in paths))]


# ------------------------------------------------------------------ expanding a Forgefile

def expand(data: dict, problem, searches=()) -> tuple[dict[str, dict[str, Cell]], dict[str, list[str]]]:
    """Every kind's tables as cells, and each grid's address -> its cells' addresses, in order.

    `problem(toml_path, message, address, key)` records a problem; a table with one keeps its
    declared name and no matrix, so its other problems are still found by validation. `searches`
    (planning/trials.py) add each recorded trial's cells of the search's target and objective.
    """
    tables: dict[str, dict[str, Cell]] = {}
    groups: dict[str, list[str]] = {}
    pending = []  # (kind, name, body, upstream): `matrix_with` tables, expanded once upstream is
    for kind, table in data.items():
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            continue  # forgefile.load says what is wrong with it
        tables.setdefault(kind, {})
        for name, body in table.items():
            upstream = body.get(WITH)
            if upstream is not None:
                pending.append((kind, name, body, upstream))
                continue
            _add(kind, _own_cells(kind, name, body, problem), tables, groups)
    while pending:  # a `with` chain: eval with model with corpus; each round expands what it can
        ready = [p for p in pending if p[3] in groups or not _declared_grid(p[3], pending)]
        if not ready:  # every one left waits on another: a loop
            for kind, name, _, upstream in pending:
                problem((kind, name, WITH), f"'{upstream}' is matrixed with this target: a loop",
                        f"{kind}:{name}", WITH)
            break
        for item in ready:
            pending.remove(item)
            kind, name, body, upstream = item
            _add(kind, _with_cells(kind, name, body, upstream, tables, groups, problem), tables, groups)
    for search in searches:
        _trial_cells(data, search, tables, problem)
    return tables, groups


def _add(kind: str, cells: list[Cell], tables: dict, groups: dict) -> None:
    for cell in cells:
        tables[kind][cell.name] = cell
        if cell.group:
            groups.setdefault(cell.group, []).append(f"{kind}:{cell.name}")


def _trial_cells(data: dict, search: dict, tables: dict, problem) -> None:
    """A search's trials as cells of its target and of its objective (which takes the trial's cell
    where it names the target; the objective may be the target itself). Not a grid: the target's
    address still means the target itself. Each trial learns its two cells' addresses."""
    found = []
    for key, address in (("target", search["target"]), ("objective.target", search["objective"])):
        kind, _, name = (address or "").partition(":")
        body = data.get(kind, {}).get(name) if isinstance(data.get(kind), dict) else None
        where = ("search", search["name"], *key.split("."))
        if not isinstance(body, dict):
            if address and ":" in address:  # another shape: the rule's validation says
                problem(where, f"no target '{address}'", search["search"], key)
            return
        if MATRIX in body or WITH in body:
            problem(where, f"'{address}' is a matrix: a search's target and objective are plain targets",
                    search["search"], key)
            return
        found.append((kind, name, dict(body)))
    (t_kind, t_name, t_body), (o_kind, o_name, o_body) = found
    same = search["target"] == search["objective"]
    if o_kind == "eval" and not same and search["target"] not in (o_body.get("models") or []):
        problem(("search", search["name"], "objective", "target"),
                f"{search['objective']} does not evaluate {search['target']}: its `models` must name it, so that "
                "each trial's eval scores the trial", search["search"], "objective.target")
        return
    for trial in search["trials"]:
        values = trial["params"]
        try:
            cell = Cell(cell_name(t_name, values), t_name, with_values(t_body, values), values, search["search"])
        except ValueError as e:
            problem(("search", search["name"], "record"), f"{search['record']}: cannot set {values}: {e}",
                    search["search"], "record")
            return
        trial["target"] = f"{t_kind}:{cell.name}"
        tables[t_kind].setdefault(cell.name, cell)
        if same:
            trial["objective"] = trial["target"]
            continue
        judge = Cell(cell_name(o_name, values), o_name, o_body, values, search["search"],
                     {search["target"]: trial["target"]})
        trial["objective"] = f"{o_kind}:{judge.name}"
        tables[o_kind].setdefault(judge.name, judge)


def _declared_grid(address: str, pending: list) -> bool:
    return any(f"{kind}:{name}" == address for kind, name, _, _ in pending)


def _own_grid(kind: str, name: str, body: dict, problem) -> list[dict] | None:
    """The combinations of the table's own `matrix` ([{}] without one), or None when it is unusable
    (each of its problems recorded)."""
    if MATRIX not in body:
        return [{}]
    found = grid_problems(body[MATRIX])
    for path, message in found:
        problem((kind, name, MATRIX, *path), message, f"{kind}:{name}", ".".join([MATRIX, *path]))
    return None if found else grid(body[MATRIX])


def _plain(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in (MATRIX, WITH)}


def _own_cells(kind: str, name: str, body: dict, problem) -> list[Cell]:
    """The table's cells; the table itself when it has no usable matrix (validation still reads it)."""
    plain = _plain(body)
    if MATRIX in body and (combos := _own_grid(kind, name, body, problem)):
        cells = _cells(kind, name, plain, combos, problem)
        if cells:
            return cells
    return [Cell(name, name, plain)]


def _cells(kind: str, name: str, plain: dict, combos: list[dict], problem, paired=None, named=None) -> list[Cell]:
    """A cell per combination of this table's own values; `named`: each cell's upstream values, which
    name it (matrix_with) but are the upstream table's params, never written into this one."""
    cells = []
    for i, values in enumerate(combos):
        try:
            body = with_values(plain, values)
        except ValueError as e:
            problem((kind, name, MATRIX), f"cannot set {next(iter(values))}: {e}", f"{kind}:{name}", MATRIX)
            return []
        shown = {**named[i], **values} if named else values
        cells.append(Cell(cell_name(name, shown), name, body, shown, f"{kind}:{name}",
                          paired[i] if paired else {}))
    return cells


def _with_cells(kind, name, body, upstream, tables, groups, problem) -> list[Cell]:
    plain = _plain(body)
    address = f"{kind}:{name}"
    if not isinstance(upstream, str) or upstream not in groups:
        if not isinstance(upstream, str):
            message = "expected the address of a target with a `matrix`"
        elif upstream.split(":", 1)[-1] in tables.get(upstream.split(":", 1)[0], {}):
            message = f"'{upstream}' is not a matrix: matrix_with names a target with a `matrix`"
        else:
            message = f"no target '{upstream}'"
        problem((kind, name, WITH), message, address, WITH)
        return [Cell(name, name, plain)]
    own = _own_grid(kind, name, body, problem) or [{}]
    up_kind = upstream.split(":", 1)[0]
    combos, paired, named = [], [], []
    for cell_address in groups[upstream]:
        up = tables[up_kind][cell_address.split(":", 1)[1]]
        for extra in own:
            combos.append(extra)
            named.append(up.values)
            paired.append({upstream: cell_address, **up.paired})
    return _cells(kind, name, plain, combos, problem, paired, named)


# ------------------------------------------------------------------ references to a grid

def substitute(value, groups: dict[str, list[str]], paired: dict[str, str], where: list, problem) -> object:
    """`value` with each grid's address replaced: in an array by all its cells (or, matrixed with
    it, by the one paired cell); elsewhere by the paired cell, and otherwise a problem: one string
    cannot name four models."""
    if isinstance(value, dict):
        return {k: substitute(v, groups, paired, [*where, k], problem) for k, v in value.items()}
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str) and (item in paired or item in groups):
                out.extend([paired[item]] if item in paired else groups[item])
            else:
                out.append(substitute(item, groups, paired, [*where, i], problem))
        return out
    if isinstance(value, str) and value in paired:
        return paired[value]
    if isinstance(value, str) and value in groups:
        cells = groups[value]
        problem(where, f"'{value}' is a matrix of {len(cells)} cells: name one (e.g. '{cells[0]}'), "
                       f"list it in an array to take them all, or write matrix_with = \"{value}\"")
    return value
