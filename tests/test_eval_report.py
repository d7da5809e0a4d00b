"""report.md and report.html of an eval: tables, figures, determinism, and the page as a real browser shows it."""
from __future__ import annotations

import base64
import copy
import html
import io
import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from forgebuild.rules.eval.report import render_html, render_markdown, training_trends, write_reports

CHROMIUM = "/usr/bin/chromium"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REPORT = {
    "title": "eval:release",
    "models": ["model:sft-v1", "model:rl-v3"],
    "model_digests": {"model:sft-v1": "ab12" * 16, "model:rl-v3": "cd34" * 16},
    "benchmarks": [{"name": "arith", "kind": "generate", "metrics": ["exact_match", "contains"], "examples": 80},
                   {"name": "holdout", "kind": "perplexity", "metrics": ["perplexity", "loss"], "examples": 40}],
    "results": {
        "model:sft-v1": {"arith.exact_match": {"value": 0.41, "low": 0.30, "high": 0.52, "n": 80},
                         "arith.contains": {"value": 0.55, "low": 0.44, "high": 0.66, "n": 80},
                         "holdout.perplexity": {"value": 12.4, "low": 11.1, "high": 13.9, "n": 40},
                         "holdout.loss": {"value": 2.52, "low": 2.41, "high": 2.63, "n": 40}},
        "model:rl-v3": {"arith.exact_match": {"value": 0.53, "low": 0.42, "high": 0.64, "n": 80},
                        "arith.contains": {"value": None, "low": None, "high": None, "n": 0},
                        "holdout.perplexity": {"value": 14.0, "low": 12.5, "high": 15.6, "n": 40},
                        "holdout.loss": {"value": 2.64, "low": 2.53, "high": 2.75, "n": 40}},
    },
    "comparisons": [
        {"metric": "arith.exact_match", "a": "model:sft-v1", "b": "model:rl-v3",
         "diff": 0.12, "low": 0.02, "high": 0.22, "significant": True, "n": 80},
        {"metric": "holdout.loss", "a": "model:sft-v1", "b": "model:rl-v3",
         "diff": 0.12, "low": -0.03, "high": 0.27, "significant": False, "n": 40},
    ],
    "gates": [
        {"metric": "arith.exact_match", "model": "model:rl-v3", "op": ">=", "threshold": 0.6,
         "value": 0.53, "low": 0.42, "high": 0.64, "passed": False},
        {"metric": "holdout.perplexity", "model": "model:rl-v3", "op": "<=", "threshold": 20,
         "value": 14.0, "low": 12.5, "high": 15.6, "passed": True},
    ],
    "passed": False,
    "generation": {"max_new_tokens": 16, "stop": ["\n"], "temperature": 0.0},
    "samples": {"model:sft-v1": {"arith": "samples/model-sft-v1/arith.jsonl"}},
}

# one model with a training log (train rows, then eval rows), the other with none
LOGS = {"model:sft-v1": [{"step": s, "loss": 4 * math.exp(-s / 30) + 1.5 + 0.1 * math.sin(s), "learning_rate": 1e-3}
                         for s in range(1, 121)]
        + [{"step": s, "eval_loss": 4 * math.exp(-s / 30) + 1.8} for s in (40, 80, 120)]}

N_METRICS = 4
TAB_BLUE, TAB_ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)   # the first two models' bar colours


