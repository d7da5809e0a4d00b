"""The two renderings of a `forgebuild diff` result: text for the console, markdown for a review.

Both print the same tree (`diff.Auditor.compare`), shortened where JSON is not: LIST_LIMIT names per
list, DIFF_LINES lines of a unified diff, the most-changed tensors and layers.
"""
from __future__ import annotations

import re

from forgebuild.planning.change import show

LIST_LIMIT = 20              # file names shown per list in text and markdown (JSON has all)
DIFF_LINES = 200             # unified diff lines shown per code reference


def chain_text(chain: list[str]) -> str:
    return " differs because ".join(chain)


# ------------------------------------------------------------------ text

def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return show(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.4g}"


def _signed(x) -> str:
    return "-" if x is None else ("+" if x >= 0 else "") + _num(x)


def _interval_text(value, interval) -> str:
    text = _num(value)
    if interval and interval[0] is not None:
        text += f" [{_num(interval[0])}, {_num(interval[1])}]"
    return text


def _side_line(name: str, side: dict) -> str:
    if side["kind"] == "lock":
        return f"  {name}  lock file {side['path']} ({side['targets']} targets)"
    return f"  {name}  {side['id']}  {side['target']}  {side['started'] or ''}".rstrip()


def _names(names: list[str], limit: int = LIST_LIMIT) -> tuple[list[str], int]:
    return names[:limit], max(0, len(names) - limit)


def _describe_files(d: dict) -> str:
    counts = ", ".join(f"{len(d[w])} {w}" for w in ("changed", "added", "removed") if d[w])
    if d["files_old"] == d["files_new"]:
        return f"{counts} of {d['files_new']} file{'s' * (d['files_new'] != 1)}"
    return f"{counts}; {d['files_old']} -> {d['files_new']} files"


def _file_lines(pad: str, d: dict) -> list[str]:
    """The files changed, added and removed (of an input or an output), LIST_LIMIT of each."""
    out = []
    for what in ("changed", "added", "removed"):
        names, more = _names(d[what])
        out += [f"{pad}{what:<8} {name}" for name in names]
        if more:
            out.append(f"{pad}... {more} more {what}")
    return out


def render_text(result: dict) -> str:
    out = [f"forgebuild diff {result['a']['arg']} {result['b']['arg']}",
           _side_line("old", result["a"]), _side_line("new", result["b"])]
    for what in ("added", "removed"):
        if result[what]:
            out += ["", f"targets {what}: {', '.join(result[what])}"]
    if result["toolchain"]:
        out += ["", "toolchain (lock files):"]
        out += [f"  {t['name']}: {show(t['old'])} -> {show(t['new'])}" for t in result["toolchain"]]
    if result["identical"]:
        out += ["", "identical: same keys and outputs"]
        return "\n".join(out)
    if result["why"]:
        out += ["", "why:"] + [f"  {chain_text(c)}" for c in result["why"]]
    nodes = {n["id"]: n for n in result["nodes"]}
    shown: set = set()
    for node in result["nodes"]:
        if node["parent"] is None:
            out.append("")
            _text_node(node, nodes, 0, out, shown)
    return "\n".join(out)


