"""`forgebuild metrics diff A B`: the metrics two builds recorded, side by side, with the change and,
where an interval is known, whether the two sides are apart.

A and B name builds as `forgebuild diff` does (`diff_resolve`): a record id, TARGET@N, or a lock file.
Two lock files compare every target either lists, each side's build found in this store by its
output digest; two records (or a record and a lock's entry for its target) compare that target.

A build's metrics: its record's `metrics` (what the rule measured: losses, steps, tokens/s; nested
values flattened, `seconds.train`), the record's own `seconds` as `build_seconds`, and for an eval
its `report.json` results, `MODEL BENCH.METRIC` with their 95% intervals (they replace the record's
copies of the same values). Two evals of different models (cells of a sweep) line up by benchmark:
the models both reports name, and the one model left on each side as `A_MODEL -> B_MODEL`.

Whether a change is more than noise: where both builds kept per-example samples of the same examples
(same lines, prompts and references; for perplexity the same documents with the same token counts),
a paired percentile bootstrap of B - A (SciPy's, RESAMPLES, SEED; the command line may not import
the eval's own statistics, `rules.eval.scoring`, which a build alone imports): "apart" when its 95%
interval excludes 0. Otherwise two intervals are "apart" when they do not overlap, a coarse test
(overlapping intervals may still differ). Timings are shown, marked: they depend on the machine and
its load.
"""
from __future__ import annotations

import json
import math
import re
import sys

from forgebuild.cli.diff import Auditor
from forgebuild.cli.diff_changes import side_info
from forgebuild.cli.diff_render import _interval_text, _side_line, _signed
from forgebuild.cli.tensors import finite
from forgebuild.errors import UsageError
from forgebuild.planning.change import flatten

TIMING = re.compile(r"(runtime|per_second|_time$|^time|seconds)")  # as the training rule's TIMING
IDENTITY = ("task", "doc_id", "line", "prompt", "reference", "document", "tokens")  # what names an example
RESAMPLES, SEED = 1000, 0    # as many as an eval's default bootstrap; a fixed seed: the same diff twice says the same
TIMING_NOTE = "timing: depends on the machine and its load; not comparable across machines"


def cmd_metrics(args, session, report) -> int:
    result = MetricsDiff(session).compare(args.a, args.b)
    if args.json:
        for row in result["rows"]:
            report({"event": "metric", **row})
        report({"event": "summary", "ok": True, **{k: v for k, v in result.items() if k != "rows"}})
    else:
        text = render_markdown(result) if args.format == "markdown" else render_text(result)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    return 0


# ------------------------------------------------------------------ the builds and their files

