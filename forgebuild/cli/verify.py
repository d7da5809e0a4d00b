"""`forgebuild verify`: is every cached output what its digest says, and does it rebuild bit for bit?

    forgebuild verify [TARGET...]      re-hash the cached outputs: is every blob what its digest says?
    forgebuild verify --rebuild ...    rebuild the closure in a scratch workspace, ignoring every
                                       cache, and compare the outputs bit for bit (per file, and
                                       per tensor for safetensors files that differ)

The executor is imported only when `verify --rebuild` needs it, and numpy only when it compares the
tensors of two safetensors files (`tensors` reads them without torch).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import tempfile
import time

from forgebuild.cli.integrity import corrupt_outputs, entry_problems, not_built, prefix, repair_line
from forgebuild.cli.tensors import compare_safetensors
from forgebuild.errors import StoreError
from forgebuild.hashing import file_digest

TEXT_DIFF_LIMIT = 4 << 20  # files up to this size get "first difference on line N"
TENSOR_LINES = 20  # differing tensors printed per file (--json has them all)


def cmd_verify(args, session, report) -> int:
    decisions = session.decide(session.resolve(args.targets))
    if args.rebuild:
        problems = not_built(args, decisions, "verify")
        if problems:
            print("\n".join(problems), file=sys.stderr)
            if args.json:
                report({"event": "summary", "ok": False, "error": problems[-1][len("forgebuild: "):], "targets": []})
            return 1
        return _verify_rebuild(args, session, decisions, report)
    return _verify_cache(args, session, decisions, report)


def _say(args, line: str) -> None:
    if not args.json and not (args.quiet and not line.startswith(("CORRUPT", "DIFFERS", "FAILED", "verify:", "  "))):
        print(line, flush=True)


def _verify_cache(args, session, decisions, report) -> int:
    """Re-hash every blob (and every materialised copy that is not a hardlink of it)."""
    started = time.time()
    store, ws = session.store, session.workspace
    hashed: dict[str, str] = {}  # path -> digest: a blob shared by several targets is read once
    bad_blobs, bad_targets, unbuilt, summary = [], [], [], []
    files = 0

    def digest_of(path: str) -> str:
        if path not in hashed:
            hashed[path] = file_digest(path)
        return hashed[path]

    width = max((len(a) for a in decisions), default=0)
    for address, d in decisions.items():
        if d.state != "fresh":
            unbuilt.append(address)
            _say(args, f"{d.state:<8}{address:<{width}}  not built ({'; '.join(d.reasons)})")
            summary.append({"target": address, "ok": False, "state": d.state, "digest": None, "problems": []})
            continue
        problems = []
        try:
            entry = store.get_action(d.key, address)
        except StoreError as e:
            entry, problems = None, [{"path": None, "problem": "entry", "message": str(e)}]
        if entry is not None:
            files += len(entry["files"])
            problems += entry_problems(store, ws, address, entry, digest_of)
            bad_blobs += [p["blob"] for p in problems if p.get("blob") == store.blob_path(p.get("digest", ""))]
        digest = entry["digest"] if entry else d.digest
        if problems:
            bad_targets.append(address)
            _say(args, f"{'CORRUPT':<8}{address:<{width}}  output {digest}")
            for p in problems:
                _say(args, f"  {p['path'] + ': ' if p['path'] else ''}{p['message']}")
        else:
            n = len(entry["files"])
            _say(args, f"{'ok':<8}{address:<{width}}  {digest[:12]}  {n} file{'s' if n != 1 else ''}")
        if args.json:
            report({"event": "verified", "target": address, "digest": digest, "match": not problems,
                    "files": problems})
        summary.append({"target": address, "ok": not problems, "state": "fresh", "digest": digest,
                        "problems": problems})
    seconds = time.time() - started
    ok = not bad_targets and not unbuilt
    if ok:
        final = f"verified: {len(decisions)} target{'s' if len(decisions) != 1 else ''}, {files} cached file" \
                f"{'s' if files != 1 else ''} match their digests ({seconds:.2f}s)"
    else:
        parts = []
        if bad_targets:
            parts.append(f"{len(bad_targets)} of {len(decisions)} targets have corrupt cache entries "
                         f"({', '.join(bad_targets)})")
        if unbuilt:
            parts.append(f"{len(unbuilt)} not built ({', '.join(unbuilt)})")
        final = "verify: " + "; ".join(parts)
        if bad_targets:
            final += f"\nrepair: {repair_line(args, bad_targets, bad_blobs)}"
        if unbuilt:
            final += f"\nbuild: {prefix(args)} {' '.join(unbuilt)}"
    if args.json:
        if not ok:
            print(final, file=sys.stderr)
        report({"event": "summary", "ok": ok, "targets": summary})
    elif not (args.quiet and ok):
        print(final)
    return 0 if ok else 1


def _sandboxed(plan, scratch: str):
    """The plan with every `release` target publishing into the scratch folder: a verifying
    rebuild must not overwrite what production reads. Its artifact does not hold `to`."""
    targets = dict(plan.targets)
    for address, target in plan.targets.items():
        if target.kind == "release" and "to" in target.params:
            to = os.path.relpath(os.path.join(scratch, "release", address.split(":", 1)[1]), plan.root)
            targets[address] = dataclasses.replace(target, values={**target.values, "to": to})
    return dataclasses.replace(plan, targets=targets)


def _verify_rebuild(args, session, decisions, report) -> int:
    """Rebuild the closure from its sources in a scratch workspace and store, then compare."""
    from forgebuild.store.local import Store
    from forgebuild.engine.executor import Executor
    from forgebuild.hashing import StatCache
    from forgebuild.store.workspace import Workspace, remove_tree

    started = time.time()
    ws = session.workspace
    os.makedirs(ws.path("scratch"), exist_ok=True)
    # under scratch/: `clean` removes it and `gc` collects it if a killed verify left it behind
    scratch = tempfile.mkdtemp(prefix="verify-", dir=ws.path("scratch"))

    def relay(event: dict) -> None:
        event = {k: v for k, v in event.items() if k != "log"}  # the log is in the scratch folder, removed
        if event.get("reason") == "forced (-B)":
            event["reason"] = "verify: rebuilding without caches"
        if args.json:
            report({"event": "rebuild", "stage": event.pop("event"), **event})
        elif event["event"] in ("start", "built", "failed", "skipped"):
            report(event)

    try:
        sandbox_ws, sandbox_store = Workspace(session.plan.root, scratch), Store(scratch)
        jobs = session.plan.settings.get("jobs") or 1
        executor = Executor(_sandboxed(session.plan, scratch), sandbox_ws, sandbox_store, StatCache(None), relay,
                            lambda: session.rules, jobs=jobs, keep_going=True, force=True)
        results = {r.target: r for r in executor.run(list(decisions), {})}
        outcomes = []
        for address, d in decisions.items():
            r = results[address]
            outcome = {"target": address, "digest": d.digest, "rebuilt_digest": r.digest, "key": d.key,
                       "rebuilt_key": r.key, "match": r.digest == d.digest, "files": []}
            if r.digest is None:
                outcome["error"] = f"rebuild {r.action}: {r.reason}"
            elif not outcome["match"]:
                old = session.store.get_action(d.key, address)
                new = sandbox_store.get_action(r.key, address)
                if old is not None and new is not None:
                    outcome["files"] = compare_manifests(old, session.store, new, sandbox_store)
                differed = [dep for dep in session.plan.targets[address].deps
                            if results[dep].digest != decisions[dep].digest]
                if differed:
                    outcome["inputs_differed"] = differed
            outcomes.append(outcome)
    finally:
        remove_tree(scratch)
    for c in corrupt_outputs(session, {o["target"]: decisions[o["target"]] for o in outcomes if o["match"]},
                             file_digest):
        # the rebuild matches the digests the cache names, but the stored bytes are no longer those
        o = next(o for o in outcomes if o["target"] == c["target"])
        o.update(match=False, corrupt=c["problems"])
    seconds = time.time() - started
    width = max((len(a) for a in decisions), default=0)
    for o in outcomes:
        if args.json:
            report({"event": "verified", **o})
        else:
            for line in outcome_lines(o, width):
                _say(args, line)
    same = [o["target"] for o in outcomes if o["match"]]
    differ = [o["target"] for o in outcomes if not o["match"] and "error" not in o and "corrupt" not in o]
    failed = [o["target"] for o in outcomes if "error" in o]
    corrupt = [o["target"] for o in outcomes if "corrupt" in o]
    ok = len(same) == len(outcomes)
    n = len(outcomes)
    if ok:
        final = f"verified: {n} target{'s' if n != 1 else ''} rebuilt bit for bit ({seconds:.2f}s)"
    else:
        parts = []
        if corrupt:
            parts.append(f"{len(corrupt)} of {n} targets have corrupt cache entries ({', '.join(corrupt)})")
        if differ:
            parts.append(f"{len(differ)} of {n} targets differ after rebuilding without caches ({', '.join(differ)})")
        if failed:
            parts.append(f"{len(failed)} could not be rebuilt ({', '.join(failed)})")
        final = f"verify: {'; '.join(parts)} ({seconds:.2f}s)"
    if args.json:
        if not ok:
            print(final, file=sys.stderr)
        report({"event": "summary", "ok": ok, "seconds": round(seconds, 3), "targets": [
            {k: o[k] for k in ("target", "match", "digest", "rebuilt_digest")} for o in outcomes]})
    elif not (args.quiet and ok):
        print(final)
    return 0 if ok else 1


def outcome_lines(o: dict, width: int = 0) -> list[str]:
    """The console lines of one target's comparison."""
    address = o["target"]
    if o["match"]:
        return [f"{'same':<8}{address:<{width}}  {o['digest'][:12]}"]
    if "error" in o:
        return [f"{'FAILED':<8}{address:<{width}}  not verified: {o['error']}"]
    if "corrupt" in o:
        return [f"{'CORRUPT':<8}{address:<{width}}  output {o['digest']}",
                *(f"  {p['path'] + ': ' if p['path'] else ''}{p['message']}" for p in o["corrupt"])]
    head = f"{'DIFFERS':<8}{address:<{width}}  {o['digest'][:12]} -> {o['rebuilt_digest'][:12]}"
    if o.get("inputs_differed"):
        head += f"  (its input {', '.join(o['inputs_differed'])} differed too)"
    lines = [head]
    for f in o["files"]:
        lines += ["  " + line for line in file_lines(f)]
    return lines


