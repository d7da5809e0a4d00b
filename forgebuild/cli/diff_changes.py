"""What differs between two builds of one target, as plain data: the parts of a `forgebuild diff` node.

From the two key materials (through `planning.change.diff`): the rule, params, seed, dependencies and
environment; the causes (the target's own reasons to differ) and the chains of causes down the
dependencies; from the two outputs: the changed numbers of `stats.json`, `metrics.json` and an eval's
`report.json`.
"""
from __future__ import annotations

from forgebuild.cli.tensors import finite
from forgebuild.hashing import bytes_digest
from forgebuild.planning.change import Change, flatten, show, values

RECORDED = ("python", "forgebuild", "platform", "git_commit")  # kept in a record, not in its key


def side_info(side: dict) -> dict:
    if side["kind"] == "lock":
        return {"arg": side["label"], "kind": "lock", "path": side["path"],
                "targets": len(side["lock"]["targets"])}
    r = side["record"]
    return {"arg": side["label"], "kind": "record", "id": r.get("id"), "target": r.get("target"),
            "key": r.get("key"), "digest": r.get("digest"), "started": r.get("started"),
            "git_commit": r.get("git_commit")}


def build_info(build: dict) -> dict:
    r = build.get("record") or {}
    return {"record": r.get("id"), "key": build.get("key"), "digest": build.get("digest"),
            "started": r.get("started")}


def rule_change(old: dict, new: dict) -> dict | None:
    fields = ("format", "rule", "version")
    if all(old.get(f) == new.get(f) for f in fields):
        return None
    return {"old": {f: old.get(f) for f in fields}, "new": {f: new.get(f) for f in fields}}


def param_changes(changes: list[Change]) -> list[dict]:
    """{"name", "change", "old", "new"} for each param of the diff (dotted names)."""
    return [{"name": c.name, "change": c.change, "old": c.old, "new": c.new} for c in changes if c.kind == "param"]


def value_changes(old, new) -> list[dict]:
    """{"name", "old", "new"} for each top-level value that differs (a lock file's toolchain)."""
    old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
    return [{"name": c.name, "old": c.old, "new": c.new} for c in values("toolchain", old, new)]


def dependency_inputs(old: dict, new: dict):
    """(input key, target, old digest, new digest) for each dependency whose output differs."""
    for key in sorted(old.keys() | new.keys()):
        before = {n: d for kind, n, d in old.get(key, []) if kind == "target"}
        after = {n: d for kind, n, d in new.get(key, []) if kind == "target"}
        for name in sorted(before.keys() | after.keys()):
            if before.get(name) != after.get(name):
                yield key, name, before.get(name), after.get(name)


def dependency_changes(old, new):
    for _, name, od, nd in dependency_inputs((old or {}).get("inputs") or {}, (new or {}).get("inputs") or {}):
        yield name, od, nd


def environment_changes(old: dict, new: dict) -> list[dict]:
    """Libraries and declared variables of the two keys, then what the two records say of the machine."""
    eo, en = (old["material"].get("env") or {}), (new["material"].get("env") or {})
    va, vb = eo.get("vars") or {}, en.get("vars") or {}
    changes = values("library", eo.get("libraries") or {}, en.get("libraries") or {})
    # a lock file keeps a digest of each value: compare like with like
    changes += values("variable", _redacted_like(va, vb), _redacted_like(vb, va))
    ro, rn = old.get("record") or {}, new.get("record") or {}
    if ro and rn:
        changes += [Change("recorded", name, "changed", ro[name], rn[name]) for name in RECORDED
                    if name in ro and name in rn and ro[name] != rn[name]]
    return [{"kind": c.kind, "name": c.name, "old": c.old, "new": c.new, "keyed": c.kind != "recorded"}
            for c in changes]


def _redacted_like(values: dict, other: dict) -> dict:
    out = dict(values)
    for name, value in values.items():
        theirs = other.get(name)
        if value is not None and isinstance(theirs, str) and theirs.startswith("xxh3:") and not str(value).startswith("xxh3:"):
            out[name] = "xxh3:" + bytes_digest(str(value).encode())
    return out