def data_pngs(page: str) -> list[tuple[str, Image.Image, bytes]]:
    """(alt, decoded image, raw bytes) of every <img> with a base64 PNG data URI, in page order."""
    out = []
    for alt, b64 in re.findall(r'<img alt="([^"]*)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        raw = base64.b64decode(b64, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
        out.append((alt, img, raw))
    return out


class Dom(HTMLParser):
    """Tables (by id) as rows of cell texts, every tag seen, and the attributes of every <img>."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.row_classes: dict[str, list[str]] = {}
        self.tags: list[str] = []
        self.imgs: list[dict] = []
        self.text: list[str] = []
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table], self.row_classes[self._table] = [], []
        elif tag == "tr" and self._table:
            self._row = []
            self.tables[self._table].append(self._row)
            self.row_classes[self._table].append(a.get("class", ""))
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.imgs.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


# ---------------------------------------------------------------- markdown

def test_markdown_tables_and_verdict():
    md = render_markdown(REPORT)
    lines = md.splitlines()
    assert lines[0] == "# eval:release: ❌ FAIL"
    assert "1 of 2 gates failed." in lines
    # metrics: a row per benchmark metric, a column per model; an empty metric is a dash
    assert "| metric | model:sft-v1 | model:rl-v3 |" in lines
    assert "| arith.exact_match | 0.410 [0.300, 0.520] n=80 | 0.530 [0.420, 0.640] n=80 |" in lines
    assert "| arith.contains | 0.550 [0.440, 0.660] n=80 | — n=0 |" in lines
    assert "| holdout.perplexity | 12.400 [11.100, 13.900] n=40 | 14.000 [12.500, 15.600] n=40 |" in lines
    # comparisons: the signed difference with its interval and the verdict on it
    assert "| arith.exact_match | model:sft-v1 | model:rl-v3 | +0.120 [+0.020, +0.220] n=80 | significant |" in lines
    assert "| holdout.loss | model:sft-v1 | model:rl-v3 | +0.120 [-0.030, +0.270] n=40 | not significant |" in lines
    # gates: threshold with its operator as a sign, the measured value with its interval and the n of
    # the measurement (from results: a gate entry has none), the result
    assert "| arith.exact_match | model:rl-v3 | ≥ 0.6 | 0.530 [0.420, 0.640] n=80 | ❌ FAIL |" in lines
    assert "| holdout.perplexity | model:rl-v3 | ≤ 20 | 14.000 [12.500, 15.600] n=40 | ✅ PASS |" in lines
    # the gates come before the metrics: a reviewer sees why a build failed first
    assert md.index("## Gates") < md.index("## Metrics") < md.index("## Comparisons") < md.index("## Training")
    assert "| model:sft-v1 | `ab12ab12ab12` |" in lines
    assert "- model:sft-v1 / arith: `samples/model-sft-v1/arith.jsonl`" in lines
    # every table row has as many cells as its header
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| :"):
            width = line.count(" | ")
            j = i + 1
            while j < len(lines) and lines[j].startswith("| "):
                assert lines[j].count(" | ") == width, lines[j]
                j += 1
    assert render_markdown(copy.deepcopy(REPORT)) == md


def test_pass_and_edge_cases():
    report = copy.deepcopy(REPORT)
    report.update(gates=[], comparisons=[], passed=True, title="eval:a|b")
    report["results"]["model:rl-v3"]["holdout.loss"] = {"value": float("inf"), "low": None, "high": None, "n": 40}
    del report["results"]["model:sft-v1"]["holdout.loss"]
    md = render_markdown(report)
    assert md.startswith("# eval:a\\|b: ✅ PASS\n")
    assert "No gates." in md and "No comparisons." in md
    assert "| holdout.loss | — | inf n=40 |" in md          # missing cell, then a value with no interval
    assert "❌" not in md
    # an empty report still renders
    empty = {"title": "eval:empty", "models": [], "benchmarks": [], "results": {}, "passed": True}
    assert render_markdown(empty).startswith("# eval:empty: ✅ PASS")
    page = render_html(empty, {})
    assert '<span class="verdict pass" id="verdict">PASS</span>' in page and "<img" not in page
    # the verdict follows `passed`, and the gates when it is absent
    no_verdict = {k: v for k, v in REPORT.items() if k != "passed"}
    assert render_markdown(no_verdict).startswith("# eval:release: ❌ FAIL")
    assert '<span class="verdict fail" id="verdict">FAIL</span>' in render_html(report | {"passed": False}, None)


# ---------------------------------------------------------------- html as text

def test_html_is_self_contained_and_escaped(tmp_path):
    report = copy.deepcopy(REPORT)
    report["title"] = 'eval:<script>alert("x")</script> & co'
    page = render_html(report, LOGS)
    assert not re.search(r"https?://", page)
    lowered = page.lower()
    for bad in ("<script", "<link", "<iframe", "url(", "@import", "javascript:"):
        assert bad not in lowered, bad
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert hrefs == []


def test_html_figures_are_real_pngs_without_software_tag():
    page = render_html(REPORT, LOGS)
    pngs = data_pngs(page)
    alts = [alt for alt, _, _ in pngs]
    # a bar chart per benchmark metric, then a curve for the one model with a training log
    assert alts == ["arith.exact_match across models", "arith.contains across models",
                    "holdout.perplexity across models", "holdout.loss across models",
                    "model:sft-v1: loss"]
    for alt, img, raw in pngs:
        assert img.format == "PNG"
        assert "Software" not in img.info, alt
        assert img.width > 400 and img.height > 250
        px = np.asarray(img.convert("RGB")).astype(int)
        assert px.std() > 10, alt                        # drawn on, not a blank canvas
    # the bar chart shows both models' bars in their colours
    bars = np.asarray(pngs[0][1].convert("RGB")).astype(int)
    for colour in (TAB_BLUE, TAB_ORANGE):
        assert (np.abs(bars - colour).sum(axis=2) < 30).sum() > 2000, colour
    # the model without a log is named, with no curve
    assert '<h3>model:rl-v3</h3>\n<ul class="trends"><li>no training log</li></ul>\n<h2>' in page
    # a log with rows but no loss at all says so
    other = render_html(REPORT, {**LOGS, "model:rl-v3": [{"step": 1, "learning_rate": 1e-3}]})
    assert '<h3>model:rl-v3</h3>\n<ul class="trends"><li>no loss or reward values in the training log</li>' in other
    assert len(data_pngs(other)) == N_METRICS + 1


def test_html_deterministic_bytes_and_reflects_data(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_reports(str(a), REPORT, LOGS)
    write_reports(str(b), copy.deepcopy(REPORT), copy.deepcopy(LOGS))
    for name in ("report.md", "report.html"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert sorted(os.listdir(a)) == ["report.html", "report.md"]       # no temporary files left
    # a fresh interpreter with another hash seed and a non-Agg default backend gives the same bytes
    (tmp_path / "in.json").write_text(json.dumps({"report": REPORT, "logs": LOGS}))
    code = ("import json, sys; from forgebuild.rules.eval.report import write_reports; "
            "d = json.load(open(sys.argv[1])); write_reports(sys.argv[2], d['report'], d['logs'])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "12345", "MPLBACKEND": "svg"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.json"), str(tmp_path / "c")],
                   check=True, cwd=ROOT, env=env, timeout=60)
    assert (tmp_path / "c" / "report.html").read_bytes() == (a / "report.html").read_bytes()
    # and a changed value changes its chart (the comparison above is not vacuous)
    changed = copy.deepcopy(REPORT)
    changed["results"]["model:rl-v3"]["arith.exact_match"]["value"] = 0.9
    before, after = data_pngs(render_html(REPORT, LOGS)), data_pngs(render_html(changed, LOGS))
    assert before[0][2] != after[0][2]
    assert [raw for _, _, raw in before[1:]] == [raw for _, _, raw in after[1:]]


def test_relative_gates_show_their_paired_difference_and_n():
    """Gate rows as the eval writes them for a fixed, a vocabulary and a relative condition: each shows
    its condition as written, the measurement with its interval and n, and a relative one the paired
    difference with the one-sided bound it was judged by and its pairs."""
    measured = {"value": 0.62, "low": 0.55, "high": 0.69, "n": 200}
    report = {
        "title": "eval:learned", "models": ["model:base", "model:sft"], "ancestors": ["model:base"],
        "benchmarks": [{"name": "arith", "kind": "generate", "metrics": ["exact_match"], "examples": 200}],
        "results": {"model:base": {"arith.exact_match": {"value": 0.12, "low": 0.08, "high": 0.17, "n": 200}},
                    "model:sft": {"arith.exact_match": measured}},
        "gates": [
            {"metric": "arith.exact_match", "model": "model:sft", "condition": ">= model:base + 0.3 @ 95%", "op": ">=",
             **measured, "threshold": 0.42, "against": "model:base", "against_value": 0.12, "margin": 0.3,
             "confidence": 95.0, "side": "lower", "diff": 0.5, "bound": 0.44, "pairs": 200, "passed": True},
            {"metric": "arith.exact_match", "model": "model:sft", "condition": ">= 0.7", "op": ">=", **measured,
             "threshold": 0.7, "passed": False},
            {"metric": "holdout.perplexity", "model": "model:sft", "condition": "<= 0.1 * vocab", "op": "<=",
             "value": 213.9, "low": 207.8, "high": 220.2, "n": 40, "threshold": 102.4, "vocab_size": 1024,
             "passed": False},
        ],
        "passed": False,
    }
    lines = render_markdown(report).splitlines()
    assert "| metric | model | condition | measured | paired difference | result |" in lines
    assert ("| arith.exact_match | model:sft | >= model:base + 0.3 @ 95% | 0.620 [0.550, 0.690] n=200 "
            "| +0.500 vs model:base, 95% lower bound +0.440, n=200 | ✅ PASS |") in lines
    assert "| arith.exact_match | model:sft | >= 0.7 | 0.620 [0.550, 0.690] n=200 |  | ❌ FAIL |" in lines
    assert ("| holdout.perplexity | model:sft | <= 0.1 * vocab = 102.4 | 213.900 [207.800, 220.200] n=40 "
            "|  | ❌ FAIL |") in lines
    assert "| model:base (ancestor) | — |" in lines and "| model:sft | — |" in lines
    dom = Dom(render_html(report, None))
    assert dom.tables["gates"][0][4] == "paired difference, one-sided bound, n"
    assert dom.tables["gates"][1][2:5] == [">= model:base + 0.3 @ 95%", "0.620 [0.550, 0.690] n=200",
                                           "+0.500 vs model:base, 95% lower bound +0.440, n=200"]
    assert dom.row_classes["gates"][1:] == ["pass", "fail", "fail"]
    assert [row[0] for row in dom.tables["models"][1:]] == ["model:base (ancestor)", "model:sft"]


# ---------------------------------------------------------------- training panels and trends

def ramp(step: int) -> float:
    """0 up to step 30, 1 from step 71, linear between: the first and last tenth of 100 steps are flat."""
    return min(1.0, max(0.0, (step - 30) / 40))


def grpo_log(kl: bool) -> list[dict]:
    """100 steps shaped as our grpo recipe's training_log.jsonl (key names from a real build with TRL
    1.16: a reward function per Forgefile reference), reward rising 0.21 -> 0.47; KL only when beta > 0."""
    rows = []
    for s in range(1, 101):
        row = {"step": s, "epoch": s / 100, "loss": 1e-8 * math.sin(s), "grad_norm": 0.9, "learning_rate": 1e-3,
               "reward": 0.21 + 0.26 * ramp(s), "reward_std": 0.05, "frac_reward_zero_std": 0.0,
               "rewards/rewards.py:exact_answer/mean": 0.1 + 0.5 * ramp(s), "rewards/rewards.py:exact_answer/std": 0.1,
               "rewards/exact/mean": 0.0, "rewards/exact/std": 0.0, "entropy": 5.5, "num_tokens": 100.0 * s,
               "completions/mean_length": 8.0, "clip_ratio/region_mean": 0.0}
        if kl:
            row["kl"] = 0.0004 * s
        rows.append(row)
    return rows + [{"step": 100, "epoch": 1.0, "train_loss": 0.0}]


def dpo_log() -> list[dict]:
    """40 steps and 2 evaluations shaped as our dpo recipe's log: margins and accuracies rising, loss falling."""
    rows = [{"step": s, "loss": 0.693 - 0.01 * s, "rewards/margins": 0.05 * s,
             "rewards/accuracies": 0.5 if s <= 20 else 1.0, "rewards/chosen": 0.02 * s, "rewards/rejected": -0.03 * s,
             "logps/chosen": -20.0, "logps/rejected": -21.0}
            for s in range(1, 41)]
    rows += [{"step": s, "eval_loss": 0.6 - s / 200, "eval_rewards/margins": s / 20, "eval_rewards/accuracies": 0.75}
             for s in (20, 40)]
    return rows + [{"step": 40, "train_loss": 0.488}]


