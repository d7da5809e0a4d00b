"""What changed between two builds of a target: one structured diff of their key materials.

`diff(old, new)` compares two materials (the dicts `keys.material` returns, also kept in build
records and lock files) and returns one `Change` per difference, in the order `forgebuild explain`
prints them: key format, rule version, params (flattened to dotted paths), seed, input files and
dependencies (by name, across the Forgefile keys that name them), declared variables, libraries.
`Change.text()` is the line `explain` prints; the lock (`--frozen`) and `forgebuild diff` read the
same objects and word some of them their own way.

Standard library only: `keys` imports it while deciding, once a target has changed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Change:
    """One difference. `kind`: format, rule, param, seed, input (a source file), dependency (a target's
    output), variable (a declared environment variable), library, toolchain or recorded (a record's
    python, platform...). `name`: the dotted param path, file path, address, variable or library name
    ("" for format and seed; the rule's name for rule). `change`: added, removed, changed or moved.
    `old`, `new`: the values; digests for inputs and dependencies, the Forgefile keys that name the file
    for a move, (rule, version) for a rule."""
    kind: str
    name: str
    change: str
    old: object = None
    new: object = None

    def text(self) -> str:
        """The line `forgebuild explain` prints for this change."""
        old, new = self.old, self.new
        if self.kind == "format":
            return f"key format {old} -> {new}"
        if self.kind == "rule":
            return f"rule {old[0]} version {old[1]} -> {new[1]}"
        if self.kind == "seed":
            return f"seed {old} -> {new}"
        if self.kind == "param":
            return {"added": f"param {self.name} added (= {show(new)})",
                    "removed": f"param {self.name} removed (was {show(old)})"}.get(
                self.change, f"param {self.name} {show(old)} -> {show(new)}")
        if self.kind in ("input", "dependency"):
            return self._input_text()
        if self.kind == "toolchain":
            return f"{self.name} {old or 'not installed'} -> {new or 'not installed'}"
        word = "environment" if self.kind == "variable" else self.kind
        return f"{word} {self.name} {show(old)} -> {show(new)}"

    def _input_text(self) -> str:
        if self.change == "moved":
            return f"{self.kind} {self.name} moved: {', '.join(self.old)} -> {', '.join(self.new)}"
        if self.change == "changed":
            return f"dependency {self.name} rebuilt with new output" if self.kind == "dependency" \
                else f"input {self.name} changed"
        return f"{self.kind} {self.name} {self.change}"


def show(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def diff(old: dict, new: dict) -> list[Change]:
    """Every difference between two key materials, in explain's order (a material may lack sections:
    a record or lock entry written without one)."""
    changes = []
    if old.get("format") != new.get("format"):
        changes.append(Change("format", "", "changed", old.get("format"), new.get("format")))
    if old.get("rule") != new.get("rule") or old.get("version") != new.get("version"):
        changes.append(Change("rule", str(old.get("rule")), "changed", (old.get("rule"), old.get("version")),
                              (new.get("rule"), new.get("version"))))
    changes += _params(old.get("params") or {}, new.get("params") or {})
    if old.get("seed") != new.get("seed"):
        changes.append(Change("seed", "", "changed", old.get("seed"), new.get("seed")))
    changes += _inputs(old.get("inputs") or {}, new.get("inputs") or {})
    env_old, env_new = old.get("env") or {}, new.get("env") or {}
    changes += values("variable", env_old.get("vars") or {}, env_new.get("vars") or {})
    changes += values("library", env_old.get("libraries") or {}, env_new.get("libraries") or {})
    return changes


def values(kind: str, old: dict, new: dict) -> list[Change]:
    """A flat name -> value mapping compared name by name (a missing name is None: unset)."""
    changes = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a != b:
            changes.append(Change(kind, name, "added" if a is None else "removed" if b is None else "changed", a, b))
    return changes


def reasons(changes: list[Change], text=Change.text) -> list[str]:
    """One line per distinct text: a file named by two inputs is one reason."""
    return list(dict.fromkeys(text(c) for c in changes))


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts as one dict of dotted paths: {"train": {"lr": 1}} -> {"train.lr": 1}."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _params(old: dict, new: dict) -> list[Change]:
    before, after = flatten(old), flatten(new)
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            changes.append(Change("param", name, "removed", before[name], None))
        elif name not in before:
            changes.append(Change("param", name, "added", None, after[name]))
        elif before[name] != after[name]:
            changes.append(Change("param", name, "changed", before[name], after[name]))
    return changes


def _inputs(old: dict, new: dict) -> list[Change]:
    """Per input file or dependency: removed, added, changed, or moved to another key (an eval's
    `models` reordered is each model moved, not every model removed and added again)."""
    before, after = _by_name(old), _by_name(new)
    changes = []
    for kind, name in sorted(before.keys() | after.keys()):
        what = "dependency" if kind == "target" else "input"
        (keys_a, a), (keys_b, b) = before.get((kind, name), ((), None)), after.get((kind, name), ((), None))
        if (kind, name) not in after:
            changes.append(Change(what, name, "removed", a, None))
        elif (kind, name) not in before:
            changes.append(Change(what, name, "added", None, b))
        elif a != b:
            changes.append(Change(what, name, "changed", a, b))
        elif keys_a != keys_b:
            changes.append(Change(what, name, "moved", tuple(keys_a), tuple(keys_b)))
    return changes


def _by_name(inputs: dict) -> dict[tuple, tuple[list, str]]:
    """(kind, name) -> (the Forgefile keys that name it, its digest)."""
    found: dict[tuple, tuple[list, str]] = {}
    for key in sorted(inputs):
        for kind, name, digest in inputs[key]:
            found.setdefault((kind, name), ([], digest))[0].append(key)
    return found