def file_lines(f: dict) -> list[str]:
    path, change = f["path"], f["change"]
    if change == "added":
        return [f"{path}: only in the rebuild ({f['rebuilt_size']} bytes)"]
    if change == "removed":
        return [f"{path}: missing from the rebuild ({f['size']} bytes before)"]
    if change == "mode":
        return [f"{path}: executable bit {'set' if f['rebuilt_x'] else 'cleared'}"]
    sizes = f"{f['size']} bytes" if f["size"] == f["rebuilt_size"] else f"{f['size']} -> {f['rebuilt_size']} bytes"
    notes = [sizes]
    if f.get("first_line"):
        notes.append(f"first difference on line {f['first_line']}")
    if "tensors" in f:
        n = len(f["tensors"])
        notes.append(f"{n} tensor{'s differ' if n != 1 else ' differs'}, {f['equal']} equal")
        if f.get("metadata_changed"):
            notes.append("header metadata differs")
    if f.get("tensor_error"):
        notes.append(f"tensors not compared: {f['tensor_error']}")
    lines = [f"{path}: changed ({'; '.join(notes)})"]
    ranked = sorted(f.get("tensors", []), key=lambda t: -(t.get("relative") or t.get("max_abs_diff") or math.inf))
    for t in ranked[:TENSOR_LINES]:
        lines.append("  " + tensor_line(t))
    if len(ranked) > TENSOR_LINES:
        lines.append(f"  ... and {len(ranked) - TENSOR_LINES} more (--json lists every one)")
    return lines


