"""Forgefile.lock, `build --frozen` and `verify`.

    forgebuild lock [TARGET...]        every target's action key, output digest and key material,
                                       and the toolchain's versions, in a JSON file beside the Forgefile
    forgebuild --frozen [TARGET...]    exit 1 before building when a key differs from the lock
    forgebuild verify [TARGET...]      re-hash the cached outputs: is every blob what its digest says?
    forgebuild verify --rebuild ...    rebuild the closure in a scratch workspace, ignoring every
                                       cache, and compare the outputs bit for bit (per file, and
                                       per tensor for safetensors files that differ)

The lock file is JSON with sorted keys and a trailing newline: relocking an
unchanged project writes the same bytes. Declared environment variables enter
keys by value; the lock stores only a digest of each value (a lock file is
meant to be committed, a variable's value may be a secret), so `--frozen`
says that a variable changed, not what it was.

Imported only by the `lock` and `verify` verbs and `build --frozen`; the
executor, safetensors and torch only when `verify --rebuild` needs them.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import sys
import tempfile
import time
import uuid

from forgebuild import __version__
from forgebuild.errors import StoreError, UsageError
from forgebuild.hashing import bytes_digest, file_digest, tree_digest
from forgebuild.planning.keys import action_key, explain, material
from forgebuild.planning.plan import display_path

LOCK_FORMAT = 1
# The libraries whose versions can change what a build produces (recorded when installed).
TOOLCHAIN = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "safetensors", "tokenizers",
             "pyarrow", "lm_eval")
TEXT_DIFF_LIMIT = 4 << 20  # files up to this size get "first difference on line N"
TENSOR_LINES = 20  # differing tensors printed per file (--json has them all)


# ------------------------------------------------------------------ the lock file

def lock_path(args, session) -> str:
    """--lock FILE, else `<Forgefile's name without .toml>.lock` beside it: Forgefile.toml -> Forgefile.lock."""
    given = getattr(args, "lock", None)
    if given:
        return os.path.abspath(given)
    stem = os.path.basename(session.plan.forgefile)
    stem = stem[: -len(".toml")] if stem.endswith(".toml") else stem
    return os.path.join(session.plan.root, f"{stem}.lock")


def toolchain() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "forgebuild": __version__}
    for name in TOOLCHAIN:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def redact(mat: dict | None) -> dict | None:
    """The key material as the lock keeps it: declared variables' values replaced by their digests."""
    if mat is None:
        return None
    out = copy.deepcopy(mat)
    env_vars = out.get("env", {}).get("vars", {})
    for name, value in env_vars.items():
        if value is not None and not str(value).startswith("xxh3:"):
            env_vars[name] = "xxh3:" + bytes_digest(str(value).encode())
    return out


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def read_lock(path: str) -> dict:
    """The lock file, checked; UsageError (exit 2) when it is missing or not a lock file."""
    shown = display_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"no {shown}: write it with `forgebuild lock` once the targets are built") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{shown}: not a forgebuild lock file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), dict) \
            or not all(isinstance(t, dict) and isinstance(t.get("key"), str) for t in doc["targets"].values()):
        raise UsageError(f"{shown}: not a forgebuild lock file (no \"targets\" with keys)")
    if doc.get("format") != LOCK_FORMAT:
        raise UsageError(f"{shown}: lock format {doc.get('format')!r}; this forgebuild reads format {LOCK_FORMAT}")
    return doc


def _prefix(args) -> str:
    """`forgebuild` plus the -f option the user gave, for the commands we suggest."""
    return "forgebuild" + (f" -f {args.file}" if getattr(args, "file", None) else "")


def _not_built(args, decisions, verb: str) -> list[str]:
    """Lines naming the targets of the closure that are not fresh; [] when all are."""
    unbuilt = [d for d in decisions.values() if d.state != "fresh"]
    if not unbuilt:
        return []
    lines = [f"forgebuild: cannot {verb} {d.address}: it is {d.state} ({'; '.join(d.reasons)})" for d in unbuilt]
    them = "it" if len(unbuilt) == 1 else "them"
    lines.append(f"forgebuild: build {them} first: {_prefix(args)} {' '.join(d.address for d in unbuilt)}")
    return lines