class MetricsDiff(Auditor):
    """The builds two arguments name, paired target by target, and their metrics side by side."""

    def compare(self, arg_a: str, arg_b: str) -> dict:
        self.read: dict[str, list] = {}    # a samples file's path -> its rows
        a, b = self.resolve(arg_a), self.resolve(arg_b)
        result = {"a": side_info(a), "b": side_info(b), "targets": [], "rows": [], "same": [], "notes": []}
        for target, ba, bb in self.pairs(a, b):
            ra, rb = ((x or {}).get("record") or {} for x in (ba, bb))
            result["targets"].append({"target": target, "a": ra.get("id"), "b": rb.get("id")})
            if ra and ra.get("id") == rb.get("id"):
                result["same"].append(target)
                continue
            notes = [f"{w}: {n}" for w, x in (("A", ba), ("B", bb)) if (n := self.missing(target, x))]
            rows = self.target_rows(target, ba, bb, notes) if ra or rb else []
            if not rows and not notes:
                notes.append("no metrics recorded")
            result["rows"] += rows
            result["notes"] += [{"target": target, "note": n} for n in notes]
        result["metrics"] = len(result["rows"])
        result["apart"] = [f"{r['target']} {r['metric']}" for r in result["rows"] if r["apart"]]
        return result

    def pairs(self, a: dict, b: dict) -> list[tuple[str, dict | None, dict | None]]:
        """(target, A's build, B's build): every target of two lock files, else the one target."""
        if a["kind"] == "lock" and b["kind"] == "lock":
            ta, tb = a["lock"]["targets"], b["lock"]["targets"]
            return [(t, self.lock_build(ta, t) if t in ta else None, self.lock_build(tb, t) if t in tb else None)
                    for t in [*ta, *(t for t in tb if t not in ta)]]
        if a["kind"] == "record" and b["kind"] == "record":
            ta, tb = a["record"]["target"], b["record"]["target"]
            return [(tb if ta == tb else f"{ta} -> {tb}", self.build_of(a["record"]), self.build_of(b["record"]))]
        record, lock = (a["record"], b) if a["kind"] == "record" else (b["record"], a)
        if record["target"] not in lock["lock"]["targets"]:
            raise UsageError(f"lock file {lock['label']} has no entry for {record['target']}")
        builds = [self.build_of(record), self.lock_build(lock["lock"]["targets"], record["target"])]
        return [(record["target"], *(builds if a["kind"] == "record" else builds[::-1]))]

    @staticmethod
    def missing(target: str, build: dict | None) -> str | None:
        if build is None:
            return "not in its lock file"
        if build.get("record") is None:
            return (f"no build record of {target} with output {(build.get('digest') or '-')[:12]} in this store "
                    f"(built elsewhere, or its record was removed)")
        return None

    def target_rows(self, target: str, ba: dict | None, bb: dict | None, notes: list) -> list[dict]:
        (ra, fa), (rb, fb) = self.report_of(ba, "A", notes), self.report_of(bb, "B", notes)
        la, lb = model_labels(list((ra or {}).get("results") or {}), list((rb or {}).get("results") or {}))
        va = metric_values((ba or {}).get("record") or {}, ra, la)
        vb = metric_values((bb or {}).get("record") or {}, rb, lb)
        paired = {}
        for name in va.keys() & vb.keys():
            if "bench" in va[name] and "bench" in vb[name] and va[name]["bench"] == vb[name]["bench"]:
                found = paired_change(bench_kind(rb, vb[name]["bench"]), va[name]["metric"],
                                      self.samples(ra, fa, va[name]), self.samples(rb, fb, vb[name]))
                if found:
                    paired[name] = found
        return metric_rows(target, va, vb, paired)

    def report_of(self, build: dict | None, side: str, notes: list) -> tuple[dict | None, dict]:
        """An eval's report.json and its artifact's files ({path: {digest, size}}) from the store."""
        record = (build or {}).get("record")
        if not record:
            return None, {}
        manifest = self.manifest(build)
        if manifest is None:
            if (record.get("material") or {}).get("rule") == "eval":
                notes.append(f"{side}: report.json is not in the cache (the record's values, without intervals)")
            return None, {}
        files = {f["path"]: f for f in manifest["files"]}
        found = self.json_file(files, "report.json")
        return (found if isinstance(found, dict) and isinstance(found.get("results"), dict) else None), files

    def samples(self, report: dict, files: dict, value: dict) -> list[dict]:
        """The per-example rows an eval kept for one model on one benchmark ([] when not in the store)."""
        rel = ((report.get("samples") or {}).get(value["model"]) or {}).get(value["bench"])
        item = files.get(rel) if isinstance(rel, str) else None
        path = self.blob(item["digest"]) if item else None
        if path is None:
            return []
        if path not in self.read:  # a benchmark's file serves each of its metrics
            try:
                with open(path, encoding="utf-8") as f:
                    self.read[path] = [json.loads(line) for line in f if line.strip()]
            except (OSError, ValueError):
                self.read[path] = []
        return self.read[path]


# ------------------------------------------------------------------ the values of one build

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def model_labels(a: list[str], b: list[str]) -> tuple[dict, dict]:
    """What each report's models are called in the metric names: a model both evaluate, by its address;
    the one model left on each side (two cells of a sweep, each evaluated) as `A_MODEL -> B_MODEL`."""
    la, lb = {m: m for m in a}, {m: m for m in b}
    rest_a, rest_b = [m for m in a if m not in lb], [m for m in b if m not in la]
    if len(rest_a) == 1 and len(rest_b) == 1:
        la[rest_a[0]] = lb[rest_b[0]] = f"{rest_a[0]} -> {rest_b[0]}"
    return la, lb


