"""report.md and report.html from an eval's report dict (the content of report.json).

Markdown is for a pull request: a PASS/FAIL header, then the gate and metric
tables (every measurement as value [95% interval] n=examples), a table per
matrix with two or more cells evaluated (each cell's swept values, read from its
address by cells.py, and metrics), the comparisons, what each model's training did
(each logged quantity's first against its last tenth: "reward rose from 0.210
to 0.470"), the models (with digests) and the benchmarks. HTML is one
self-contained file: the same tables and trends, inline CSS, and matplotlib
figures embedded as base64 PNG data URIs (a bar chart per benchmark metric
across models with 95% interval error bars; per such matrix, each metric against
each swept param, a point with its interval per cell and a line per combination
of the other swept params; and per model a small chart of each training
quantity its training_log.jsonl holds: the loss, DPO's reward margins and
accuracies, GRPO's reward per reward function, total
reward and KL); and a Contamination table (each model's upstream data against the
benchmarks' prompts, with the first matches); with image benchmarks, an Examples section (each
picture beside every model's answer, the pictures linked as the artifact's own samples/images/
files: the one thing the page reads beside itself). No scripts, no external URLs. Both are deterministic: the same
report gives the same bytes (no timestamps, PNGs saved without a Software tag,
a fixed matplotlib style).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly:
pyplot is never imported, so no GUI backend is ever chosen and no global figure
state is shared between builder threads.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import struct
import threading

from forgebuild.planning.matrix import format_value
from forgebuild.rules.eval.cells import chart, swept, sweeps
from forgebuild.rules.eval.contamination import is_metric, named
from forgebuild.rules.eval.gate import stated

MISSING = "—"
OPS = {">=": "≥", "<=": "≤", ">": ">", "<": "<", "==": "=", "!=": "≠"}
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
BAR_SIZE = (5.1, 3.2)      # inches, shown at 100 px per inch: two figures side by side on the page
PANEL_SIZE = (3.3, 2.4)    # three training panels to a row of the 1,120 px page
# The training quantities drawn per model when its log has them (TRL 1.16's names), in this order:
# the loss always; the DPO family's chosen-rejected reward margin and how often chosen wins; GRPO's
# total reward, each reward function's mean (`rewards/<name>/mean`) and the KL to the reference
# (logged only when beta > 0; online DPO logs it as objective/kl).
PANELS = ("loss", "rewards/margins", "rewards/accuracies", "reward", "rewards/.+/mean", "kl", "objective/kl")
DPI = 150                  # rendered at 1.5x for sharp text on high-density screens
_STYLE = {
    "svg.hashsalt": "forgebuild-eval-report",
    "font.family": "DejaVu Sans",
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "savefig.dpi": DPI,
    "savefig.facecolor": "white",
}
METRICS_NOTE = "Value [bootstrap 95% interval] n=examples it is the mean of (perplexity: documents)."
COMPARISONS_NOTE = "Difference B − A [paired bootstrap 95% interval] n=examples both models were scored on."
TRENDS = ("Each training quantity: the mean of its first tenth of logged steps against the mean of its last "
          "tenth (1 to 100 steps each); the charts draw the raw steps faint under that trailing mean.")
SWEEPS_NOTE = ("Each matrix with two or more of its cells evaluated: a row per cell, its values as its address names "
               "them, and each metric as value [bootstrap 95% interval] n=examples.")
SWEEP_CHARTS = ("Each metric against each param the cells sweep (two or more values), with its 95% interval "
                "as an error bar; a line per combination of the other swept params.")
CONTAMINATION_NOTE = ("Every corpus, dataset, curate and images target each model is built from, against the prompts "
                      "of the generate and choice benchmarks: a prompt is contaminated when it shares a run of {n} "
                      "words with a text, or, shorter than {n} words, equals a whole text or one line of one; an "
                      "example with images, when one of its images (by content digest) is in an images target. A "
                      "count of these examples, not an estimate: no interval.")
NOT_CHECKED = ("Not checked: {names} (a perplexity benchmark reads a corpus's holdout; an lm-eval benchmark's data lives "
               "in its task folder).")
EXAMPLES = 50              # examples per image benchmark shown in report.html; the samples hold them all
SMALL_SIDE, LARGE_SIDE = 96, 192   # px: an image's longer side is drawn between these
_PLOT_LOCK = threading.Lock()   # rc_context is process-global; builds run in threads


# ---------------------------------------------------------------- formatting

def _num(x, signed: bool = False) -> str:
    if x is None:
        return MISSING
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return ("+inf" if signed else "inf") if x > 0 else "-inf"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _interval_parts(entry: dict | None, key: str = "value", signed: bool = False) -> list[tuple[str, str]]:
    """[("", "0.410"), ("ci", "[0.300, 0.520]"), ("n", "n=80")]: the value, its 95% interval and the
    examples it is a mean over, each with its HTML class; the parts the entry lacks are left out."""
    if not entry:
        return [("", MISSING)]
    if entry.get(key) is None:
        parts = [("", MISSING)]
    else:
        parts = [("", _num(entry[key], signed))]
        if entry.get("low") is not None and entry.get("high") is not None:
            parts.append(("ci", f"[{_num(entry['low'], signed)}, {_num(entry['high'], signed)}]"))
    if isinstance(entry.get("n"), int) and not isinstance(entry.get("n"), bool):
        parts.append(("n", f"n={entry['n']}"))
    return parts


def _interval(entry: dict | None, key: str = "value", signed: bool = False) -> str:
    """'0.410 [0.300, 0.520] n=80'; '—' for no value."""
    return " ".join(text for _, text in _interval_parts(entry, key, signed))


def _gate_entry(report: dict, gate: dict) -> dict:
    """A gate with the n of the measurement it judged (report.json keeps n in results only)."""
    cell = _cell(report, gate.get("model"), gate.get("metric")) or {}
    return {"n": cell.get("n"), **gate}


def _threshold(gate: dict) -> str:
    """The condition as the Forgefile states it (a multiple of the vocabulary with its number:
    '<= 0.1 * vocab = 102.4'); a row without one (older reports): its operator as a sign and threshold."""
    if gate.get("condition"):
        return stated(gate)
    op = gate.get("op", "")
    t = gate.get("threshold")
    t = f"{t:g}" if isinstance(t, (int, float)) and not isinstance(t, bool) else str(t)
    return f"{OPS.get(op, op)} {t}"


def _paired(gate: dict) -> str:
    """A relative gate's paired difference against its model, the one-sided bound it was judged by and
    the pairs: '+0.320 vs model:base, 95% lower bound +0.250, n=200'; '' for a fixed gate."""
    if "bound" not in gate:
        return ""
    text = f"{_num(gate.get('diff'), signed=True)} vs {gate.get('against', MISSING)}"
    if gate.get("bound") is not None:
        text += f", {gate.get('confidence', 0):g}% {gate.get('side', '')} bound {_num(gate['bound'], signed=True)}"
    if isinstance(gate.get("pairs"), int):
        text += f", n={gate['pairs']}"
    return text


def _model_name(report: dict, model: str) -> str:
    """An ancestor the eval added (`ancestors = true`) says so: it was not listed in `models`."""
    return f"{model} (ancestor)" if model in (report.get("ancestors") or []) else model


def _metric_rows(report: dict) -> list[str]:
    """'benchmark.metric' for every benchmark metric in report order, then any extra metric found in results."""
    rows = [f"{b['name']}.{m}" for b in report.get("benchmarks", []) for m in b.get("metrics", [])]
    seen = set(rows)
    for model in report.get("models", []):
        for key in report.get("results", {}).get(model, {}):
            if key not in seen:
                seen.add(key)
                rows.append(key)
    return rows


def _charted(report: dict) -> list[str]:
    """The metrics drawn: a contamination rate is a count, shown in its table."""
    return [m for m in _metric_rows(report) if not is_metric(m)]


def _contamination_rows(report: dict) -> list[list[str]]:
    """model, benchmark, examples, contaminated, rate, data checked: a row per model and checked benchmark."""
    rows = []
    for model, found in (report.get("contamination") or {}).get("models", {}).items():
        data = ", ".join(found["data"]) or "none in its graph"
        # a model whose build reads no data was checked against nothing: not measured, never "0.00%"
        rows += [[model, name, str(b["examples"]), str(b["contaminated"]) if found["data"] else "—",
                  f"{100 * b['rate']:.2f}%" if found["data"] else "not measured", data]
                 for name, b in found["benchmarks"].items()]
    return rows


def _contamination_text(report: dict) -> tuple[str, str | None, dict[str, list[str]]]:
    """(the note, what was not checked or None, model -> its matches as lines)."""
    section = report["contamination"]
    skipped = NOT_CHECKED.format(names=", ".join(section["skipped"])) if section.get("skipped") else None
    return (CONTAMINATION_NOTE.format(n=section["ngram"]), skipped,
            {model: named(section, model) for model in section["models"]})


def _cell(report: dict, model: str, metric: str) -> dict | None:
    return report.get("results", {}).get(model, {}).get(metric)


def _verdict(report: dict) -> bool:
    return bool(report.get("passed", all(g.get("passed") for g in report.get("gates", []))))


def _gen_settings(report: dict) -> str:
    gen = report.get("generation") or {}
    return ", ".join(f"{k} = {gen[k]!r}" for k in gen)


def _samples(report: dict) -> list[tuple[str, str, str]]:
    out = []
    for model in report.get("models", []):
        for bench, path in (report.get("samples", {}).get(model) or {}).items():
            out.append((model, bench, path))
    return out


# ---------------------------------------------------------------- markdown

def _md(text) -> str:
    """A string safe inside a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_md(h) for h in header) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict, training_logs: dict[str, list[dict]] | None = None) -> str:
    models = report.get("models", [])
    gates = report.get("gates", [])
    passed = _verdict(report)
    title = str(report.get("title", "eval"))
    verdict = "✅ PASS" if passed else "❌ FAIL"
    n_fail = sum(1 for g in gates if not g.get("passed"))
    if not gates:
        summary = "No gates set."
    elif n_fail:
        summary = f"{n_fail} of {len(gates)} gates failed."
    else:
        summary = f"All {len(gates)} gates passed."
    out = [f"# {_md(title)}: {verdict}", "", summary, ""]

    out += ["## Gates", ""]
    if gates:
        paired = any("bound" in g for g in gates)   # the column only when a gate is relative
        out += _md_table(["metric", "model", "condition", "measured", *(["paired difference"] * paired), "result"],
                         [[g["metric"], g["model"], _threshold(g), _interval(_gate_entry(report, g)),
                           *([_paired(g)] * paired), "✅ PASS" if g.get("passed") else "❌ FAIL"] for g in gates],
                         ["l", "l", "l", "r", *(["r"] * paired), "l"])
    else:
        out.append("No gates.")

    out += ["", "## Metrics", "", METRICS_NOTE, ""]
    out += _md_table(["metric", *models],
                     [[metric, *(_interval(_cell(report, m, metric)) for m in models)]
                      for metric in _metric_rows(report)],
                     ["l", *("r" * len(models))])

    out += _md_sweeps(report)

    out += _md_contamination(report)

    out += ["", "## Comparisons", ""]
    comps = report.get("comparisons", [])
    if comps:
        out += [COMPARISONS_NOTE, ""]
        out += _md_table(["metric", "A", "B", "B − A", "significance"],
                         [[c["metric"], c["a"], c["b"], _interval(c, "diff", signed=True),
                           "significant" if c.get("significant") else "not significant"] for c in comps],
                         ["l", "l", "l", "r", "l"])
    else:
        out.append("No comparisons.")

    out += ["", "## Training", "", TRENDS]
    for model in models:
        out += ["", f"**{_md(model)}**", ""]
        out += [f"- {_md(t)}" for t in training_summary((training_logs or {}).get(model) or [])]

    out += ["", "## Models", ""]
    digests = report.get("model_digests", {})
    out += _md_table(["model", "digest"],
                     [[_model_name(report, m), f"`{digests[m][:12]}`" if digests.get(m) else MISSING]
                      for m in models], ["l", "l"])
    out += ["", "## Benchmarks", ""]
    out += _md_table(["benchmark", "kind", "examples", "metrics"],
                     [[b["name"], b.get("kind", ""), str(b.get("examples", MISSING)), ", ".join(b.get("metrics", []))]
                      for b in report.get("benchmarks", [])], ["l", "l", "r", "l"])

    gen = _gen_settings(report)
    samples = _samples(report)
    if gen or samples:
        out += ["", "## Details", ""]
    if gen:
        out.append(f"Generation: `{gen}`")
    if samples:
        if gen:
            out.append("")
        out.append("Per-example outputs:")
        out.append("")
        out += [f"- {_md(m)} / {_md(b)}: `{p}`" for m, b, p in samples]
    pictured = [b["name"] for b in report.get("benchmarks", []) if b.get("images")]
    if pictured:
        out += ["", f"Images ({_md(', '.join(pictured))}): each picture beside every model's answer in report.html "
                    f"(Examples); the pictures are in `samples/images/`."]
    return "\n".join(out) + "\n"