def cmd_lock(args, session, report) -> int:
    path = lock_path(args, session)
    shown = display_path(path)
    decisions = session.decide(session.resolve(args.targets))
    problems = _not_built(args, decisions, "lock")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        if args.json:
            report({"event": "summary", "ok": False, "error": problems[-1][len("forgebuild: "):],
                    "lock": path, "unbuilt": [d.address for d in decisions.values() if d.state != "fresh"]})
        return 1
    old_text = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old_text = f.read()
    old_entries, unreadable = {}, None
    if old_text is not None:
        try:
            old_entries = read_lock(path)["targets"]
        except UsageError as e:  # overwritten whole; merged into only when readable
            unreadable = e
    entries = {}
    if args.targets:  # lock these targets (and what they depend on); keep the other entries
        if unreadable is not None:
            raise unreadable
        entries = {a: e for a, e in old_entries.items() if a in session.plan.targets}
    for address, d in decisions.items():
        entries[address] = {"key": d.key, "digest": d.digest, "material": redact(d.material)}
    doc = {"format": LOCK_FORMAT, "forgefile": os.path.basename(session.plan.forgefile),
           "toolchain": toolchain(), "targets": entries}
    text = dumps(doc)
    written = text != old_text
    if written:
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    new = sorted(a for a in decisions if a not in old_entries)
    changed = sorted(a for a in decisions if a in old_entries and old_entries[a].get("key") != entries[a]["key"])
    if args.json:
        report({"event": "summary", "ok": True, "lock": path, "written": written, "new": new, "changed": changed,
                "targets": [{"target": a, "key": e["key"], "digest": e["digest"]} for a, e in sorted(entries.items())]})
    elif not args.quiet:
        n = len(entries)
        what = f"{n} target{'s' if n != 1 else ''}"
        if not written:
            print(f"{shown} is up to date ({what})")
        else:
            notes = []
            if old_entries and new:
                notes.append(f"{len(new)} new")
            if changed:
                notes.append(f"{len(changed)} changed")
            print(f"wrote {shown} ({what}{', ' + ', '.join(notes) if notes else ''})")
    return 0


# ------------------------------------------------------------------ --frozen

def _reasons(locked_material: dict | None, mat: dict) -> list[str]:
    """What changed between the lock's material and the current one (declared variables by name only)."""
    if locked_material is None:
        return ["key changed"]
    current = redact(mat)
    reasons = explain(locked_material, current)
    before = locked_material.get("env", {}).get("vars", {})
    after = current["env"]["vars"]
    out = []
    for reason in reasons:
        name = reason.split(" ", 2)[1] if reason.startswith("environment ") else None
        if name is not None and name in (before.keys() | after.keys()):
            if before.get(name) is None:
                reason = f"environment {name} set"
            elif after.get(name) is None:
                reason = f"environment {name} unset"
            else:
                reason = f"environment {name} changed"
        out.append(reason)
    return out


def compare_with_lock(session, decisions, lock: dict) -> list[dict]:
    """Every difference between the targets' keys (or outputs) and the lock, and toolchain drift.

    A target behind a dependency that is not fresh has no key yet: it is keyed as the executor
    will key it if that dependency rebuilds to the output the lock recorded (its own params,
    sources and environment are what is compared; the dependency is checked on its own).
    """
    plan, locked = session.plan, lock["targets"]
    problems = []
    for address, d in decisions.items():
        entry = locked.get(address)
        if entry is None:
            problems.append({"target": address, "problem": "unlocked", "reasons": ["not in the lock"],
                             "key": d.key, "locked_key": None})
            continue
        key, mat = d.key, d.material
        if key is None:
            digests = {}
            for dep in plan.targets[address].deps:
                dd = decisions[dep]
                digests[dep] = dd.digest if dd.state == "fresh" else (locked.get(dep) or {}).get("digest")
            if None in digests.values():
                continue  # a dependency is not in the lock: reported as its own problem
            mat = material(plan, plan.targets[address], session.stat_cache, digests)
            key = action_key(mat)
        if key != entry["key"]:
            problems.append({"target": address, "problem": "key", "reasons": _reasons(entry.get("material"), mat),
                             "key": key, "locked_key": entry["key"]})
        elif d.state == "fresh" and entry.get("digest") and d.digest != entry["digest"]:
            problems.append({"target": address, "problem": "output", "key": key, "locked_key": entry["key"],
                             "reasons": [f"same key, but its cached output is {d.digest} and the lock has "
                                         f"{entry['digest']}: the stage did not reproduce the locked output"]})
    problems += toolchain_drift(lock)
    return problems