def causes(node: dict) -> list[str]:
    """The target's own reasons to differ, in the words of `forgebuild explain`."""
    out = []
    if node["rule"]:
        o, n = node["rule"]["old"], node["rule"]["new"]
        out.append(f"rule {o['rule']} version {o['version']} -> {n['rule']} version {n['version']}"
                   if o["rule"] != n["rule"] else f"rule {n['rule']} version {o['version']} -> {n['version']}"
                   if o["version"] != n["version"] else f"key format {o['format']} -> {n['format']}")
    for p in node["params"]:
        out.append(Change("param", p["name"], p["change"], p["old"], p["new"]).text())
    if node["seed"]:
        out.append(f"seed {node['seed']['old']} -> {node['seed']['new']}")
    for d in node["data"]:
        names = [(n, w) for w in ("changed", "added", "removed") for n in d[w]]
        if len(names) <= 3:
            out += [f"{n} {w}" for n, w in names]
        else:
            counts = ", ".join(f"{len(d[w])} {w}" for w in ("changed", "added", "removed") if d[w])
            out.append(f"{d['input']}: {counts} (of {d['files_old']} -> {d['files_new']} files)")
    for c in node["code"]:
        out.append(f"{c['input']}: {c['old_path']} replaced by {c['path']}" if c["change"] == "replaced"
                   else f"{c['path']} {c['change']}")
    for e in node["environment"]:
        if e["keyed"]:
            out.append(f"{e['kind']} {e['name']} {show(e['old'])} -> {show(e['new'])}")
    if node["state"] == "not-reproduced":
        out.append("same key, different output (the build is not reproducible)")
    return out


def chains(node: dict, nodes: dict, seen=None) -> list[list[str]]:
    """Every path from a target to a leaf cause: [target, dependency..., cause]."""
    seen = seen or set()
    if node["id"] in seen:
        return []
    seen = seen | {node["id"]}
    if node["state"] == "identical":
        return []
    label = node["target"] if "target_old" not in node else f"{node['target_old']} -> {node['target']}"
    out = [[label, c] for c in node["causes"]]
    for dep in node["dependencies"]:
        if dep["node"]:
            below = chains(nodes[dep["node"]], nodes, seen)
            out += [[label, *c] for c in below] or [[label, f"{dep['target']} differs"]]
        elif dep["change"] != "changed":
            out.append([label, f"dependency {dep['target']} {dep['change']}"])
        else:
            out.append([label, f"{dep['target']} differs ({dep['note']})"])
    if not out and node["state"] != "same-output":
        out.append([label, "key changed"])
    return out


# ------------------------------------------------------------------ numbers: stats, metrics

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number_changes(old, new) -> list[dict]:
    """Numeric (and boolean) leaves that differ, flattened: {"name", "old", "new", "delta"}."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    before, after = flatten(old), flatten(new)
    out = []
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a == b or not (_number(a) or _number(b) or isinstance(a, bool) or isinstance(b, bool)):
            continue
        delta = b - a if _number(a) and _number(b) else None
        out.append({"name": name, "old": a, "new": b, "delta": finite(delta)})
    return out


def report_changes(old: dict, new: dict) -> list[dict]:
    """An eval's metrics, model by model, with their 95% intervals."""
    out = []
    ro, rn = old.get("results") or {}, new.get("results") or {}
    for model in sorted(ro.keys() | rn.keys()):
        mo, mn = ro.get(model) or {}, rn.get(model) or {}
        for metric in sorted(mo.keys() | mn.keys()):
            a, b = mo.get(metric) or {}, mn.get(metric) or {}
            if a == b:
                continue
            va, vb = a.get("value"), b.get("value")
            entry = {"name": f"{model} {metric}", "model": model, "metric": metric, "old": va, "new": vb,
                     "delta": finite(vb - va) if _number(va) and _number(vb) else None,
                     "old_interval": [a.get("low"), a.get("high")] if a.get("low") is not None else None,
                     "new_interval": [b.get("low"), b.get("high")] if b.get("low") is not None else None,
                     "n_old": a.get("n"), "n_new": b.get("n")}
            if entry["old_interval"] and entry["new_interval"]:
                (la, ha), (lb, hb) = entry["old_interval"], entry["new_interval"]
                entry["overlap"] = not (hb < la or lb > ha)
            out.append(entry)
    if old.get("passed") != new.get("passed"):
        out.append({"name": "gates passed", "old": old.get("passed"), "new": new.get("passed"), "delta": None})
    return out