def _md_contamination(report: dict) -> list[str]:
    if not report.get("contamination"):
        return []
    note, skipped, matches = _contamination_text(report)
    out = ["", "## Contamination", "", note, ""]
    out += _md_table(["model", "benchmark", "examples", "contaminated", "rate", "data checked"],
                     _contamination_rows(report), ["l", "l", "r", "r", "r", "l"])
    if skipped:
        out += ["", skipped]
    for model, lines in matches.items():
        if lines:
            out += ["", f"Contaminated examples of {_md(model)}:", ""] + [f"- {_md(line)}" for line in lines]
    return out


def _sweep_rows(report: dict, cells: dict[str, dict]) -> tuple[list[str], list[list], list[str]]:
    """(param names, per cell [its values, then each metric's entry], metrics): a matrix's table."""
    names = list(dict.fromkeys(n for values in cells.values() for n in values))
    metrics = _metric_rows(report)
    rows = [[*(format_value(values[n]) if n in values else MISSING for n in names),
             *(_cell(report, address, m) for m in metrics)] for address, values in cells.items()]
    return names, rows, metrics


def _md_sweeps(report: dict) -> list[str]:
    """The Sweeps section: a table per matrix with two or more cells evaluated; nothing without one."""
    found = sweeps(report.get("models", []))
    if not found:
        return []
    out = ["", "## Sweeps", "", SWEEPS_NOTE]
    for group, cells in found.items():
        names, rows, metrics = _sweep_rows(report, cells)
        out += ["", f"**{_md(group)}**: {len(cells)} cells", ""]
        out += _md_table([*names, *metrics], [[*row[:len(names)], *map(_interval, row[len(names):])] for row in rows],
                         ["l"] * len(names) + ["r"] * len(metrics))
    return out


