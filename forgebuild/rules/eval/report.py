"""report.md and report.html from an eval's report dict (the content of report.json).

Markdown is for a pull request: a PASS/FAIL header, then the gate, metric and
comparison tables, the models (with digests) and the benchmarks. HTML is one
self-contained file: the same tables, inline CSS, and matplotlib figures
embedded as base64 PNG data URIs (a bar chart per benchmark metric across
models with 95% interval error bars, and each model's training-loss curve from
its training_log.jsonl). No scripts, no external URLs. Both are deterministic:
the same report gives the same bytes (no timestamps, PNGs saved without a
Software tag, a fixed matplotlib style).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly:
pyplot is never imported, so no GUI backend is ever chosen and no global figure
state is shared between builder threads.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import threading

MISSING = "—"
OPS = {">=": "≥", "<=": "≤", ">": ">", "<": "<", "==": "=", "!=": "≠"}
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
BAR_SIZE = (5.1, 3.2)      # inches, shown at 100 px per inch: two figures side by side on the page
CURVE_SIZE = (5.1, 3.2)
SMOOTH_OVER = 60           # more loss rows than this: also draw a trailing mean
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


def _interval(entry: dict | None, key: str = "value", signed: bool = False) -> str:
    """'0.410 [0.300, 0.520]'; the bare value when there is no interval; '—' for no value."""
    if not entry or entry.get(key) is None:
        return MISSING
    text = _num(entry[key], signed)
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{_num(entry['low'], signed)}, {_num(entry['high'], signed)}]"
    return text


def _threshold(gate: dict) -> str:
    op = gate.get("op", "")
    t = gate.get("threshold")
    t = f"{t:g}" if isinstance(t, (int, float)) and not isinstance(t, bool) else str(t)
    return f"{OPS.get(op, op)} {t}"


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


def render_markdown(report: dict) -> str:
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
        out += _md_table(["metric", "model", "threshold", "measured", "result"],
                         [[g["metric"], g["model"], _threshold(g), _interval(g),
                           "✅ PASS" if g.get("passed") else "❌ FAIL"] for g in gates],
                         ["l", "l", "l", "r", "l"])
    else:
        out.append("No gates.")

    out += ["", "## Metrics", "", "Value with its bootstrap 95% interval.", ""]
    out += _md_table(["metric", *models],
                     [[metric, *(_interval(_cell(report, m, metric)) for m in models)]
                      for metric in _metric_rows(report)],
                     ["l", *("r" * len(models))])

    out += ["", "## Comparisons", ""]
    comps = report.get("comparisons", [])
    if comps:
        out += ["Difference B − A with its bootstrap 95% interval.", ""]
        out += _md_table(["metric", "A", "B", "B − A", "significance"],
                         [[c["metric"], c["a"], c["b"], _interval(c, "diff", signed=True),
                           "significant" if c.get("significant") else "not significant"] for c in comps],
                         ["l", "l", "l", "r", "l"])
    else:
        out.append("No comparisons.")

    out += ["", "## Models", ""]
    digests = report.get("model_digests", {})
    out += _md_table(["model", "digest"],
                     [[m, f"`{digests[m][:12]}`" if digests.get(m) else MISSING] for m in models], ["l", "l"])
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
    return "\n".join(out) + "\n"


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


def _curve_points(rows: list[dict]) -> tuple[list, list, list, list]:
    steps, losses, esteps, elosses = [], [], [], []
    for i, row in enumerate(rows or []):
        if not isinstance(row, dict):
            continue
        step = row.get("step", i)
        if not _finite(step):
            step = i
        if _finite(row.get("loss")):
            steps.append(step)
            losses.append(row["loss"])
        if _finite(row.get("eval_loss")):
            esteps.append(step)
            elosses.append(row["eval_loss"])
    return steps, losses, esteps, elosses


def _trailing_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _curve_chart(model: str, rows: list[dict], color: str) -> str | None:
    """Training loss against step (eval_loss as open circles); None when the log has neither."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps, losses, esteps, elosses = _curve_points(rows)
    if not losses and not elosses:
        return None
    fig = Figure(figsize=CURVE_SIZE, layout="constrained")
    ax = fig.add_subplot()
    if len(losses) > SMOOTH_OVER:
        # a noisy run hides its trend: the raw steps faint, a trailing mean over 1/40 of the run on top
        window = max(5, len(losses) // 40)
        ax.plot(steps, losses, color=color, linewidth=0.8, alpha=0.3, label="loss")
        ax.plot(steps, _trailing_mean(losses, window), color=color, linewidth=1.6, label=f"loss, mean of {window}")
    elif losses:
        ax.plot(steps, losses, color=color, linewidth=1.4, label="loss",
                marker="o" if len(losses) <= 12 else None, markersize=3.5)
    if elosses:
        ax.plot(esteps, elosses, linestyle="none", marker="o", markersize=5, markerfacecolor="white",
                markeredgecolor="#d62728" if color != "#d62728" else "#1f77b4", markeredgewidth=1.5, label="eval_loss")
    all_steps = steps + esteps
    if min(all_steps) == max(all_steps):        # one step: give it a readable axis around it
        ax.set_xlim(all_steps[0] - 1, all_steps[0] + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(str(model))
    ax.legend(loc="upper right", frameon=False, fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------- html

_CSS = """
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
table.stack .ci { display: block; }
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
.nolog { align-self: flex-start; color: #6e7781; font-style: italic; border: 1px dashed #d0d7de;
         padding: 10px 14px; border-radius: 4px; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _h_interval(entry: dict | None, key: str = "value", signed: bool = False) -> str:
    """The interval text as HTML: the value and its bracket may wrap apart when a wide table needs room."""
    text = _interval(entry, key, signed)
    value, sep, rest = text.partition(" ")
    if not sep:
        return f"<span>{_e(text)}</span>"
    return f'<span>{_e(value)}</span> <span class="ci">{_e(rest)}</span>'


def _html_table(header: list[str], rows: list[tuple[str, list[tuple[str, str]]]], caption: str | None = None,
                table_id: str | None = None, stack: bool = False) -> str:
    """rows: (tr class, [(td class, escaped cell html), ...]); stack puts each interval under its value."""
    attrs = (f' id="{_e(table_id)}"' if table_id else "") + (' class="stack"' if stack else "")
    parts = [f'<div class="scroll"><table{attrs}>']
    if caption:
        parts.append(f"<caption class=\"note\">{_e(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for tr_class, cells in rows:
        tr = f'<tr class="{_e(tr_class)}">' if tr_class else "<tr>"
        tds = "".join(f'<td class="{_e(c)}">{body}</td>' if c else f"<td>{body}</td>" for c, body in cells)
        parts.append(tr + tds + "</tr>")
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def _img(b64: str, alt: str, size: tuple[float, float]) -> str:
    w, h = round(size[0] * 100), round(size[1] * 100)
    return (f'<figure><img alt="{_e(alt)}" width="{w}" height="{h}" '
            f'src="data:image/png;base64,{b64}"></figure>')


def render_html(report: dict, training_logs: dict[str, list[dict]] | None) -> str:
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
        bars = [(metric, _bar_chart(report, metric)) for metric in metrics]
        curves = [(model, _curve_chart(model, training_logs.get(model) or [], COLORS[i % len(COLORS)]))
                  for i, model in enumerate(models)]

    n_fail = sum(1 for g in gates if not g.get("passed"))
    summary = ("no gates" if not gates else
               f"{n_fail} of {len(gates)} gates failed" if n_fail else f"all {len(gates)} gates passed")
    p = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}: {'PASS' if passed else 'FAIL'}</title>",
        f"<style>{_CSS}</style>",
        "</head><body><main>",
        f'<h1><span class="verdict {"pass" if passed else "fail"}" id="verdict">{"PASS" if passed else "FAIL"}</span>'
        f"{_e(title)}</h1>",
        f'<p class="summary">{_e(summary)}; {len(models)} models, {len(report.get("benchmarks", []))} benchmarks.</p>',
    ]

    p.append("<h2>Gates</h2>")
    if gates:
        p.append(_html_table(
            ["metric", "model", "threshold", "measured (95% interval)", "result"],
            [("pass" if g.get("passed") else "fail",
              [("", _e(g["metric"])), ("", _e(g["model"])), ("num", _e(_threshold(g))), ("num", _h_interval(g)),
               ("ok" if g.get("passed") else "bad", "✓ PASS" if g.get("passed") else "✗ FAIL")])
             for g in gates], table_id="gates"))
    else:
        p.append('<p class="note">No gates.</p>')

    p.append("<h2>Metrics</h2>")
    p.append(_html_table(
        ["metric", *models],
        [("", [("", _e(metric)), *(("num", _h_interval(_cell(report, m, metric))) for m in models)])
         for metric in metrics],
        caption="Value with its bootstrap 95% interval.", table_id="metrics", stack=len(models) > 3))
    p.append('<div class="figs">' + "".join(_img(b, f"{metric} across models", size) for metric, (b, size) in bars)
             + "</div>")

    p.append("<h2>Comparisons</h2>")
    comps = report.get("comparisons", [])
    if comps:
        p.append(_html_table(
            ["metric", "A", "B", "B − A (95% interval)", "significance"],
            [("", [("", _e(c["metric"])), ("", _e(c["a"])), ("", _e(c["b"])),
                   ("num", _h_interval(c, "diff", signed=True)),
                   ("sig" if c.get("significant") else "nsig",
                    "significant" if c.get("significant") else "not significant")])
             for c in comps], table_id="comparisons"))
    else:
        p.append('<p class="note">No comparisons.</p>')

    p.append("<h2>Training loss</h2>")
    figs = []
    for model, b in curves:
        if b is None:
            why = "no training log" if not training_logs.get(model) else "no loss values in the training log"
            figs.append(f'<div class="nolog"><strong>{_e(model)}</strong>: {_e(why)}</div>')
        else:
            figs.append(_img(b, f"training loss of {model}", CURVE_SIZE))
    p.append('<div class="figs">' + "".join(figs) + "</div>")

    p.append("<h2>Models and benchmarks</h2>")
    p.append(_html_table(["model", "digest"],
                         [("", [("", _e(m)), ("", f"<code>{_e(digests[m])}</code>" if digests.get(m) else MISSING)])
                          for m in models], table_id="models"))
    p.append(_html_table(["benchmark", "kind", "examples", "metrics"],
                         [("", [("", _e(b["name"])), ("", _e(b.get("kind", ""))),
                                ("num", _e(b.get("examples", MISSING))), ("", _e(", ".join(b.get("metrics", []))))])
                          for b in report.get("benchmarks", [])], table_id="benchmarks"))
    gen = _gen_settings(report)
    if gen:
        p.append(f'<p class="note">Generation: <code>{_e(gen)}</code></p>')
    samples = _samples(report)
    if samples:
        p.append('<p class="note">Per-example outputs:</p><ul class="note">')
        p += [f"<li>{_e(m)} / {_e(bn)}: <code>{_e(path)}</code></li>" for m, bn, path in samples]
        p.append("</ul>")
    p.append("</main></body></html>")
    return "\n".join(p) + "\n"


def write_reports(folder: str, report: dict, training_logs: dict[str, list[dict]] | None) -> None:
    """Write folder/report.md and folder/report.html (each written whole, then renamed into place)."""
    os.makedirs(folder, exist_ok=True)
    for name, text in (("report.md", render_markdown(report)), ("report.html", render_html(report, training_logs))):
        path = os.path.join(folder, name)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