STAGES = {"title": "eval:stages", "models": ["model:base", "model:pref", "model:rl", "model:rl-nokl"],
          "benchmarks": [{"name": "arith", "kind": "generate", "metrics": ["exact_match"], "examples": 50}],
          "results": {m: {"arith.exact_match": {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 50}}
                      for m, v in (("model:base", 0.12), ("model:pref", 0.5), ("model:rl", 0.61),
                                   ("model:rl-nokl", 0.6))},
          "comparisons": [], "gates": [], "passed": True}
STAGE_LOGS = {"model:base": LOGS["model:sft-v1"], "model:pref": dpo_log(), "model:rl": grpo_log(kl=True),
              "model:rl-nokl": grpo_log(kl=False)}
PANELS = {"model:base": ["loss"],
          "model:pref": ["loss", "rewards/margins", "rewards/accuracies"],
          "model:rl": ["loss", "reward", "rewards/rewards.py:exact_answer/mean", "rewards/exact/mean", "kl"],
          "model:rl-nokl": ["loss", "reward", "rewards/rewards.py:exact_answer/mean", "rewards/exact/mean"]}


def test_each_stage_gets_the_panels_its_log_holds():
    page = render_html(STAGES, STAGE_LOGS)
    pngs = data_pngs(page)
    panels = [alt for alt, _, _ in pngs if not alt.endswith(" across models")]
    # loss always; DPO: margins and accuracies; GRPO: total reward, each reward function, KL only when
    # logged; nothing else a log holds (rewards/chosen, entropy, completion lengths...) gets a panel
    assert panels == [f"{m}: {key}" for m in STAGES["models"] for key in PANELS[m]]
    for alt, img, _ in pngs:
        assert img.format == "PNG" and "Software" not in img.info, alt
        assert np.asarray(img.convert("RGB")).astype(int).std() > 10, alt
    # each panel sits under its model's heading
    for model, nxt in zip(STAGES["models"], STAGES["models"][1:] + ["Models and benchmarks"]):
        section = page[page.index(f"<h3>{model}</h3>"):page.index(f">{nxt}</h")]
        assert re.findall(r'<img alt="([^"]*)"', section) == [f"{model}: {key}" for key in PANELS[model]]
    # a panel draws its own series: another margin curve changes that panel and no other
    changed = copy.deepcopy(STAGE_LOGS)
    for row in changed["model:pref"]:
        if "rewards/margins" in row:
            row["rewards/margins"] *= -1
    before = {alt: raw for alt, _, raw in pngs}
    after = {alt: raw for alt, _, raw in data_pngs(render_html(STAGES, changed))}
    assert [alt for alt in before if before[alt] != after[alt]] == ["model:pref: rewards/margins"]