# ---------------------------------------------------------------- figures

def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(x: float) -> str:
    """A bar's value, short enough that neighbouring labels do not collide."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 100 else f"{x:.3f}"


def _bar_chart(report: dict, metric: str) -> tuple[str, tuple[float, float]]:
    """A bar per model with its 95% interval as an error bar; returns (base64 PNG, figure size)."""
    from matplotlib.figure import Figure

    models = report.get("models", [])
    n = len(models)
    size = (min(max(BAR_SIZE[0], 1.2 + 0.62 * n), 10.6), BAR_SIZE[1])
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    drawn = []          # (x, value, low end of its whisker, high end)
    for i, model in enumerate(models):
        cell = _cell(report, model, metric) or {}
        v, lo, hi = cell.get("value"), cell.get("low"), cell.get("high")
        if not _finite(v):
            ax.text(i, 0, "no value", ha="center", va="bottom", color="#888888", fontsize=8)
            continue
        err = None
        if _finite(lo) and _finite(hi):
            err = [[max(v - lo, 0.0)], [max(hi - v, 0.0)]]
        ax.bar(i, v, width=0.62, color=COLORS[i % len(COLORS)], yerr=err, capsize=5 if n <= 8 else 3,
               error_kw={"elinewidth": 1.2, "ecolor": "#333333"})
        drawn.append((i, v, min(v, lo) if err else v, max(v, hi) if err else v))
    bottom = min([d[2] for d in drawn] + [0.0])
    top = max([d[3] for d in drawn] + [0.0])
    if drawn and 0.0 <= bottom and top <= 1.0:      # a rate: keep the whole 0..1 scale
        ax.set_ylim(0, 1.12)
        pad = 0.015
    else:
        span = (top - bottom) or 1.0
        ax.set_ylim(bottom - (0.14 * span if bottom < 0 else 0.0), top + (0.14 * span if top > 0 else 0.04 * span))
        pad = 0.015 * span
    if bottom < 0:
        ax.axhline(0, color="#555555", linewidth=0.8)
    if n <= 10:         # beyond that the table carries the numbers
        for i, v, low, high in drawn:
            if v >= 0:
                ax.text(i, high + pad, _label(v), ha="center", va="bottom", fontsize=8 if n <= 5 else 7)
            else:
                ax.text(i, low - pad, _label(v), ha="center", va="top", fontsize=8 if n <= 5 else 7)
    labels = [_short(m) for m in models]
    slanted = sum(len(s) for s in labels) > 6.5 * size[0] or any(len(s) > 16 for s in labels)
    ax.set_xticks(list(range(n)), labels, rotation=30 if slanted else 0, ha="right" if slanted else "center",
                  rotation_mode="anchor" if slanted else "default")
    ax.set_xlim(-0.6, n - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_title(metric)
    return _png(fig), size


def _short(model: str) -> str:
    text = str(model)
    text = text[len("model:"):] if text.startswith("model:") and len(text) > len("model:") else text
    return text if len(text) <= 28 else text[:27] + "…"


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of every row with a finite `key` (a row without a step: its index)."""
    steps, values = [], []
    for i, row in enumerate(rows or []):
        if isinstance(row, dict) and _finite(row.get(key)):
            step = row.get("step", i)
            steps.append(step if _finite(step) else i)
            values.append(row[key])
    return steps, values