def _text_node(node: dict, nodes: dict, level: int, out: list, shown: set) -> None:
    pad = "  " * level
    head = node["target"] if "target_old" not in node else f"{node['target_old']} -> {node['target']}"
    o, n = node["old"], node["new"]
    state = {"identical": "identical", "same-output": "same output", "not-reproduced": "same key, different output"}
    head += (f"  key {_short(o['key'])} -> {_short(n['key'])}" if o["key"] != n["key"] else f"  key {_short(n['key'])}")
    head += (f", output {_short(o['digest'])} -> {_short(n['digest'])}" if o["digest"] != n["digest"]
             else f", output {_short(n['digest'])}")
    if node["state"] in state:
        head += f" ({state[node['state']]})"
    out.append(pad + head)
    shown.add(node["id"])
    pad += "  "
    if node["rule"]:
        out.append(f"{pad}rule: {show(node['rule']['old'])} -> {show(node['rule']['new'])}")
    if node["seed"]:
        out.append(f"{pad}seed: {node['seed']['old']} -> {node['seed']['new']}")
    if node["params"]:
        out.append(f"{pad}params:")
        for p in node["params"]:
            out.append(f"{pad}  {p['name']}: " + (f"added (= {show(p['new'])})" if p["change"] == "added" else
                                                  f"removed (was {show(p['old'])})" if p["change"] == "removed"
                                                  else f"{show(p['old'])} -> {show(p['new'])}"))
    if node["data"]:
        out.append(f"{pad}data:")
        for d in node["data"]:
            out.append(f"{pad}  {d['input']}: {_describe_files(d)}")
            out += _file_lines(f"{pad}    ", d)
    if node["code"]:
        out.append(f"{pad}code:")
        for c in node["code"]:
            line = (f"{pad}  {c['old_path']} -> {c['path']} ({c['input']}): replaced" if c["change"] == "replaced"
                    else f"{pad}  {c['path']} ({c['input']}): {c['change']}")
            if c["diff"] is None:
                line += f" (digest {_short(c['old'])} -> {_short(c['new'])}; {c['note']})"
            out.append(line)
            if c["diff"]:
                lines = c["diff"].splitlines()
                out += [f"{pad}    {line}".rstrip() for line in lines[:DIFF_LINES]]
                if len(lines) > DIFF_LINES:
                    out.append(f"{pad}    ... {len(lines) - DIFF_LINES} more diff lines (--json has them all)")
    if node["environment"]:
        out.append(f"{pad}environment:")
        for e in node["environment"]:
            note = "" if e["keyed"] else " (recorded, not in the key)"
            out.append(f"{pad}  {e['kind']} {e['name']}: {show(e['old'])} -> {show(e['new'])}{note}")
    outputs = node.get("outputs")
    if outputs:
        if "note" in outputs:
            out.append(f"{pad}outputs: {outputs['note']}")
        else:
            out.append(f"{pad}outputs: {_describe_files(outputs)}, {outputs['bytes_old']} -> {outputs['bytes_new']} bytes")
            out += _file_lines(f"{pad}  ", outputs)
    if node["stats"]:
        out.append(f"{pad}stats.json:")
        for s in node["stats"][:LIST_LIMIT]:
            out.append(f"{pad}  {s['name']}: {_num(s['old'])} -> {_num(s['new'])}"
                       + (f" ({_signed(s['delta'])})" if s["delta"] is not None else ""))
        if len(node["stats"]) > LIST_LIMIT:
            out.append(f"{pad}  ... {len(node['stats']) - LIST_LIMIT} more")
    if node["weights"]:
        _text_weights(node["weights"], pad, out)
    if node["metrics"]:
        out.append(f"{pad}metrics:")
        for m in node["metrics"]:
            line = (f"{pad}  {m['name']}: {_interval_text(m['old'], m.get('old_interval'))} -> "
                    f"{_interval_text(m['new'], m.get('new_interval'))}")
            if m.get("delta") is not None:
                line += f" ({_signed(m['delta'])})"
            if m.get("overlap") is False:
                line += " (intervals do not overlap)"
            out.append(line)
    if node["dependencies"]:
        out.append(f"{pad}dependencies:")
        for dep in node["dependencies"]:
            if dep["change"] != "changed":
                out.append(f"{pad}  {dep['target']} ({dep['input']}): {dep['change']}")
            elif dep["node"] is None:
                out.append(f"{pad}  {dep['target']} ({dep['input']}): output {_short(dep['old'])} -> "
                           f"{_short(dep['new'])}; {dep['note']}")
            elif dep["node"] in shown:
                out.append(f"{pad}  {dep['target']} ({dep['input']}): output {_short(dep['old'])} -> "
                           f"{_short(dep['new'])} (shown above)")
            else:
                out.append(f"{pad}  {dep['target']} ({dep['input']}): output {_short(dep['old'])} -> "
                           f"{_short(dep['new'])}, because:")
                _text_node(nodes[dep["node"]], nodes, level + 3, out, shown)