def metric_values(record: dict, report: dict | None, labels: dict) -> dict:
    """name -> {"value", "interval", "n"} (and "model", "bench", "metric" for a report's value): the
    report's results first, then the record's metrics it does not already hold, then build_seconds."""
    values = {}
    results = (report or {}).get("results") or {}
    for model, found in results.items():
        for name, stat in (found or {}).items():
            interval = [stat["low"], stat["high"]] if _number(stat.get("low")) and _number(stat.get("high")) else None
            bench, _, metric = name.rpartition(".")
            values[f"{labels.get(model, model)} {name}"] = {"value": stat.get("value"), "interval": interval,
                                                            "n": stat.get("n"), "model": model, "bench": bench,
                                                            "metric": metric}
    recorded = flatten(record["metrics"]) if isinstance(record.get("metrics"), dict) and record["metrics"] else {}
    for name, value in recorded.items():
        if _number(value) and name.split(" ", 1)[0] not in results:  # the report has it, with an interval
            values[name] = {"value": value, "interval": None, "n": None}
    if _number(record.get("seconds")):
        values["build_seconds"] = {"value": record["seconds"], "interval": None, "n": None}
    return values


def bench_kind(report: dict | None, bench: str) -> str | None:
    return next((b.get("kind") for b in (report or {}).get("benchmarks") or [] if b.get("name") == bench), None)


def identity(row: dict) -> tuple:
    return tuple(row.get(k) for k in IDENTITY)


def paired_change(kind: str | None, metric: str, rows_a: list[dict], rows_b: list[dict]) -> dict | None:
    """B - A over the same examples with its paired-bootstrap 95% interval: {"diff", "low", "high", "n"};
    None unless both sides kept samples of the same examples in the same order (and SciPy is there). A
    perplexity (or its loss) is a ratio of sums over documents: each resample draws the same documents
    for both sides, as the eval's gates do; any other metric is a mean of per-example scores."""
    if not rows_a or [identity(r) for r in rows_a] != [identity(r) for r in rows_b]:
        return None
    if kind == "perplexity":
        if metric not in ("perplexity", "loss") or not all(_number(r.get("nll")) and _number(r.get("tokens"))
                                                           for r in rows_a + rows_b):
            return None
        columns = [[r[field] for r in rows] for rows in (rows_a, rows_b) for field in ("nll", "tokens")]
        if not sum(columns[1]) or not sum(columns[3]):
            return None
        transform = math.exp if metric == "perplexity" else float
        point = transform(sum(columns[2]) / sum(columns[3])) - transform(sum(columns[0]) / sum(columns[1]))
        return bootstrap(columns, point,
                         lambda na, ta, nb, tb, axis: ratio(nb, tb, axis, metric) - ratio(na, ta, axis, metric))
    scores = [[(r.get("scores") or {}).get(metric) for r in rows] for rows in (rows_a, rows_b)]
    diffs = [float(y) - float(x) for x, y in zip(*scores) if judged(x) and judged(y)]
    if not diffs:  # lm-eval's rows keep their scores elsewhere: intervals only
        return None
    return bootstrap([diffs], sum(diffs) / len(diffs), lambda d, axis: d.mean(axis=axis))


def judged(score) -> bool:
    """A per-example score that counts (a choice's correct is a bool); None or NaN: the scorer could not judge."""
    return isinstance(score, (int, float)) and math.isfinite(score)


