"""A matrix's cells in the eval report: the values read back from cell addresses (as planning/matrix.py
writes them), each chart's data (a metric against a swept param, a line per combination of the others),
and report.md / report.html written from a report of a 2x2 sweep and one plain model."""
from __future__ import annotations

import base64
import copy
import io
import re

import numpy as np
import pytest
from PIL import Image

from forgebuild.planning.matrix import cell_name
from forgebuild.rules.eval.cells import cell_values, cells_of, chart, parse_value, swept, sweeps
from forgebuild.rules.eval.report import render_html, render_markdown, sweep_charts, write_reports

GRID = [f"model:sft[lr={lr!r},batch_size={b}]" for lr in (1e-3, 1e-4) for b in (4, 8)]
# lr 1e-4 beats 1e-3 and batch 8 beats 4, each by 0.1 with intervals of +-0.05
VALUE = {"model:sft[lr=0.001,batch_size=4]": 0.2, "model:sft[lr=0.001,batch_size=8]": 0.3,
         "model:sft[lr=0.0001,batch_size=4]": 0.4, "model:sft[lr=0.0001,batch_size=8]": 0.5, "model:base": 0.05}


def entry(value: float, n: int = 80) -> dict:
    return {"value": value, "low": value - 0.05, "high": value + 0.05, "n": n}


REPORT = {
    "title": "eval:sweep", "models": [*GRID, "model:base"],
    "benchmarks": [{"name": "arith", "kind": "generate", "metrics": ["exact_match"], "examples": 80},
                   {"name": "holdout", "kind": "perplexity", "metrics": ["perplexity"], "examples": 40}],
    "results": {m: {"arith.exact_match": entry(v), "holdout.perplexity": entry(20 - 10 * v, 40)}
                for m, v in VALUE.items()},
    "comparisons": [], "gates": [], "passed": True,
}
CHARTS = ["model:sft: arith.exact_match against lr", "model:sft: arith.exact_match against batch_size",
          "model:sft: holdout.perplexity against lr", "model:sft: holdout.perplexity against batch_size"]


# ---------------------------------------------------------------- reading addresses

def test_cell_values_reads_back_what_the_matrix_writes():
    assert cell_values("model:sft[lr=0.001,batch_size=4]") == ("model:sft", {"lr": 0.001, "batch_size": 4})
    assert cell_values("model:base") == ("model:base", {})
    assert cell_values("model:odd[]") == ("model:odd[]", {})
    values = {"train.lr": 1e-05, "lora.r": 16, "train.packing": True, "train.lr_scheduler": "cosine",
              "x.name": "1_000", "x.small": -2.5e-07, "x.big": 3.0}
    group, found = cell_values("model:" + cell_name("sft-v1", values))
    assert group == "model:sft-v1"
    assert found == {"lr": 1e-05, "r": 16, "packing": True, "lr_scheduler": "cosine", "name": "1_000",
                     "small": -2.5e-07, "big": 3.0}
    assert [type(v) for v in found.values()] == [float, int, bool, str, str, float, float]
    # two swept keys ending alike keep their whole path, as the address writes them
    assert cell_values("model:" + cell_name("m", {"a.r": 1, "b.r": 2}))[1] == {"a.r": 1, "b.r": 2}
    assert [parse_value(t) for t in ("true", "false", "-3", "1e3", ".5", "inf", "v1", "1.2.3")] == \
        [True, False, -3, 1000.0, 0.5, float("inf"), "v1", "1.2.3"]


def test_cells_and_sweeps_group_the_cells_of_each_matrix():
    models = [*GRID, "model:base", "model:solo[lr=0.1]"]
    assert cells_of(models) == {**{a: cell_values(a)[1] for a in GRID}, "model:solo[lr=0.1]": {"lr": 0.1}}
    # a matrix with one cell evaluated has nothing to plot against
    assert sweeps(models) == {"model:sft": {a: cell_values(a)[1] for a in GRID}}
    assert swept(sweeps(models)["model:sft"]) == {"lr": [1e-4, 1e-3], "batch_size": [4, 8]}
    # a value every cell shares is no swept param; names keep the matrix's order, numbers ascend
    cells = {"a": {"opt": "sgd", "r": 8, "k": 1}, "b": {"opt": "adam", "r": 8, "k": 1},
             "c": {"opt": "sgd", "r": 4, "k": 1}}
    assert swept(cells) == {"opt": ["sgd", "adam"], "r": [4, 8]}


# ---------------------------------------------------------------- chart data

def points(line: dict) -> list[tuple]:
    return [(p["x"], p["value"]) for p in line["points"]]


def test_a_chart_per_metric_and_swept_param_with_a_line_per_other_value():
    group, cells, charts = sweep_charts(REPORT)[0]
    assert group == "model:sft" and list(cells) == GRID and len(sweep_charts(REPORT)) == 1
    assert [f"{c['metric']} against {c['param']}" for c in charts] == [c.split(": ", 1)[1] for c in CHARTS]
    lr, batch = charts[0], charts[1]
    # lr spans 10x: a log axis; the points in ascending lr, a line per batch size
    assert lr["log"] and lr["numeric"] and lr["ticks"] == [(1e-4, "0.0001"), (1e-3, "0.001")]
    assert [line["label"] for line in lr["lines"]] == ["batch_size=4", "batch_size=8"]
    assert points(lr["lines"][0]) == [(1e-4, 0.4), (1e-3, 0.2)] and points(lr["lines"][1]) == [(1e-4, 0.5), (1e-3, 0.3)]
    assert lr["lines"][0]["points"][0] == {"model": "model:sft[lr=0.0001,batch_size=4]", "x": 1e-4, "value": 0.4,
                                           "low": pytest.approx(0.35), "high": pytest.approx(0.45)}
    # 4 to 8 is no 10x: a linear axis
    assert not batch["log"] and [line["label"] for line in batch["lines"]] == ["lr=0.0001", "lr=0.001"]
    assert points(batch["lines"][1]) == [(4, 0.2), (8, 0.3)]
    assert all(line["joined"] for c in charts for line in c["lines"])
    assert sweep_charts({**REPORT, "models": ["model:base", GRID[0]]}) == []