def _panel_keys(rows: list[dict]) -> list[str]:
    """The training quantities a log holds, in PANELS order (per-function rewards in log order);
    a quantity logged only at evaluation (eval_KEY) still gets its panel."""
    logged = []
    for row in rows or []:
        if isinstance(row, dict):
            for key, value in row.items():
                name = key[len("eval_"):] if key.startswith("eval_") else key
                if _finite(value) and name not in logged:
                    logged.append(name)
    return [k for pattern in PANELS for k in logged if re.fullmatch(pattern, k)]


def _window(n: int) -> int:
    """Steps per trailing mean and per first/last summary window: a tenth of the run, 1 to 100."""
    return max(1, min(100, n // 10))


def _trailing_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _amount(x: float) -> str:
    """A trend's number: as a bar label, but a KL of 0.0004 is not '0.000'."""
    return f"{x:.2g}" if x and abs(x) < 0.01 else _label(x)


def _span(steps: list) -> str:
    """'1–10' for the window's first and last step; '40' for a window of one."""
    text = [f"{s:g}" if isinstance(s, float) else str(s) for s in (steps[0], steps[-1])]
    return text[0] if text[0] == text[-1] else f"{text[0]}–{text[1]}"


def training_trends(rows: list[dict]) -> dict[str, dict]:
    """quantity -> {"first", "last", "window", "first_steps", "last_steps", "n"} for each panel quantity
    (and its eval_ twin) a training log holds: the mean of its first and of its last tenth of logged steps
    (1 to 100 steps each), the steps each window spans, and how many steps logged it. JSON-ready: what
    a test or report.json can hold, and what the report's sentences are made from."""
    found = {}
    for key in _panel_keys(rows):
        for name in (key, f"eval_{key}"):
            steps, values = _series(rows, name)
            if values:
                w = _window(len(values))
                found[name] = {"first": sum(values[:w]) / w, "last": sum(values[-w:]) / w, "window": w,
                               "first_steps": [steps[0], steps[w - 1]], "last_steps": [steps[-w], steps[-1]],
                               "n": len(values)}
    return found


def _trend(name: str, t: dict) -> str:
    """'reward rose from 0.210 to 0.470 (mean of steps 1–150 vs 1351–1500)'."""
    if t["n"] == 1:
        return f"{name} was {_amount(t['first'])} (step {_span(t['first_steps'][:1])} only)"
    first, last = _amount(t["first"]), _amount(t["last"])
    verb = f"stayed at {first}" if first == last else \
        f"{'rose' if t['last'] > t['first'] else 'fell'} from {first} to {last}"
    a, b = _span(t["first_steps"]), _span(t["last_steps"])
    return f"{name} {verb} ({f'mean of steps {a} vs {b}' if t['window'] > 1 else f'step {a} vs step {b}'})"


def training_summary(rows: list[dict]) -> list[str]:
    """One trend sentence per quantity of training_trends; a line saying why when there is none."""
    if not rows:
        return ["no training log"]
    return [_trend(name, t) for name, t in training_trends(rows).items()] or \
        ["no loss or reward values in the training log"]


def _panel_chart(rows: list[dict], key: str, color: str) -> str:
    """One training quantity against step: the raw steps faint under a trailing mean over a tenth of
    the run (plain, with markers, when that is a single step), eval_KEY as open circles."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps, values = _series(rows, key)
    esteps, evalues = _series(rows, f"eval_{key}")
    fig = Figure(figsize=PANEL_SIZE, layout="constrained")
    ax = fig.add_subplot()
    window = _window(len(values))
    if window > 1:
        ax.plot(steps, values, color=color, linewidth=0.8, alpha=0.3, label="per step")
        ax.plot(steps, _trailing_mean(values, window), color=color, linewidth=1.6, label=f"mean of {window}")
    elif values:
        ax.plot(steps, values, color=color, linewidth=1.4, label="per step", marker="o" if len(values) <= 12 else None,
                markersize=3.5)
    if evalues:
        ax.plot(esteps, evalues, linestyle="none", marker="o", markersize=5, markerfacecolor="white",
                markeredgecolor="#d62728" if color != "#d62728" else "#1f77b4", markeredgewidth=1.5,
                label="eval")
    if "accurac" in key:        # a rate: the whole 0..1 scale
        ax.set_ylim(-0.03, 1.03)
    all_steps = steps + esteps
    if min(all_steps) == max(all_steps):        # one step: give it a readable axis around it
        ax.set_xlim(all_steps[0] - 1, all_steps[0] + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_title(key if len(key) <= 40 else key[:39] + "…")    # the figure's alt text has it whole
    if len(ax.get_lines()) > 1:     # a lone line is named by the title
        ax.legend(loc="best", frameon=False, fontsize=7)
    return _png(fig)


def sweep_charts(report: dict) -> list[tuple[str, dict[str, dict], list[dict]]]:
    """(matrix address, its cells, the data of each chart) per matrix with two or more cells evaluated:
    a chart per metric and per param with two or more values (cells.chart), metrics outermost."""
    results = report.get("results", {})
    return [(group, cells, [data for metric in _charted(report) for param in swept(cells)
                            if (data := chart(results, cells, metric, param))])
            for group, cells in sweeps(report.get("models", [])).items()]


def _dodge(data: dict, line: int) -> float:
    """How far a line's points sit beside the value (a fraction of a step on a category axis, of the
    span on a numeric one: in decades on a log axis), so that overlapping intervals stay apart."""
    k = len(data["lines"])
    if k == 1:
        return 0.0
    xs = [x for x, _ in data["ticks"]]
    span = 1.0 if not data["numeric"] else (
        math.log10(max(xs) / min(xs)) if data["log"] else (max(xs) - min(xs)) or 1.0)
    return (line - (k - 1) / 2) * min(0.25 / k, 0.06) * (span if data["numeric"] else 4)


def _sweep_chart(data: dict) -> str:
    """A metric against a swept param: a point per cell with its 95% interval, a line per combination
    of the other swept params (named in the legend), the swept values as the ticks."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=BAR_SIZE, layout="constrained")
    ax = fig.add_subplot()
    if data["log"]:
        ax.set_xscale("log")
    for i, line in enumerate(data["lines"]):
        shift = _dodge(data, i)
        xs = [p["x"] * 10 ** shift if data["log"] else p["x"] + shift for p in line["points"]]
        ys = [p["value"] for p in line["points"]]
        err = [[max(p["value"] - p["low"], 0.0) if p["low"] is not None else 0.0 for p in line["points"]],
               [max(p["high"] - p["value"], 0.0) if p["high"] is not None else 0.0 for p in line["points"]]]
        ax.errorbar(xs, ys, yerr=err, color=COLORS[i % len(COLORS)], marker="o", markersize=4.5, capsize=4,
                    elinewidth=1.1, linewidth=1.4, linestyle="-" if line["joined"] else "none",
                    label=line["label"] or None)
    ticks = data["ticks"]
    if len(ticks) <= 12 or not data["numeric"]:     # beyond 12 numbers the axis picks its own ticks
        labels = [label for _, label in ticks]
        slanted = sum(len(t) for t in labels) > 40
        ax.set_xticks([x for x, _ in ticks], labels, rotation=30 if slanted else 0,
                      ha="right" if slanted else "center")
        ax.xaxis.set_minor_locator(NullLocator())
    if not data["numeric"]:
        ax.set_xlim(-0.5, len(ticks) - 0.5)
    ax.set_xlabel(data["param"] + (" (log scale)" if data["log"] else ""))
    ax.set_title(f"{data['metric']} against {data['param']}")
    if any(line["label"] for line in data["lines"]):
        ax.legend(loc="best", frameon=False, fontsize=7)
    return _png(fig)


# ---------------------------------------------------------------- html

CSS = """
:root { color-scheme: light; }
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1b1f24;
       background: #f6f7f9; margin: 0; font-size: 14px; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 6px; word-break: break-word; }
h2 { font-size: 18px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e6ea; }
.verdict { display: inline-block; padding: 3px 12px; border-radius: 4px; font-weight: 700; color: #fff;
           letter-spacing: .04em; margin-right: 10px; vertical-align: middle; }
.verdict.pass { background: #1a7f37; } .verdict.fail { background: #cf222e; }
.summary { color: #57606a; margin: 6px 0 0; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
         font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
td.num span { white-space: nowrap; }
.ci { color: #57606a; }
.scroll { overflow-x: auto; max-width: 100%; }
table.stack .ci, table.stack .n { display: block; }
.n { color: #6e7781; }
tbody tr:nth-child(even) td { background: #fafbfc; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; background: #f0f2f5;
       padding: 1px 4px; border-radius: 3px; }
tr.pass td { background: #dafbe1 !important; } tr.fail td { background: #ffebe9 !important; }
td.ok { color: #1a7f37; font-weight: 700; } td.bad { color: #cf222e; font-weight: 700; }
td.sig { color: #0550ae; font-weight: 600; } td.nsig { color: #6e7781; }
.note { color: #57606a; font-size: 13px; margin: 4px 0; }
caption { caption-side: top; text-align: left; padding: 0 0 4px; }
.figs { display: flex; flex-wrap: wrap; gap: 14px; }
figure { margin: 0; border: 1px solid #e3e6ea; border-radius: 4px; padding: 4px; background: #fff; }
figure img { display: block; max-width: 100%; height: auto; }
h3 { font-size: 15px; margin: 20px 0 4px; word-break: break-word; }
ul.trends { margin: 4px 0 10px; padding-left: 20px; color: #33393f; }
img.example { image-rendering: pixelated; border: 1px solid #d0d7de; background: #fff; margin: 0 4px 4px 0; }
td.img { white-space: nowrap; }
.output { display: block; font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre-wrap; }
.scores { display: block; color: #57606a; font-size: 12px; } .none { color: #8c959f; font-style: italic; }
td.right { background: #dafbe1 !important; } td.wrong { background: #ffebe9 !important; }
"""


def escape(text) -> str:
    return html.escape(str(text), quote=True)


def _h_interval(entry: dict | None, key: str = "value", signed: bool = False) -> str:
    """The interval text as HTML: value, interval and n may wrap apart when a wide table needs room."""
    return " ".join(f'<span class="{c}">{escape(t)}</span>' if c else f"<span>{escape(t)}</span>"
                    for c, t in _interval_parts(entry, key, signed))


def html_table(header: list[str], rows: list[tuple[str, list[tuple[str, str]]]], caption: str | None = None,
                table_id: str | None = None, stack: bool = False) -> str:
    """rows: (tr class, [(td class, escaped cell html), ...]); stack puts each interval under its value."""
    attrs = (f' id="{escape(table_id)}"' if table_id else "") + (' class="stack"' if stack else "")
    parts = [f'<div class="scroll"><table{attrs}>']
    if caption:
        parts.append(f"<caption class=\"note\">{escape(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for tr_class, cells in rows:
        tr = f'<tr class="{escape(tr_class)}">' if tr_class else "<tr>"
        tds = "".join(f'<td class="{escape(c)}">{body}</td>' if c else f"<td>{body}</td>" for c, body in cells)
        parts.append(tr + tds + "</tr>")
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def _img(b64: str, alt: str, size: tuple[float, float]) -> str:
    w, h = round(size[0] * 100), round(size[1] * 100)
    return (f'<figure><img alt="{escape(alt)}" width="{w}" height="{h}" '
            f'src="data:image/png;base64,{b64}"></figure>')


def render_html(report: dict, training_logs: dict[str, list[dict]] | None, examples: list[dict] | None = None) -> str:
    """The page; `examples` (image_examples) adds the Examples section: each image beside its answers."""
    import matplotlib
    import matplotlib.style

    training_logs = training_logs or {}
    models = report.get("models", [])
    gates = report.get("gates", [])
    passed = _verdict(report)
    title = str(report.get("title", "eval"))
    metrics = _metric_rows(report)
    digests = report.get("model_digests", {})

    with _PLOT_LOCK, matplotlib.style.context("default"), matplotlib.rc_context(_STYLE):
        bars = [(metric, _bar_chart(report, metric)) for metric in _charted(report)]
        panels = {model: [(key, _panel_chart(training_logs.get(model) or [], key, COLORS[i % len(COLORS)]))
                          for key in _panel_keys(training_logs.get(model) or [])]
                  for i, model in enumerate(models)}
        swept_charts = [(group, cells, [(data, _sweep_chart(data)) for data in charts])
                        for group, cells, charts in sweep_charts(report)]

    n_fail = sum(1 for g in gates if not g.get("passed"))
    summary = ("no gates" if not gates else
               f"{n_fail} of {len(gates)} gates failed" if n_fail else f"all {len(gates)} gates passed")
    p = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}: {'PASS' if passed else 'FAIL'}</title>",
        f"<style>{CSS}</style>",
        "</head><body><main>",
        f'<h1><span class="verdict {"pass" if passed else "fail"}" id="verdict">{"PASS" if passed else "FAIL"}</span>'
        f"{escape(title)}</h1>",
        f'<p class="summary">{escape(summary)}; {len(models)} models, {len(report.get("benchmarks", []))} benchmarks.</p>',
    ]

    p.append("<h2>Gates</h2>")
    if gates:
        paired = any("bound" in g for g in gates)
        p.append(html_table(
            ["metric", "model", "condition", "measured [95% interval] n",
             *(["paired difference, one-sided bound, n"] * paired), "result"],
            [("pass" if g.get("passed") else "fail",
              [("", escape(g["metric"])), ("", escape(g["model"])), ("num", escape(_threshold(g))),
               ("num", _h_interval(_gate_entry(report, g))), *([("num", escape(_paired(g)))] * paired),
               ("ok" if g.get("passed") else "bad", "✓ PASS" if g.get("passed") else "✗ FAIL")])
             for g in gates], table_id="gates"))
    else:
        p.append('<p class="note">No gates.</p>')

    p.append("<h2>Metrics</h2>")
    p.append(html_table(
        ["metric", *models],
        [("", [("", escape(metric)), *(("num", _h_interval(_cell(report, m, metric))) for m in models)])
         for metric in metrics],
        caption=METRICS_NOTE, table_id="metrics", stack=len(models) > 3))
    p.append('<div class="figs">' + "".join(_img(b, f"{metric} across models", size) for metric, (b, size) in bars)
             + "</div>")

    p += _html_sweeps(report, swept_charts)
    p += _html_contamination(report)

    p.append("<h2>Comparisons</h2>")
    comps = report.get("comparisons", [])
    if comps:
        p.append(html_table(
            ["metric", "A", "B", "B − A [95% interval] n", "significance"],
            [("", [("", escape(c["metric"])), ("", escape(c["a"])), ("", escape(c["b"])),
                   ("num", _h_interval(c, "diff", signed=True)),
                   ("sig" if c.get("significant") else "nsig",
                    "significant" if c.get("significant") else "not significant")])
             for c in comps], table_id="comparisons"))
    else:
        p.append('<p class="note">No comparisons.</p>')

    p.append("<h2>Training</h2>")
    p.append(f'<p class="note">{escape(TRENDS)}</p>')
    for model in models:
        trends = training_summary(training_logs.get(model) or [])
        p.append(f"<h3>{escape(model)}</h3>")
        p.append('<ul class="trends">' + "".join(f"<li>{escape(t)}</li>" for t in trends) + "</ul>")
        if panels[model]:
            p.append('<div class="figs">' + "".join(_img(b, f"{model}: {key}", PANEL_SIZE)
                                                    for key, b in panels[model]) + "</div>")

    p += _html_examples(examples or [])

    p.append("<h2>Models and benchmarks</h2>")
    p.append(html_table(["model", "digest"],
                         [("", [("", escape(_model_name(report, m))),
                                ("", f"<code>{escape(digests[m])}</code>" if digests.get(m) else MISSING)])
                          for m in models], table_id="models"))
    p.append(html_table(["benchmark", "kind", "examples", "metrics"],
                         [("", [("", escape(b["name"])), ("", escape(b.get("kind", ""))),
                                ("num", escape(b.get("examples", MISSING))), ("", escape(", ".join(b.get("metrics", []))))])
                          for b in report.get("benchmarks", [])], table_id="benchmarks"))
    gen = _gen_settings(report)
    if gen:
        p.append(f'<p class="note">Generation: <code>{escape(gen)}</code></p>')
    samples = _samples(report)
    if samples:
        p.append('<p class="note">Per-example outputs:</p><ul class="note">')
        p += [f"<li>{escape(m)} / {escape(bn)}: <code>{escape(path)}</code></li>" for m, bn, path in samples]
        p.append("</ul>")
    p.append("</main></body></html>")
    return "\n".join(p) + "\n"