def test_training_trends_in_markdown_and_html():
    md = render_markdown(STAGES, STAGE_LOGS)
    lines = md.splitlines()
    assert md.index("## Comparisons") < md.index("## Training") < md.index("## Models")
    # first tenth against last tenth of the logged steps, so a reviewer reads the trend without the HTML
    pref = ["- loss fell from 0.668 to 0.308 (mean of steps 1–4 vs 37–40)",
            "- eval_loss fell from 0.500 to 0.400 (step 20 vs step 40)",
            "- rewards/margins rose from 0.125 to 1.925 (mean of steps 1–4 vs 37–40)",
            "- eval_rewards/margins rose from 1.000 to 2.000 (step 20 vs step 40)",
            "- rewards/accuracies rose from 0.500 to 1.000 (mean of steps 1–4 vs 37–40)",
            "- eval_rewards/accuracies stayed at 0.750 (step 20 vs step 40)"]
    start = lines.index("**model:pref**") + 2
    assert lines[start:start + len(pref) + 1] == pref + [""]
    rl = lines[lines.index("**model:rl**") + 2:lines.index("**model:rl-nokl**") - 1]
    windows = "(mean of steps 1–10 vs 91–100)"
    assert rl[1:] == [f"- reward rose from 0.210 to 0.470 {windows}",
                      f"- rewards/rewards.py:exact_answer/mean rose from 0.100 to 0.600 {windows}",
                      f"- rewards/exact/mean stayed at 0.000 {windows}",
                      f"- kl rose from 0.0022 to 0.038 {windows}"]   # a small KL in two figures, not 0.000
    assert rl[0].startswith("- loss ") and rl[0].endswith(windows)
    assert "kl " not in md.split("**model:rl-nokl**")[1].split("## Models")[0]
    # the same sentences in the page, under each model's heading
    page = render_html(STAGES, STAGE_LOGS)
    for line in pref:
        assert f"<li>{html.escape(line[2:])}</li>" in page, line
    # the same numbers as data, for report.json or a test of learning
    trends = training_trends(STAGE_LOGS["model:pref"])
    assert list(trends) == ["loss", "eval_loss", "rewards/margins", "eval_rewards/margins", "rewards/accuracies",
                            "eval_rewards/accuracies"]
    assert trends["rewards/margins"] == {"first": pytest.approx(0.125), "last": pytest.approx(1.925), "window": 4,
                                         "first_steps": [1, 4], "last_steps": [37, 40], "n": 40}
    assert trends["eval_rewards/margins"]["window"] == 1 and trends["eval_rewards/margins"]["n"] == 2
    assert json.loads(json.dumps(training_trends(STAGE_LOGS["model:rl"])))["reward"]["last"] == pytest.approx(0.47)
    # one logged step, and a model without a log
    one = render_markdown(STAGES | {"models": ["model:base", "model:pref"]},
                          {"model:pref": [{"step": 1, "loss": 0.693, "rewards/margins": 0.0}]})
    assert "- loss was 0.693 (step 1 only)" in one and "- rewards/margins was 0.000 (step 1 only)" in one
    assert "**model:base**\n\n- no training log\n" in one