def tensor_line(t: dict) -> str:
    name, change = t["name"], t["change"]
    if change == "added":
        return f"{name}: only in the rebuild {t['rebuilt_shape']} {t['rebuilt_dtype']}"
    if change == "removed":
        return f"{name}: missing from the rebuild (was {t['shape']} {t['dtype']})"
    if change == "shape":
        return f"{name}: shape {t['shape']} -> {t['rebuilt_shape']}"
    line = f"{name}: {t['differing']} of {t['numel']} values differ"
    if change == "dtype":
        line = f"{name}: dtype {t['dtype']} -> {t['rebuilt_dtype']}; {t['differing']} of {t['numel']} values differ"
    line += f"; max |diff| {_g(t['max_abs_diff'])}, L2 {_g(t['l2_diff'])}, relative {_g(t['relative'])}"
    if t.get("nan_mismatch"):
        line += f"; {t['nan_mismatch']} NaN in one build only"
    return line


def _g(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


# ------------------------------------------------------------------ comparisons

def compare_manifests(old: dict, old_store, new: dict, new_store) -> list[dict]:
    """Per-file differences between two outputs' manifests (with per-tensor detail for safetensors)."""
    before = {f["path"]: f for f in old["files"]}
    after = {f["path"]: f for f in new["files"]}
    found = []
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is None:
            found.append({"path": path, "change": "added", "rebuilt_digest": b["digest"], "rebuilt_size": b["size"]})
        elif b is None:
            found.append({"path": path, "change": "removed", "digest": a["digest"], "size": a["size"]})
        elif a["digest"] != b["digest"]:
            item = {"path": path, "change": "changed", "digest": a["digest"], "rebuilt_digest": b["digest"],
                    "size": a["size"], "rebuilt_size": b["size"]}
            pa, pb = old_store.blob_path(a["digest"]), new_store.blob_path(b["digest"])
            if os.path.exists(pa) and os.path.exists(pb):
                if path.endswith(".safetensors"):
                    try:
                        item.update(compare_safetensors(pa, pb))
                    except Exception as e:  # a damaged header: the file-level difference still stands
                        item["tensor_error"] = f"{type(e).__name__}: {e}"
                else:
                    line = first_different_line(pa, pb)
                    if line:
                        item["first_line"] = line
            found.append(item)
        elif bool(a.get("x")) != bool(b.get("x")):
            found.append({"path": path, "change": "mode", "x": bool(a.get("x")), "rebuilt_x": bool(b.get("x"))})
    return found


def first_different_line(a: str, b: str) -> int | None:
    """For two text files (no NUL byte, both under TEXT_DIFF_LIMIT): the first line that differs."""
    if max(os.path.getsize(a), os.path.getsize(b)) > TEXT_DIFF_LIMIT:
        return None
    with open(a, "rb") as fa, open(b, "rb") as fb:
        da, db = fa.read(), fb.read()
    if b"\0" in da[:8192] or b"\0" in db[:8192]:
        return None
    la, lb = da.split(b"\n"), db.split(b"\n")
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return i + 1
    return min(len(la), len(lb)) + 1 if len(la) != len(lb) else None