def _html_examples(examples: list[dict]) -> list[str]:
    """Per image benchmark, a table: each example's image(s), prompt and reference, then each model's
    output with its scores."""
    if not examples:
        return []
    p = ["<h2>Examples</h2>"]
    for found in examples:
        shown = len(found["rows"])
        count = f"the first {shown} of {found['total']} examples" if found["total"] > shown else f"all {shown} examples"
        note = (f"{count.capitalize()}: each image as the model saw it, the prompt, the reference, and each model's "
                f"output with its scores (1: right). Every example: samples/MODEL/{found['bench']}.jsonl.")
        p.append(f"<h3>{escape(found['bench'])}</h3>")
        p.append(html_table(
            ["image", "prompt", "reference", *found["models"]],
            [("", [("img", "".join(_example_img(path, w, h, row["prompt"]) for path, w, h in row["images"])),
                   ("", escape(row["prompt"])), ("", escape(_reference(row["reference"]))),
                   *((_verdict_class(scores), _output_cell(output, scores)) for output, scores in row["outputs"])])
             for row in found["rows"]],
            caption=note, table_id=f"examples-{found['bench']}"))
    return p


def _example_img(path: str, width: int, height: int, prompt: str) -> str:
    return (f'<img class="example" src="{escape(path)}" width="{width}" height="{height}" '
            f'alt="{escape(f"the image of: {prompt}")}">')