def _text_weights(w: dict, pad: str, out: list) -> None:
    if "note" in w:
        out.append(f"{pad}weights: {w['note']}")
        return
    counts = ", ".join(f"{v} {k}" for k, v in w["counts"].items() if v)
    out.append(f"{pad}weights: {counts}; ||new - old|| / ||old|| = {_num(w['total']['relative'])} "
               f"(||new - old|| {_num(w['total']['diff_l2'])}, ||old|| {_num(w['total']['old_l2'])})")
    by_name = {t["name"]: t for t in w["tensors"]}
    if w["top"]:
        out.append(f"{pad}  most-changed tensors (relative, ||new - old||, ||old||):")
        width = max(len(n) for n in w["top"])
        for name in w["top"]:
            t = by_name[name]
            out.append(f"{pad}    {name:<{width}}  {_num(t['relative']):>9}  {_num(t['diff_l2']):>9}  {_num(t['old_l2']):>9}")
    for t in w["tensors"]:
        if t["change"] in ("reshaped", "added", "removed", "unsupported"):
            shape = (f"{t['shape_old']} -> {t['shape_new']}" if t["change"] == "reshaped"
                     else str(t["shape_new"] if t["change"] == "added" else t["shape_old"]))
            out.append(f"{pad}    {t['name']}: {t['change']} {shape}".replace("unsupported", "changed (dtype not compared)"))
    if w["layers"]:
        out.append(f"{pad}  most-changed layers (relative, ||new - old||, changed/tensors):")
        width = max(len(r["layer"]) for r in w["layers"])
        for r in w["layers"]:
            out.append(f"{pad}    {r['layer']:<{width}}  {_num(r['relative']):>9}  {_num(r['diff_l2']):>9}  "
                       f"{r['changed']}/{r['tensors']}")


# ------------------------------------------------------------------ markdown

def _md(text) -> str:
    return str(text).replace("|", "\\|")


def _code(text) -> str:
    return f"`{_md(text)}`"


def render_markdown(result: dict) -> str:
    out = [f"# forgebuild diff `{result['a']['arg']}` → `{result['b']['arg']}`", "",
           "| | build | target | key | output | started |", "|---|---|---|---|---|---|"]
    for name, side in (("old", result["a"]), ("new", result["b"])):
        if side["kind"] == "lock":
            out.append(f"| {name} | lock file {_code(side['path'])} | {side['targets']} targets | | | |")
        else:
            out.append(f"| {name} | {_code(side['id'])} | {_code(side['target'])} | {_code(_short(side['key']))} | "
                       f"{_code(_short(side['digest']))} | {side['started'] or ''} |")
    out.append("")
    for what in ("added", "removed"):
        if result[what]:
            out += [f"**Targets {what}**: " + ", ".join(_code(t) for t in result[what]), ""]
    if result["toolchain"]:
        out += ["**Toolchain** (lock files)", "", "| name | old | new |", "|---|---|---|"]
        out += [f"| {_code(t['name'])} | {_code(show(t['old']))} | {_code(show(t['new']))} |" for t in result["toolchain"]]
        out.append("")
    if result["identical"]:
        out.append("**Identical**: same keys and outputs.")
        return "\n".join(out)
    if result["why"]:
        out += ["## Why", ""]
        out += ["- " + " differs because ".join(_code(part) if i < len(c) - 1 else _md(part)
                                                for i, part in enumerate(c)) for c in result["why"]]
        out.append("")
    for node in result["nodes"]:
        _md_node(node, out)
    return "\n".join(out).rstrip()