def toolchain_drift(lock: dict) -> list[dict]:
    before, after = lock.get("toolchain") or {}, toolchain()
    reasons = [f"{name} {before.get(name) or 'not installed'} -> {after.get(name) or 'not installed'}"
               for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]
    return [{"target": None, "problem": "toolchain", "reasons": reasons}] if reasons else []


def _problem_lines(problems: list[dict], shown: str) -> list[str]:
    lines = []
    for p in problems:
        for reason in p["reasons"]:
            if p["problem"] == "unlocked":
                lines.append(f"forgebuild: {p['target']} is not in {shown}")
            elif p["problem"] == "toolchain":
                lines.append(f"forgebuild: toolchain differs from {shown}: {reason}")
            else:
                lines.append(f"forgebuild: {p['target']} differs from {shown}: {reason}")
    return lines


def _report_frozen(args, path: str, problems: list[dict], report, after_build: bool) -> None:
    shown = display_path(path)
    lines = _problem_lines(problems, shown)
    named = [p["target"] for p in problems if p["target"]]
    if named:
        what = f"{', '.join(named)} differ{'s' if len(named) == 1 else ''} from {shown}"
        what += " (and the toolchain)" if len(named) < len(problems) else ""
    else:
        what = f"the toolchain differs from {shown}"
    if after_build:
        tail = f"forgebuild: --frozen: {what} after building"
    else:
        tail = f"forgebuild: --frozen: {what}; nothing was built"
    tail += f" (if the changes are intended: build without --frozen, then `{_prefix(args)} lock`)"
    print("\n".join(lines + [tail]), file=sys.stderr)
    if args.json:
        for p in problems:
            report({"event": "frozen", **p})
        if not after_build:  # after a build, cmd_build's own summary (ok: false) is the last line
            report({"event": "summary", "ok": False, "error": tail[len("forgebuild: "):], "frozen": problems,
                    "targets": []})


def frozen_problems(args, session, decisions, report) -> bool:
    """`build --frozen`, before building: True when some key differs from the lock, or a cached output
    that the build would use is corrupt (reported)."""
    path = lock_path(args, session)
    problems = compare_with_lock(session, decisions, read_lock(path))
    if problems:
        _report_frozen(args, path, problems, report, after_build=False)
        return True
    corrupt = corrupt_outputs(session, decisions, session.stat_cache.digest)  # a blob unchanged since: a stat()
    if corrupt:
        _report_corrupt(args, corrupt, report)
    return bool(corrupt)


def _report_corrupt(args, corrupt: list[dict], report) -> None:
    lines = [f"forgebuild: {c['target']}: {p['path'] + ': ' if p['path'] else ''}{p['message']}"
             for c in corrupt for p in c["problems"]]
    targets = [c["target"] for c in corrupt]
    blobs = [p["blob"] for c in corrupt for p in c["problems"] if p.get("blob")]
    tail = (f"forgebuild: --frozen: the cached output of {', '.join(targets)} is corrupt; nothing was built "
            f"(repair: {repair_line(args, targets, blobs)})")
    print("\n".join(lines + [tail]), file=sys.stderr)
    if args.json:
        for c in corrupt:
            report({"event": "frozen", "problem": "corrupt", **c})
        report({"event": "summary", "ok": False, "error": tail[len("forgebuild: "):], "frozen": corrupt, "targets": []})