def test_every_metric_cell_shows_value_interval_and_n():
    """An interval or an n dropped from any cell of either report fails here."""
    for report, logs in ((REPORT, LOGS), (STAGES, STAGE_LOGS)):
        md = render_markdown(report, logs).split("## Metrics")[1].split("## Comparisons")[0]
        md_rows = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ")]
        html_rows = Dom(render_html(report, logs)).tables["metrics"]
        assert md_rows[0] == html_rows[0] == ["metric", *report["models"]]
        assert [r[0] for r in md_rows[2:]] == [r[0] for r in html_rows[1:]]
        for md_row, html_row in zip(md_rows[2:], html_rows[1:]):
            metric = md_row[0]
            for col, model in enumerate(report["models"], start=1):
                cell = report["results"][model].get(metric)
                if cell and cell["value"] is not None:
                    want = f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}] n={cell['n']}"
                else:
                    want = "— n=0" if cell else "—"
                assert md_row[col] == html_row[col] == want, (model, metric)


# ---------------------------------------------------------------- html in a real browser

def chromium(*args: str, cwd) -> subprocess.CompletedProcess:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (CI installs it)")
    profile = cwd / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env={**os.environ, "HOME": str(cwd)})


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval-report")
    write_reports(str(folder), REPORT, LOGS)
    return folder


