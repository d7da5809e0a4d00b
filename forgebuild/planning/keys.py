"""Action keys, and the reasons a target is fresh or must be rebuilt.

Action key = BLAKE3-256 of the canonical JSON of: rule name and version, the
identity params (defaults filled in, runtime-only fields left out), the target's
seed, the digests of its source files (by project-relative path), and the
*output* digests of its dependencies. Using output digests gives early cutoff:
a dependency rebuilt to byte-identical output leaves its dependents' keys as
they were. Nothing machine-specific (absolute paths, hostnames, times, the
cache's location) enters a key.

Standard library, blake3 and xxhash only: this module is on the no-op fast path. Seeds stay
xxh3: they need spread, not collision resistance, and changing them would change every model.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import xxhash

from forgebuild.hashing import StatCache, bytes_digest
from forgebuild.planning.plan import Plan, TargetPlan, resolve_sources

KEY_FORMAT = 2  # 2: BLAKE3-256 digests (1: xxh3-128)


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def derive_seed(project_seed: int, address: str) -> int:
    """A target's own seed: stable across machines, different for every target but the cells of
    one matrix, which share their table's (a sweep's cells differ by their swept values alone)."""
    address = address.split("[", 1)[0]
    return xxhash.xxh3_64_intdigest(f"{project_seed}\0{address}".encode()) % (2**31 - 1)


def material(plan: Plan, target: TargetPlan, stat_cache: StatCache, dep_digests: dict[str, str]) -> dict:
    """Everything that determines what the target produces, as plain data."""
    inputs: dict[str, list] = {}
    for spec in target.inputs:
        entries = inputs.setdefault(spec.key, [])
        if spec.kind == "target":
            entries.append(["target", spec.spec, dep_digests[spec.spec]])
        else:
            for rel, path in resolve_sources(plan, target, spec):
                entries.append(["file", rel, stat_cache.digest(path)])
    return {
        "format": KEY_FORMAT,
        "rule": target.kind,
        "version": target.version,
        "params": target.params,
        "seed": derive_seed(plan.settings.get("seed", 0), target.address),
        "inputs": inputs,
        "env": {"vars": {name: os.environ.get(name) for name in target.env_vars}, "libraries": target.libraries},
    }


def action_key(mat: dict) -> str:
    return bytes_digest(canonical(mat).encode())


# ------------------------------------------------------------------ reasons

def explain(old: dict | None, new: dict) -> list[str]:
    """Concrete reasons why `new` differs from the material of the last build."""
    if old is None:
        return ["never built"]
    from forgebuild.planning.change import diff, reasons  # only when something changed: off the no-op path

    return reasons(diff(old, new)) or ["key changed"]


# ------------------------------------------------------------------ decisions

@dataclass
class Decision:
    address: str
    state: str  # "fresh" | "remote" | "stale" | "missing"
    reasons: list[str]
    key: str | None = None
    digest: str | None = None  # output digest when fresh, or when the remote has it
    material: dict | None = field(default=None, repr=False)


def decide(plan: Plan, addresses, stat_cache: StatCache, lookup, last_build, force=False,
           remote=None) -> dict[str, Decision]:
    """State of each target in the closure of `addresses`, without building anything.

    `lookup(key, address)` returns a cached action entry or None; `last_build(address)`
    returns the state of that target's last build or None. `remote(key, address)`, when
    given, is asked only on a local miss: None (no entry there), or (entry, reason) where
    entry is a checked, signed entry (its digest keys the readers on) or None with the
    reason it was refused. A target whose dependency is neither fresh nor on the remote
    cannot be keyed yet: with early cutoff, whether it rebuilds depends on what its
    dependency will produce.
    """
    decisions: dict[str, Decision] = {}
    for address in plan.closure(addresses):
        target = plan.targets[address]
        waiting = [d for d in target.deps if decisions[d].digest is None]
        last = last_build(address)
        if waiting:
            why = [f"dependency {d} is {decisions[d].state}" for d in waiting]
            if last is None:
                decisions[address] = Decision(address, "missing", ["never built", *why])
            else:
                decisions[address] = Decision(address, "stale", why + _own_changes(plan, target, stat_cache, decisions, last_build, last))
            continue
        mat = material(plan, target, stat_cache, {d: decisions[d].digest for d in target.deps})
        key = action_key(mat)
        entry = None if force else lookup(key, address)
        if entry is not None:
            why = ["up to date"] if last and last.get("key") == key else ["output cached from an earlier build"]
            decisions[address] = Decision(address, "fresh", why + _failed(entry), key, entry["digest"], mat)
        else:
            decisions[address] = _not_here(address, key, mat, last, force, remote)
    return decisions


def _failed(entry: dict) -> list[str]:
    """A kept failure (a failed gate) is cached too, but it is never the no-op path: said in the reasons."""
    return [f"failed: {entry['verdict']}"] if "verdict" in entry else []


def _not_here(address: str, key: str, mat: dict, last: dict | None, force: bool, remote) -> Decision:
    """A target the local cache lacks: on the remote (asked only now), or to be built, and why."""
    if force:
        return Decision(address, "stale" if last else "missing", ["forced (-B)"], key, None, mat)
    there = None if remote is None else remote(key, address)
    if there is not None and there[0] is not None:
        return Decision(address, "remote", [there[1], *_failed(there[0])], key, there[0]["digest"], mat)
    refused = [there[1]] if there is not None else []  # the remote's entry, refused: why
    if last is None:
        return Decision(address, "missing", ["never built", *refused], key, None, mat)
    if last.get("key") == key:
        return Decision(address, "stale", ["output no longer in the cache", *refused], key, None, mat)
    return Decision(address, "stale", explain(last.get("material"), mat) + refused, key, None, mat)


def _own_changes(plan, target, stat_cache, decisions, last_build, last) -> list[str]:
    """What changed in the target itself, judged against its dependencies' last outputs.

    The target's key is unknown until its stale dependencies are rebuilt, but its
    own params and sources can already be compared with its last build.
    """
    digests = {}
    for dep in target.deps:
        digests[dep] = decisions[dep].digest or (last_build(dep) or {}).get("digest")
        if digests[dep] is None:
            return []
    mat = material(plan, target, stat_cache, digests)
    if last.get("material") is None:
        return ["never built"]
    from forgebuild.planning.change import diff, reasons

    return reasons([c for c in diff(last["material"], mat) if c.kind != "dependency"])