def frozen_results(args, session, results, report) -> bool:
    """`build --frozen`, after building: a dependency rebuilt to another output than the lock's
    gives its readers other keys; True when a built or cached target's key or output differs.

    Reports the problems (lines on stderr, `frozen` events) but no summary: the caller's
    build summary, with `ok: false`, comes last."""
    path = lock_path(args, session)
    lock = read_lock(path)
    problems = []
    for r in results:
        entry = lock["targets"].get(r.target)
        if entry is None or r.key is None:
            continue
        if r.key != entry["key"]:
            last = session.workspace.last_build(r.target) or {}
            mat = last.get("material") if last.get("key") == r.key else None
            reasons = _reasons(entry.get("material"), mat) if mat else ["key changed"]
            problems.append({"target": r.target, "problem": "key", "reasons": reasons, "key": r.key,
                             "locked_key": entry["key"]})
        elif r.digest and entry.get("digest") and r.digest != entry["digest"]:
            problems.append({"target": r.target, "problem": "output", "key": r.key, "locked_key": entry["key"],
                             "reasons": [f"same key, but it built {r.digest} and the lock has {entry['digest']}: "
                                         f"the stage did not reproduce the locked output"]})
    if problems:
        _report_frozen(args, path, problems, report, after_build=True)
    return bool(problems)


# ------------------------------------------------------------------ verify

def cmd_verify(args, session, report) -> int:
    decisions = session.decide(session.resolve(args.targets))
    if args.rebuild:
        problems = _not_built(args, decisions, "verify")
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
            final += f"\nbuild: {_prefix(args)} {' '.join(unbuilt)}"
    if args.json:
        if not ok:
            print(final, file=sys.stderr)
        report({"event": "summary", "ok": ok, "targets": summary})
    elif not (args.quiet and ok):
        print(final)
    return 0 if ok else 1


def entry_problems(store, ws, address: str, entry: dict, digest_of) -> list[dict]:
    """What no longer holds of a cache entry: its manifest makes up its digest, every blob is present and
    hashes to its name, and every materialised file that is not a hardlink of its blob does too.
    `digest_of(path)`: file_digest, or a stat cache's digest (a file unchanged since it hashed it is
    only stat()ed)."""
    problems = []
    listed = [(f["path"], bool(f.get("x")), f["digest"]) for f in entry["files"]]
    if tree_digest(listed) != entry["digest"]:
        problems.append({"path": None, "problem": "manifest",
                         "message": f"the manifest's files do not make up output {entry['digest']}"})
    materialised = ws.is_materialised(address, entry["digest"])
    for item in entry["files"]:
        blob = store.blob_path(item["digest"])
        if not os.path.exists(blob):
            problems.append({"path": item["path"], "problem": "missing", "blob": blob, "digest": item["digest"],
                             "message": f"blob {item['digest']} is missing: {display_path(blob)}"})
            continue
        found = digest_of(blob)
        if found != item["digest"]:
            problems.append({"path": item["path"], "problem": "corrupt", "blob": blob, "digest": item["digest"],
                             "found": found, "message": f"blob {item['digest']} now hashes to {found}: "
                                                        f"{display_path(blob)}"})
            continue
        copy_path = os.path.join(ws.artifact_dir(entry["digest"]), *item["path"].split("/"))
        if materialised and os.path.exists(copy_path) and not os.path.samefile(copy_path, blob):
            found = digest_of(copy_path)
            if found != item["digest"]:
                problems.append({"path": item["path"], "problem": "corrupt", "blob": copy_path,
                                 "digest": item["digest"], "found": found,
                                 "message": f"the materialised copy of blob {item['digest']} now hashes to "
                                            f"{found}: {display_path(copy_path)}"})
    return problems


def corrupt_outputs(session, decisions, digest_of) -> list[dict]:
    """Fresh targets whose stored files no longer hash to their digests (`--frozen` and
    `verify --rebuild` trust no cached byte they have not checked)."""
    found = []
    for address, d in decisions.items():
        entry = session.store.get_action(d.key, address) if d.state == "fresh" else None
        problems = entry_problems(session.store, session.workspace, address, entry, digest_of) if entry else []
        if problems:
            found.append({"target": address, "digest": entry["digest"], "problems": problems})
    return found


