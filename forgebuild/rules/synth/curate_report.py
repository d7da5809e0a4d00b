"""A curate target's stats.json and report.html.

Pass rates are over samples, and their 95% intervals come from a bootstrap that resamples whole
PROMPTS (1000 resamples, numpy, seeded by the build's seed): the samples of one prompt are
correlated (an easy prompt passes all n), so resampling samples would draw the intervals too narrow.
Each resample is a multinomial count per prompt, so one matrix product gives every verifier's rate.

report.html is one self-contained file in the eval report's look (its CSS and table helper): the
pass-rate table with intervals, a bar per verifier with its interval as a whisker (plain HTML, no
image, no script, no external link), the rejections by verifier, and a few rejected samples.
The same stats give the same bytes.
"""
from __future__ import annotations

import json

import numpy as np

RESAMPLES = 1000
CHUNK = 100  # resamples drawn at once: 100 x 10,000 prompts of counts is 8 MB
QUOTED = 20  # rejection reasons quoted in stats.json
EXAMPLES = 5  # rejected samples shown in the report


def pass_rates(passes: np.ndarray, counts: np.ndarray, seed: int) -> list[dict]:
    """passes: prompts x columns (samples passed per prompt), counts: samples per prompt; per column the
    pooled rate with its prompt-bootstrap 95% interval, {"value", "low", "high", "n": prompts}."""
    rng = np.random.default_rng(seed)
    n = len(counts)
    ratios = []
    for begin in range(0, RESAMPLES, CHUNK):
        weights = rng.multinomial(n, np.full(n, 1 / n), size=min(CHUNK, RESAMPLES - begin))
        ratios.append((weights @ passes) / (weights @ counts)[:, None])
    low, high = np.percentile(np.concatenate(ratios), [2.5, 97.5], axis=0)
    value = passes.sum(axis=0) / counts.sum()
    return [{"value": float(v), "low": float(lo), "high": float(hi), "n": n} for v, lo, hi in zip(value, low, high)]


def statistics(judged: list, outcomes: list, kept: dict, splits: dict[str, int], seed: int) -> dict:
    prompts = sorted({j.sample["prompt_index"] for j in judged})
    row = {p: i for i, p in enumerate(prompts)}
    passes = np.zeros((len(prompts), len(outcomes) + 1))
    counts = np.zeros(len(prompts))
    for i, j in enumerate(judged):
        r = row[j.sample["prompt_index"]]
        counts[r] += 1
        passes[r] += [j.passed, *(o.passed[i] for o in outcomes)]
    rates = pass_rates(passes, counts, seed)
    reasons = [r for i in range(len(judged)) for o in outcomes if (r := o.reasons[i])]
    return {
        "samples": len(judged), "prompts": len(prompts), "passed": int(passes[:, 0].sum()),
        "pass_rate": rates[0],
        "verifiers": [{"name": o.name, "passed": sum(o.passed), "pass_rate": rate}
                      for o, rate in zip(outcomes, rates[1:])],
        "rejections": {"samples": len(judged) - int(passes[:, 0].sum()),
                       "by_verifier": {o.name: o.passed.count(False) for o in outcomes},
                       "reasons": reasons[:QUOTED]},
        "kept": kept, "splits": splits, "resamples": RESAMPLES,
    }


# ------------------------------------------------------------------ report.html

_BARS = """
.bar { position: relative; width: 260px; height: 14px; background: #eef1f4; border-radius: 2px; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: #1f77b4; border-radius: 2px; }
.bar .whisker { position: absolute; top: 6px; height: 2px; background: #1b1f24; }
.bar .whisker::before, .bar .whisker::after { content: ""; position: absolute; top: -4px; width: 1px; height: 10px;
  background: #1b1f24; }
.bar .whisker::before { left: 0; } .bar .whisker::after { right: 0; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0; font-size: 12px; }
"""


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rate(entry: dict) -> str:
    return f"{_pct(entry['value'])} [{_pct(entry['low'])}, {_pct(entry['high'])}]"


def _bar(entry: dict) -> str:
    low, high = 100 * entry["low"], 100 * entry["high"]
    return (f'<div class="bar"><div class="fill" style="width:{100 * entry["value"]:.2f}%"></div>'
            f'<div class="whisker" style="left:{low:.2f}%;width:{high - low:.2f}%"></div></div>')


def _show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)


def render_html(target: str, stats: dict, rejected: list[dict]) -> str:
    from forgebuild.rules.eval.report import CSS, escape, html_table

    rows = [("", [("", "<strong>every verifier</strong>"), ("num", f"{stats['passed']} / {stats['samples']}"),
                  ("num", escape(_rate(stats["pass_rate"]))), ("", _bar(stats["pass_rate"]))])]
    rows += [("", [("", f"<code>{escape(v['name'])}</code>"), ("num", f"{v['passed']} / {stats['samples']}"),
                   ("num", escape(_rate(v["pass_rate"]))), ("", _bar(v["pass_rate"]))]) for v in stats["verifiers"]]
    kept = stats["kept"]
    shape = [("", [("", "kept prompts"), ("num", str(kept["kept"]))])]
    shape += [("", [("", escape(f"dropped: {why}")), ("num", str(n))]) for why, n in sorted(kept["dropped"].items())]
    shape += [("", [("", escape(f"split {name}")), ("num", str(n))]) for name, n in stats["splits"].items()]
    by = stats["rejections"]["by_verifier"]
    examples = [("", [("num", f"{r['prompt_index']}/{r['sample']}"), ("", f"<pre>{escape(_show(r['prompt']))}</pre>"),
                      ("", f"<pre>{escape(_show(r['completion']))}</pre>"),
                      ("", "<br>".join(escape(x) for x in r["reasons"]))]) for r in rejected[:EXAMPLES]]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(target)}: curate report</title>", f"<style>{CSS}{_BARS}</style></head><body><main>",
        f"<h1>{escape(target)}</h1>",
        f'<p class="summary">{stats["passed"]} of {stats["samples"]} samples of {stats["prompts"]} prompts passed '
        f'every verifier; shape {escape(stats.get("shape", ""))}.</p>',
        "<h2>Pass rates</h2>",
        html_table(["verifier", "passed", "rate [95% interval]", ""], rows,
                    caption=f"Over samples; intervals from {stats['resamples']} bootstrap resamples of the "
                            f"{stats['prompts']} prompts."),
        "<h2>Output</h2>", html_table(["", "count"], shape),
        "<h2>Rejections</h2>",
        html_table(["verifier", "samples rejected"], [("", [("", f"<code>{escape(k)}</code>"), ("num", str(n))])
                                                       for k, n in by.items()]),
    ]
    if examples:
        parts += [f"<h3>The first {len(examples)} rejected samples</h3>",
                  html_table(["prompt/sample", "prompt", "completion", "reasons"], examples)]
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