def ratio(nll, tokens, axis, metric):
    """A perplexity (exp of nll per token) or a loss (nll per token) of resampled documents."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        loss = nll.sum(axis=axis) / tokens.sum(axis=axis)
    return np.exp(loss) if metric == "perplexity" else loss


def bootstrap(columns: list[list], point: float, statistic) -> dict | None:
    """SciPy's paired percentile bootstrap (RESAMPLES, SEED) of a statistic of the columns, resampled
    together (the same examples on both sides): the 95% interval around `point`."""
    if len(columns[0]) < 2:
        return None
    try:
        import numpy as np
        from scipy.stats import bootstrap as scipy_bootstrap
    except ImportError:  # SciPy comes with the data and eval extras; without it, the intervals
        return None
    found = scipy_bootstrap([np.asarray(c, dtype=float) for c in columns], statistic, n_resamples=RESAMPLES,
                            paired=True, vectorized=True, method="percentile", rng=np.random.default_rng(SEED))
    low, high = float(found.confidence_interval.low), float(found.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return {"diff": point, "low": low, "high": high, "n": len(columns[0])}


def metric_rows(target: str, va: dict, vb: dict, paired: dict) -> list[dict]:
    """One row per metric either side has, A's order first: the two values, the change, the intervals and
    whether the sides are apart (`test`: "paired", "intervals", or None where no interval is known)."""
    rows = []
    for name in [*va, *(n for n in vb if n not in va)]:
        ea, eb = va.get(name) or {}, vb.get(name) or {}
        a, b = (finite(x) if _number(x) else None for x in (ea.get("value"), eb.get("value")))
        row = {"target": target, "metric": name, "a": a, "b": b,
               "change": finite(b - a) if a is not None and b is not None else None,
               "a_interval": ea.get("interval"), "b_interval": eb.get("interval"), "apart": None, "test": None,
               "change_interval": None, "pairs": None, "timing": bool(TIMING.search(name))}
        if name in paired:
            p = paired[name]
            row.update(test="paired", change_interval=[p["low"], p["high"]], pairs=p["n"],
                       apart=not p["low"] <= 0 <= p["high"])
        elif row["a_interval"] and row["b_interval"]:
            (la, ha), (lb, hb) = row["a_interval"], row["b_interval"]
            row.update(test="intervals", apart=hb < la or lb > ha)
        rows.append(row)
    return rows


# ------------------------------------------------------------------ rendering

def verdict(row: dict) -> str:
    if row["test"] == "paired":
        word = "apart" if row["apart"] else "within noise"
        return f"{word} (paired, {row['pairs']} example{'s' * (row['pairs'] != 1)})"
    if row["test"] == "intervals":
        return "apart (intervals)" if row["apart"] else "overlap (intervals)"
    return "timing" if row["timing"] else ""


def cells(row: dict) -> list[str]:
    change = _signed(row["change"])
    if row["change_interval"]:
        change += f" [{_signed(row['change_interval'][0])}, {_signed(row['change_interval'][1])}]"
    return [row["metric"], _interval_text(row["a"], row["a_interval"]), _interval_text(row["b"], row["b_interval"]),
            change, verdict(row)]


def _by_target(result: dict) -> dict:
    groups: dict = {}
    for row in result["rows"]:
        groups.setdefault(row["target"], []).append(row)
    return groups


def _footer(result: dict, pad: str = "") -> list[str]:
    out = []
    if result["same"]:
        out += ["", f"{pad}the same build on both sides: {', '.join(result['same'])}"]
    if result["notes"]:
        out += ["", f"{pad}notes:"] + [f"{pad}  {n['target']}: {n['note']}" for n in result["notes"]]
    if any(r["timing"] for r in result["rows"]):
        out += ["", f"{pad}{TIMING_NOTE}"]
    return out


def render_text(result: dict) -> str:
    out = [f"forgebuild metrics diff {result['a']['arg']} {result['b']['arg']}",
           _side_line("A", result["a"]), _side_line("B", result["b"])]
    for target, rows in _by_target(result).items():
        table = [["metric", "A", "B", "change", ""]] + [cells(r) for r in rows]
        widths = [max(len(line[i]) for line in table) for i in range(4)]
        out += ["", target] + ["  " + "  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[4]]).rstrip()
                               for line in table]
    if not result["rows"]:
        out += ["", "no metric to compare"]
    return "\n".join(out + _footer(result))


def render_markdown(result: dict) -> str:
    out = [f"**forgebuild metrics diff** `{result['a']['arg']}` `{result['b']['arg']}`", ""]
    for name, side in (("A", result["a"]), ("B", result["b"])):
        out.append(f"- {_side_line(name, side).strip()}")
    for target, rows in _by_target(result).items():
        out += ["", f"### {target}", "", "| metric | A | B | change | |", "|---|---|---|---|---|"]
        out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    if not result["rows"]:
        out += ["", "no metric to compare"]
    return "\n".join(out + _footer(result))