def repair_line(args, bad_targets: list[str], bad_blobs: list[str]) -> str:
    blobs = " ".join(display_path(b) for b in dict.fromkeys(bad_blobs))
    return f"{_prefix(args)} clean && {'rm -f ' + blobs + ' && ' if blobs else ''}" \
           f"{_prefix(args)} -B {' '.join(bad_targets)}"


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


def compare_safetensors(a: str, b: str) -> dict:
    """Per-tensor differences between two safetensors files.

    {"tensors": [one entry per tensor that is not bitwise equal], "equal": how many are,
    "metadata_changed": bool}. An entry: name, change ("values", "dtype", "shape", "added",
    "removed"), shape, rebuilt_shape, dtype, rebuilt_dtype and, when the shapes agree, numel,
    differing (values not equal; NaN equals NaN), max_abs_diff, l2_diff (the L2 norm of the
    difference), relative (l2_diff over the L2 norm of the first tensor) and nan_mismatch.
    Tensors are read one at a time (torch when installed, for bfloat16; else numpy).
    """
    from safetensors import safe_open

    try:
        import torch  # noqa: F401

        framework = "pt"
    except ImportError:
        framework = "numpy"
    tensors, equal = [], 0
    with safe_open(a, framework=framework) as fa, safe_open(b, framework=framework) as fb:
        metadata_changed = (fa.metadata() or {}) != (fb.metadata() or {})
        names_a, names_b = set(fa.keys()), set(fb.keys())
        for name in sorted(names_a | names_b):
            if name not in names_b:
                ta = fa.get_tensor(name)
                tensors.append({"name": name, "change": "removed", "shape": list(ta.shape), "dtype": _dtype(ta)})
                continue
            if name not in names_a:
                tb = fb.get_tensor(name)
                tensors.append({"name": name, "change": "added", "rebuilt_shape": list(tb.shape),
                                "rebuilt_dtype": _dtype(tb)})
                continue
            ta, tb = fa.get_tensor(name), fb.get_tensor(name)
            entry = {"name": name, "shape": list(ta.shape), "rebuilt_shape": list(tb.shape), "dtype": _dtype(ta),
                     "rebuilt_dtype": _dtype(tb)}
            if entry["shape"] != entry["rebuilt_shape"]:
                tensors.append({**entry, "change": "shape"})
                continue
            if entry["dtype"] == entry["rebuilt_dtype"] and _same_bits(ta, tb):
                equal += 1
                continue
            entry["change"] = "values" if entry["dtype"] == entry["rebuilt_dtype"] else "dtype"
            entry.update(_value_diff(_float64(ta), _float64(tb)))
            tensors.append(entry)
    return {"tensors": tensors, "equal": equal, "metadata_changed": metadata_changed}


def _dtype(t) -> str:
    return str(t.dtype).replace("torch.", "")


def _is_torch(t) -> bool:
    return type(t).__module__.startswith("torch")


def _same_bits(ta, tb) -> bool:
    if _is_torch(ta):
        import torch

        return torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8))
    return ta.tobytes() == tb.tobytes()


def _float64(t):
    import numpy as np

    if _is_torch(t):
        import torch

        return t.detach().to(torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def _value_diff(x, y) -> dict:
    import numpy as np

    x, y = x.reshape(-1), y.reshape(-1)
    both_nan = np.isnan(x) & np.isnan(y)
    differing = int(np.count_nonzero(~((x == y) | both_nan)))
    nan_mismatch = int(np.count_nonzero(np.isnan(x) ^ np.isnan(y)))
    finite = np.isfinite(x) & np.isfinite(y)
    diff = (y - x)[finite]
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    l2 = float(np.sqrt(np.sum(diff * diff)))
    base = float(np.sqrt(np.sum(x[finite] ** 2)))
    found = {"numel": int(x.size), "differing": differing, "max_abs_diff": _finite(max_abs), "l2_diff": _finite(l2),
             "relative": _finite(l2 / base) if base > 0 else None}
    if nan_mismatch:
        found["nan_mismatch"] = nan_mismatch
    return found


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
