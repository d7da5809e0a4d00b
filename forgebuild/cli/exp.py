"""`forgebuild exp [TARGET...]`: the cells of a sweep or a search as one table.

    forgebuild exp model:sft      a matrix: each cell's swept values, state, build time, its metrics
                                  (its build record's, and every eval's of it, with 95% intervals)
    forgebuild exp search:lr      a search: each trial's params, who proposed it, the objective with
                                  its interval, state and time; the best marked
    forgebuild exp                every matrix and search of the Forgefile

`--json`: one `cell` event per cell ({experiment, target, values, state, seconds, metrics: {name:
{value, low, high, n}}, by, rationale, best}), the summary last. What it reads: the plan, the build
records and the evals' report.json files; it builds nothing.
"""
from __future__ import annotations

import json
import os

from forgebuild.cli.session import Session
from forgebuild.errors import UsageError
from forgebuild.planning.matrix import format_value, short_names


def cmd_exp(args, session: Session, report) -> int:
    plan = session.plan
    searches = [a for a in plan.order if plan.targets[a].kind == "search"]
    names = args.targets or [*plan.groups, *searches]
    if not names:
        raise UsageError(f"{plan.display_name} has no matrix and no search")
    for name in names:
        if name in plan.groups:
            rows = matrix_rows(session, name)
        elif name in plan.targets and plan.targets[name].kind == "search":
            rows = search_rows(session, name)
        else:
            raise UsageError(f"'{name}' is neither a matrix nor a search; those of {plan.display_name}: "
                             f"{', '.join([*plan.groups, *searches]) or 'none'}")
        for row in rows:
            report({"event": "cell", "experiment": name, **row})
        if not args.json:
            print(table(name, rows))
    return 0


def matrix_rows(session: Session, group: str) -> list[dict]:
    cells = session.plan.groups[group]
    decisions = session.decide(cells)
    scored = eval_results(session, cells)
    rows = []
    for address in cells:
        record = _record(session, address)
        metrics = {k: {"value": v} for k, v in (record or {}).get("metrics", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update(scored.get(address, {}))
        rows.append({"target": address, "values": session.plan.targets[address].cell,
                     "state": decisions[address].state, "seconds": (record or {}).get("seconds"), "metrics": metrics})
    return rows


def search_rows(session: Session, address: str) -> list[dict]:
    from forgebuild.cli.search import history_of
    from forgebuild.rules import load_rule

    values = session.plan.targets[address].values
    history = history_of(session, values) if values["trials"] else []
    metric = values["objective"]["metric"]
    rows = []
    for trial, found in zip(values["trials"], history):
        record = _record(session, trial["target"])
        judged = {"value": found["value"], **{k: found.get(k) for k in ("low", "high", "n") if found.get(k) is not None}}
        rows.append({"target": trial["target"], "values": trial["params"],
                     "state": "built" if found["status"] == "complete" else found["status"],
                     "seconds": (record or {}).get("seconds"), "metrics": {metric: judged} if found["value"] is not None else {},
                     "by": trial.get("by"), "rationale": trial.get("rationale"), "best": False})
    best = load_rule("search").best_of([found["value"] for found in history], values["objective"]["goal"])
    if best is not None:
        rows[best]["best"] = True
    return rows


def eval_results(session: Session, cells: list[str]) -> dict:
    """cell -> {"EVAL BENCH.METRIC": {value, low, high, n}} from every built eval that scored it."""
    wanted, found = set(cells), {}
    plan = session.plan
    evals = [a for a in plan.order if plan.targets[a].kind == "eval" and wanted & set(plan.targets[a].deps)]
    decisions = session.decide(evals) if evals else {}
    for address in evals:
        d = decisions[address]
        if d.state != "fresh":
            continue
        try:
            with open(os.path.join(session.workspace.artifact_dir(d.digest), "report.json"), encoding="utf-8") as f:
                results = json.load(f).get("results") or {}
        except (OSError, ValueError):
            continue
        label = address.split("[", 1)[0].split(":", 1)[1]  # an eval cell of this cell: its table's name
        for cell in wanted & set(results):
            for metric, stat in results[cell].items():
                found.setdefault(cell, {})[f"{label} {metric}"] = {k: stat.get(k) for k in ("value", "low", "high", "n")}
    return found


def _record(session: Session, address: str) -> dict | None:
    from forgebuild.cli.query import _record_for

    return _record_for(session, address)


# ------------------------------------------------------------------ the table

def table(name: str, rows: list[dict]) -> str:
    if not rows:
        return f"{name}: no cells yet"
    paths = list(dict.fromkeys(p for r in rows for p in r["values"]))
    short = short_names(paths)
    metrics = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    head = [*(short[p] for p in paths), "state", "seconds", *metrics]
    if any(r.get("by") for r in rows):
        head.append("by")
    body = []
    for r in rows:
        line = [format_value(r["values"][p]) if p in r["values"] else "" for p in paths]
        line += [r["state"] + (" *" if r.get("best") else ""),
                 f"{r['seconds']:.1f}" if isinstance(r.get("seconds"), (int, float)) else ""]
        line += [_shown(r["metrics"].get(m)) for m in metrics]
        if "by" in head:
            line.append(r.get("by") or "")
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = [f"{name}: {len(rows)} cells" + ("  (* best)" if any(r.get("best") for r in rows) else "")]
    for line in [head, *body]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip())
    return "\n".join(lines)


def _shown(stat: dict | None) -> str:
    if not stat or stat.get("value") is None:
        return ""
    text = f"{stat['value']:.4g}"
    if stat.get("low") is not None and stat.get("high") is not None:
        text += f" [{stat['low']:.3g}, {stat['high']:.3g}]"
    return text