def _reference(value) -> str:
    return " | ".join(map(str, value)) if isinstance(value, list) else str(value)


def _output_cell(output, scores: dict) -> str:
    marks = " ".join(f"{m}={_score(v)}" for m, v in scores.items())
    shown = escape(output) if str(output).strip() else '<span class="none">(nothing)</span>'
    return f'<span class="output">{shown}</span><span class="scores">{escape(marks)}</span>'


def _score(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else MISSING


def _verdict_class(scores: dict) -> str:
    """The cell's colour by its first score: right, wrong or unscored."""
    first = next(iter(scores.values()), None)
    return "" if not isinstance(first, (int, float)) else "right" if first >= 1 else "wrong"


def image_examples(folder: str, report: dict, limit: int = EXAMPLES) -> list[dict]:
    """Per image benchmark: its first `limit` examples, each with its images ((path, width, height) as
    shown) and every model's (output, scores), read from the samples written in `folder`."""
    found = []
    for bench in report.get("benchmarks", []):
        if not bench.get("images"):
            continue
        models = [m for m in report.get("models", []) if bench["name"] in report.get("samples", {}).get(m, {})]
        rows = {m: _sample_rows(os.path.join(folder, report["samples"][m][bench["name"]])) for m in models}
        first = rows[models[0]] if models else []
        found.append({"bench": bench["name"], "models": models, "total": len(first), "rows": [
            {"prompt": row.get("prompt", ""), "reference": row.get("reference", ""),
             "images": [(rel, *_shown_size(os.path.join(folder, rel))) for rel in row.get("images", [])],
             "outputs": [(rows[m][i].get("output", ""), rows[m][i].get("scores", {})) for m in models]}
            for i, row in enumerate(first[:limit])]})
    return found


def _sample_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _shown_size(path: str) -> tuple[int, int]:
    """The size an image is drawn at: a small one scaled up (pixelated) to a longer side of 96 px, a
    large one down to 192 px, the aspect kept. Read from the PNG's header (the images target writes PNG)."""
    with open(path, "rb") as f:
        head = f.read(24)
    width, height = struct.unpack(">II", head[16:24])
    longer = max(width, height, 1)
    scale = SMALL_SIDE / longer if longer < SMALL_SIDE else min(1.0, LARGE_SIDE / longer)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _html_contamination(report: dict) -> list[str]:
    if not report.get("contamination"):
        return []
    note, skipped, matches = _contamination_text(report)
    p = ["<h2>Contamination</h2>"]
    p.append(html_table(["model", "benchmark", "examples", "contaminated", "rate", "data checked"],
                         [("fail" if row[3] != "0" else "", [("", escape(row[0])), ("", escape(row[1])),
                                                             *(("num", escape(c)) for c in row[2:5]), ("", escape(row[5]))])
                          for row in _contamination_rows(report)], caption=note, table_id="contamination"))
    if skipped:
        p.append(f'<p class="note">{escape(skipped)}</p>')
    for model, lines in matches.items():
        if lines:
            p.append(f'<p class="note">Contaminated examples of {escape(model)}:</p><ul class="note">')
            p += [f"<li>{escape(line)}</li>" for line in lines]
            p.append("</ul>")
    return p


def _html_sweeps(report: dict, drawn: list) -> list[str]:
    """The Sweeps section: per matrix its cells' table (id sweep-1, sweep-2...) and its charts."""
    if not drawn:
        return []
    p = ["<h2>Sweeps</h2>", f'<p class="note">{escape(SWEEP_CHARTS)}</p>']
    for i, (group, cells, charts) in enumerate(drawn, start=1):
        names, rows, metrics = _sweep_rows(report, cells)
        p.append(f"<h3>{escape(group)}: {len(cells)} cells</h3>")
        p.append(html_table([*names, *metrics],
                             [("", [*(("", escape(v)) for v in row[:len(names)]),
                                    *(("num", _h_interval(entry)) for entry in row[len(names):])]) for row in rows],
                             caption=SWEEPS_NOTE, table_id=f"sweep-{i}", stack=len(metrics) > 3))
        p.append('<div class="figs">' + "".join(
            _img(b64, f"{group}: {data['metric']} against {data['param']}", BAR_SIZE) for data, b64 in charts)
                 + "</div>")
    return p


def write_reports(folder: str, report: dict, training_logs: dict[str, list[dict]] | None) -> None:
    """Write folder/report.md and folder/report.html (each written whole, then renamed into place); the
    HTML shows the examples of the image benchmarks, read from the samples already in `folder`."""
    os.makedirs(folder, exist_ok=True)
    for name, text in (("report.md", render_markdown(report, training_logs)),
                       ("report.html", render_html(report, training_logs, image_examples(folder, report)))):
        path = os.path.join(folder, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
