"""Forgefile.lock and `build --frozen`.

    forgebuild lock [TARGET...]        every target's action key, output digest and key material,
                                       and the toolchain's versions, in a JSON file beside the Forgefile
    forgebuild --frozen [TARGET...]    exit 1 before building when a key differs from the lock

The lock file is JSON with sorted keys and a trailing newline: relocking an
unchanged project writes the same bytes. Declared environment variables enter
keys by value; the lock stores only a digest of each value (a lock file is
meant to be committed, a variable's value may be a secret), so `--frozen`
says that a variable changed, not what it was.

Imported only by the `lock` verb and `build --frozen`.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import sys
import uuid

from forgebuild import __version__
from forgebuild.cli.integrity import corrupt_outputs, not_built, prefix, repair_line
from forgebuild.errors import UsageError
from forgebuild.hashing import bytes_digest
from forgebuild.planning.change import Change, diff, reasons, values
from forgebuild.planning.keys import action_key, material
from forgebuild.planning.plan import display_path

LOCK_FORMAT = 1
# The libraries whose versions can change what a build produces (recorded when installed).
TOOLCHAIN = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "safetensors", "tokenizers",
             "pyarrow", "lm_eval")
VARIABLE_CHANGES = {"added": "set", "removed": "unset", "changed": "changed"}


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


def cmd_lock(args, session, report) -> int:
    path = lock_path(args, session)
    shown = display_path(path)
    decisions = session.decide(session.resolve(args.targets))
    # A target on the remote is locked as it is there: its key, and the output digest its signed entry
    # names (a fetch later checks every blob against it); there is nothing to build first.
    unbuilt = {a: d for a, d in decisions.items() if d.state != "remote"}
    problems = not_built(args, unbuilt, "lock")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        if args.json:
            report({"event": "summary", "ok": False, "error": problems[-1][len("forgebuild: "):],
                    "lock": path, "unbuilt": [d.address for d in unbuilt.values() if d.state != "fresh"]})
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
    remote = sorted(a for a, d in decisions.items() if d.state == "remote")
    new = sorted(a for a in decisions if a not in old_entries)
    changed = sorted(a for a in decisions if a in old_entries and old_entries[a].get("key") != entries[a]["key"])
    if args.json:
        report({"event": "summary", "ok": True, "lock": path, "written": written, "new": new, "changed": changed,
                "remote": remote,
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
            if remote:
                notes.append(f"{len(remote)} from the remote, not fetched")
            print(f"wrote {shown} ({what}{', ' + ', '.join(notes) if notes else ''})")
    return 0


# ------------------------------------------------------------------ --frozen

def _reasons(locked_material: dict | None, mat: dict) -> list[str]:
    """What changed between the lock's material and the current one (declared variables by name only:
    the lock keeps a digest of their values)."""
    if locked_material is None:
        return ["key changed"]
    return reasons(diff(locked_material, redact(mat)), _lock_text) or ["key changed"]


def _lock_text(change: Change) -> str:
    if change.kind == "variable":
        return f"environment {change.name} {VARIABLE_CHANGES[change.change]}"
    return change.text()


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
                digests[dep] = dd.digest if dd.digest is not None else (locked.get(dep) or {}).get("digest")
            if None in digests.values():
                continue  # a dependency is not in the lock: reported as its own problem
            mat = material(plan, plan.targets[address], session.stat_cache, digests)
            key = action_key(mat)
        if key != entry["key"]:
            problems.append({"target": address, "problem": "key", "reasons": _reasons(entry.get("material"), mat),
                             "key": key, "locked_key": entry["key"]})
        elif d.digest is not None and entry.get("digest") and d.digest != entry["digest"]:
            where = "cached" if d.state == "fresh" else "remote"
            problems.append({"target": address, "problem": "output", "key": key, "locked_key": entry["key"],
                             "reasons": [f"same key, but its {where} output is {d.digest} and the lock has "
                                         f"{entry['digest']}: the stage did not reproduce the locked output"]})
    problems += toolchain_drift(lock)
    return problems


def toolchain_drift(lock: dict) -> list[dict]:
    drift = [c.text() for c in values("toolchain", lock.get("toolchain") or {}, toolchain())]
    return [{"target": None, "problem": "toolchain", "reasons": drift}] if drift else []


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
    tail += f" (if the changes are intended: build without --frozen, then `{prefix(args)} lock`)"
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
            why = _reasons(entry.get("material"), mat) if mat else ["key changed"]
            problems.append({"target": r.target, "problem": "key", "reasons": why, "key": r.key,
                             "locked_key": entry["key"]})
        elif r.digest and entry.get("digest") and r.digest != entry["digest"]:
            problems.append({"target": r.target, "problem": "output", "key": r.key, "locked_key": entry["key"],
                             "reasons": [f"same key, but it built {r.digest} and the lock has {entry['digest']}: "
                                         f"the stage did not reproduce the locked output"]})
    if problems:
        _report_frozen(args, path, problems, report, after_build=True)
    return bool(problems)