def _md_node(node: dict, out: list) -> None:
    o, n = node["old"], node["new"]
    out += [f"## {node['target']}", ""]
    line = f"key {_code(_short(o['key']))} → {_code(_short(n['key']))}" if o["key"] != n["key"] else \
        f"key {_code(_short(n['key']))} (same)"
    line += f", output {_code(_short(o['digest']))} → {_code(_short(n['digest']))}" if o["digest"] != n["digest"] \
        else f", output {_code(_short(n['digest']))} (same)"
    if o["record"] or n["record"]:
        line += f"; records {_code(o['record'] or '-')} → {_code(n['record'] or '-')}"
    out += [line, ""]

    def table(title, header, rows):
        if rows:
            out.extend([f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
            out.extend("| " + " | ".join(r) + " |" for r in rows)
            out.append("")

    rows = []
    if node["rule"]:
        rows.append(["rule", _code(show(node["rule"]["old"])), _code(show(node["rule"]["new"]))])
    if node["seed"]:
        rows.append(["seed", _code(node["seed"]["old"]), _code(node["seed"]["new"])])
    rows += [[_code(p["name"]), _code(show(p["old"])) if p["change"] != "added" else "(absent)",
              _code(show(p["new"])) if p["change"] != "removed" else "(absent)"] for p in node["params"]]
    table("Params", ["param", "old", "new"], rows)
    rows = []
    for d in node["data"]:
        for what in ("changed", "added", "removed"):
            names, more = _names(d[what])
            rows += [[_code(d["input"]), _code(name), what] for name in names]
            if more:
                rows.append([_code(d["input"]), f"... {more} more", what])
    if rows:
        out += [f"**Data** {_code(d['input'])}: {_describe_files(d)}" for d in node["data"]] + [""]
    table("Data files", ["input", "file", "change"], rows)
    for c in node["code"]:
        name = f"{_code(c['old_path'])} → {_code(c['path'])}" if c["change"] == "replaced" else _code(c["path"])
        out.append(f"**Code** {name} ({_code(c['input'])}): {c['change']}"
                   + (f", digest {_code(_short(c['old']))} → {_code(_short(c['new']))}; {c['note']}" if c["diff"] is None else ""))
        out.append("")
        if c["diff"]:
            lines = c["diff"].splitlines()
            out += ["```diff", *lines[:DIFF_LINES]]
            if len(lines) > DIFF_LINES:
                out.append(f"... {len(lines) - DIFF_LINES} more lines")
            out += ["```", ""]
    rows = []
    for dep in node["dependencies"]:
        anchor = re.sub(r"[^a-z0-9 -]", "", dep["target"].lower()).replace(" ", "-")
        why = (f"see [{dep['target']}](#{anchor})" if dep["node"] else dep["note"] or dep["change"])
        rows.append([_code(dep["target"]), _code(dep["input"]), _code(_short(dep["old"])), _code(_short(dep["new"])), why])
    table("Dependencies", ["target", "input", "old output", "new output", ""], rows)
    table("Environment", ["name", "old", "new", "in key"],
          [[_code(f"{e['kind']} {e['name']}"), _code(show(e["old"])), _code(show(e["new"])),
            "yes" if e["keyed"] else "no"] for e in node["environment"]])
    outputs = node.get("outputs")
    if outputs and "note" in outputs:
        out += [f"**Outputs**: {outputs['note']}", ""]
    elif outputs:
        out += [f"**Outputs**: {_describe_files(outputs)}, {outputs['bytes_old']} → {outputs['bytes_new']} bytes", ""]
        rows = []
        for what in ("changed", "added", "removed"):
            names, more = _names(outputs[what])
            rows += [[_code(name), what] for name in names] + ([[f"... {more} more", what]] if more else [])
        table("Output files", ["file", "change"], rows)
    table("stats.json", ["value", "old", "new", "Δ"],
          [[_code(s["name"]), _num(s["old"]), _num(s["new"]), _signed(s["delta"])] for s in node["stats"][:LIST_LIMIT]])
    w = node["weights"]
    if w and "note" in w:
        out += [f"**Weights**: {w['note']}", ""]
    elif w:
        counts = ", ".join(f"{v} {k}" for k, v in w["counts"].items() if v)
        out += [f"**Weights**: {counts}; ‖new − old‖ / ‖old‖ = {_num(w['total']['relative'])}", ""]
        by_name = {t["name"]: t for t in w["tensors"]}
        table("Most-changed tensors", ["tensor", "shape", "relative", "‖new − old‖", "‖old‖"],
              [[_code(name), _code(by_name[name]["shape_new"]), _num(by_name[name]["relative"]),
                _num(by_name[name]["diff_l2"]), _num(by_name[name]["old_l2"])] for name in w["top"]]
              + [[_code(t["name"]), f"{_code(t['shape_old'])} → {_code(t['shape_new'])}", t["change"], "", ""]
                 for t in w["tensors"] if t["change"] in ("reshaped", "added", "removed", "unsupported")])
        table("Most-changed layers", ["layer", "relative", "‖new − old‖", "changed / tensors"],
              [[_code(r["layer"]), _num(r["relative"]), _num(r["diff_l2"]), f"{r['changed']} / {r['tensors']}"]
               for r in w["layers"]])
    table("Metrics", ["metric", "old", "new", "Δ"],
          [[_code(m["name"]), _interval_text(m["old"], m.get("old_interval")),
            _interval_text(m["new"], m.get("new_interval")),
            _signed(m.get("delta")) + (" (intervals do not overlap)" if m.get("overlap") is False else "")]
           for m in node["metrics"]])