def test_browser_dom_has_tables_and_images(written):
    html_file = written / "report.html"
    proc = chromium("--dump-dom", html_file.as_uri(), cwd=written)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Dom(proc.stdout)
    assert "script" not in dom.tags
    assert set(dom.tables) >= {"gates", "metrics", "comparisons", "models", "benchmarks"}

    metrics = dom.tables["metrics"]
    assert metrics[0] == ["metric", "model:sft-v1", "model:rl-v3"]
    assert [row[0] for row in metrics[1:]] == ["arith.exact_match", "arith.contains",
                                               "holdout.perplexity", "holdout.loss"]
    assert metrics[1][1:] == ["0.410 [0.300, 0.520] n=80", "0.530 [0.420, 0.640] n=80"]
    assert metrics[2][2] == "— n=0"

    gates = dom.tables["gates"]
    assert gates[0] == ["metric", "model", "condition", "measured [95% interval] n", "result"]
    assert gates[1] == ["arith.exact_match", "model:rl-v3", "≥ 0.6", "0.530 [0.420, 0.640] n=80", "✗ FAIL"]
    assert gates[2] == ["holdout.perplexity", "model:rl-v3", "≤ 20", "14.000 [12.500, 15.600] n=40", "✓ PASS"]
    assert dom.row_classes["gates"][1:] == ["fail", "pass"]

    comps = dom.tables["comparisons"]
    assert comps[1][3:] == ["+0.120 [+0.020, +0.220] n=80", "significant"]
    assert comps[2][3:] == ["+0.120 [-0.030, +0.270] n=40", "not significant"]

    assert len(dom.imgs) == N_METRICS + 1
    assert all(img["src"].startswith("data:image/png;base64,") for img in dom.imgs)
    page = html_file.read_text(encoding="utf-8")
    assert not re.search(r"https?://", page) and not re.search(r"https?://", proc.stdout)
    assert "FAIL" in dom.text and "no training log" in "".join(dom.text)


def test_browser_screenshot_shows_the_page(written):
    shot = written / "shot.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1200,2000", (written / "report.html").as_uri(),
                    cwd=written)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 10_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2000)
    px = np.asarray(img).astype(int)
    assert px.var() > 0
    # the embedded charts were decoded and painted: the models' bar colours cover real areas of the page
    for colour in (TAB_BLUE, TAB_ORANGE):
        assert (np.abs(px - colour).sum(axis=2) < 30).sum() > 5000, colour
    # the FAIL badge (#cf222e) is painted at the top
    top = px[:120]
    assert (np.abs(top - (0xCF, 0x22, 0x2E)).sum(axis=2) < 20).sum() > 500