def test_names_sit_in_matrix_order_and_missing_values_are_left_out():
    cells = {f"model:m[opt={o},warm={str(w).lower()}]": {"opt": o, "warm": w} for o in ("sgd", "adam") for w in (True, False)}
    results = {a: {"acc": entry(0.1 * i)} for i, a in enumerate(cells)}
    results["model:m[opt=adam,warm=true]"]["acc"] = {"value": None, "low": None, "high": None, "n": 0}
    data = chart(results, cells, "acc", "opt")
    assert not data["numeric"] and not data["log"] and data["ticks"] == [(0, "sgd"), (1, "adam")]
    assert [(line["label"], points(line)) for line in data["lines"]] == \
        [("warm=true", [(0, 0.0)]), ("warm=false", [(0, 0.1), (1, 0.30000000000000004)])]
    assert [line["joined"] for line in data["lines"]] == [False, True]
    assert chart({}, cells, "acc", "opt") is None


def test_cells_that_share_no_other_values_are_one_unjoined_series():
    """A search's cells: every other value differs, so no line would have two points."""
    cells = {f"model:s[lr={lr!r},r={r}]": {"lr": lr, "r": r} for lr, r in ((0.01, 4), (0.002, 16), (0.0005, 8))}
    results = {a: {"acc": entry(v)} for a, v in zip(cells, (0.3, 0.6, 0.5))}
    data = chart(results, cells, "acc", "lr")
    assert data["log"] and len(data["lines"]) == 1
    assert data["lines"][0]["label"] == "each cell" and not data["lines"][0]["joined"]
    assert points(data["lines"][0]) == [(0.0005, 0.5), (0.002, 0.6), (0.01, 0.3)]


# ---------------------------------------------------------------- the reports

def pngs(page: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(b64) for alt, b64 in
            re.findall(r'<img alt="([^"]*)"[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)}


def test_the_reports_show_the_sweep(tmp_path):
    write_reports(str(tmp_path), REPORT, None)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    # markdown: after the metrics, a table of the matrix's cells with their values and metrics
    assert md.index("## Metrics") < md.index("## Sweeps") < md.index("## Comparisons")
    lines = md.split("## Sweeps")[1].split("## Comparisons")[0].splitlines()
    assert "**model:sft**: 4 cells" in lines
    assert "| lr | batch_size | arith.exact_match | holdout.perplexity |" in lines
    assert "| 0.0001 | 8 | 0.500 [0.450, 0.550] n=80 | 15.000 [14.950, 15.050] n=40 |" in lines
    assert sum(line.startswith("| 0.") for line in lines) == 4 and "model:base" not in "".join(lines)
    # html: the same table, then a chart per metric and swept param, each a real drawn PNG
    section = page[page.index("<h2>Sweeps</h2>"):page.index("<h2>Comparisons</h2>")]
    assert "<h3>model:sft: 4 cells</h3>" in section and 'id="sweep-1"' in section
    assert "<td>0.0001</td><td>8</td>" in section
    assert re.findall(r'<img alt="([^"]*)"', section) == CHARTS
    found = pngs(page)
    for alt in CHARTS:
        img = Image.open(io.BytesIO(found[alt]))
        assert img.format == "PNG" and "Software" not in img.info and img.width > 400
        assert np.asarray(img.convert("RGB")).astype(int).std() > 10, alt
    # a changed cell redraws its metric's charts and no other
    changed = copy.deepcopy(REPORT)
    changed["results"]["model:sft[lr=0.001,batch_size=4]"]["arith.exact_match"] = entry(0.9)
    after = pngs(render_html(changed, None))
    assert sorted(alt for alt in found if found[alt] != after[alt]) == \
        ["arith.exact_match across models", *sorted(CHARTS[:2])]
    # no matrix, no section
    plain = {**REPORT, "models": ["model:base", GRID[0]]}
    assert "Sweeps" not in render_markdown(plain) and "Sweeps" not in render_html(plain, None)


def test_a_browser_shows_the_sweep_table_and_charts(tmp_path):
    from test_eval_report import Dom, chromium

    write_reports(str(tmp_path), REPORT, None)
    proc = chromium("--dump-dom", (tmp_path / "report.html").as_uri(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Dom(proc.stdout)
    assert dom.tables["sweep-1"][0] == ["lr", "batch_size", "arith.exact_match", "holdout.perplexity"]
    assert [row[:3] for row in dom.tables["sweep-1"][1:]] == [
        ["0.001", "4", "0.200 [0.150, 0.250] n=80"], ["0.001", "8", "0.300 [0.250, 0.350] n=80"],
        ["0.0001", "4", "0.400 [0.350, 0.450] n=80"], ["0.0001", "8", "0.500 [0.450, 0.550] n=80"]]
    alts = [img["alt"] for img in dom.imgs]
    assert alts == ["arith.exact_match across models", "holdout.perplexity across models", *CHARTS]
