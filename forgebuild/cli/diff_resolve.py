"""Resolving the two arguments of `forgebuild diff` to builds: a record id (or a unique prefix of
one), `TARGET@N` (the N-th most recent build of TARGET in the history; a bare TARGET is `@1`) or a
lock file; and finding the build record behind an output digest (through the history, else by
scanning the store's records), as the diff follows dependencies down.
"""
from __future__ import annotations

import json
import os
import re
import time

from forgebuild.errors import UsageError

RECENT = 5                   # builds listed when an argument names none
RECORD_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]*$")


class Resolver:
    """The builds of one project: its history, its store's records, and what an argument names."""

    def __init__(self, session):
        self.session = session
        self.store, self.ws = session.store, session.workspace
        self.root = session.plan.root
        self._history = None
        self._by_output = None      # (target, digest) -> [records], filled on first miss

    # ---------------------------------------------------------------- history and records

    @property
    def history(self) -> list[dict]:
        if self._history is None:
            self._history = self.ws.history()
        return self._history

    def record_id_of(self, entry: dict) -> str | None:
        """A history entry's record: named by the entry, or (a cache hit) by its action-cache entry."""
        if entry.get("record"):
            return entry["record"]
        try:
            action = self.store.get_action(entry["key"], entry.get("target", ""))
        except Exception:  # a corrupt entry only means no record here
            action = None
        return action.get("record") if action else None

    def get_record(self, record_id: str | None) -> dict | None:
        if not record_id or not RECORD_ID.match(record_id):
            return None
        try:
            return self.store.get_record(record_id)
        except ValueError:
            return None

    def all_records(self) -> list[dict]:
        """Every record in the store, oldest first."""
        found = []
        for path in self.store.fs.glob(f"{self.store.root}/records/*.json"):
            record = self.get_record(path.rsplit("/", 1)[1][: -len(".json")])
            if record and "target" in record:
                found.append(record)
        found.sort(key=lambda r: (r.get("started", ""), r.get("id", "")))
        return found

    def find(self, target: str, digest: str | None) -> dict | None:
        """The latest build record of `target` whose output is `digest`."""
        if not digest:
            return None
        for entry in reversed(self.history):
            if entry.get("target") == target and entry.get("digest") == digest:
                record = self.get_record(self.record_id_of(entry))
                if record and record.get("digest") == digest:
                    return record
        if self._by_output is None:
            self._by_output = {}
            for record in self.all_records():
                self._by_output.setdefault((record["target"], record.get("digest")), []).append(record)
        found = self._by_output.get((target, digest))
        return found[-1] if found else None

    def builds(self, target: str | None = None) -> list[tuple[str, str, dict]]:
        """(TARGET@N, record id, history entry), newest first, for one target or all."""
        counts: dict[str, int] = {}
        out = []
        for entry in reversed(self.history):
            address = entry.get("target")
            if not address:
                continue
            counts[address] = counts.get(address, 0) + 1
            if target is None or address == target:
                out.append((f"{address}@{counts[address]}", self.record_id_of(entry), entry))
        return out

    def recent(self) -> str:
        lines = []
        for form, record_id, entry in self.builds()[:RECENT]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.get("time", 0)))
            lines.append(f"  {form:<24} {record_id or '(no record)'}  {entry.get('action', '')} {when}")
        if not lines:  # the history was cleaned away; the records are kept
            for record in reversed(self.all_records()[-RECENT:]):
                lines.append(f"  {record['target']:<24} {record['id']}  built {record.get('started', '')}")
        if not lines:
            return "no build is recorded yet; build something first"
        return "recent builds (`forgebuild log` lists more):\n" + "\n".join(lines)

    # ---------------------------------------------------------------- one argument

    def resolve(self, arg: str) -> dict:
        """{"kind": "record", "label", "record"} or {"kind": "lock", "label", "lock", "path"}."""
        for path in (arg, os.path.join(self.root, arg)):
            if os.path.isfile(path):
                return self._lock(arg, path)
        target, at, n = arg.rpartition("@")
        if at and target:
            if not n.isdigit() or int(n) < 1:
                raise UsageError(f"'{arg}': N in TARGET@N counts builds from the latest, 1, 2, ...")
            return self._nth(arg, self._address(arg, target), int(n))
        record = self.get_record(arg)
        if record is None and RECORD_ID.match(arg) and len(arg) >= 8:
            matches = self.store.fs.glob(f"{self.store.root}/records/{arg}*.json")
            if len(matches) == 1:
                record = self.get_record(matches[0].rsplit("/", 1)[1][: -len(".json")])
            elif len(matches) > 1:
                raise UsageError(f"'{arg}' names {len(matches)} build records; give more of the id\n{self.recent()}")
        if record is not None:
            return {"kind": "record", "label": record["id"], "record": record}
        address = self._known(arg) if "/" not in arg else None
        if address and any(e.get("target") == address for e in self.history):
            return self._nth(arg, address, 1)
        raise UsageError(f"no build record, TARGET@N or lock file '{arg}'\n{self.recent()}")

    def _address(self, arg: str, target: str) -> str:
        found = self._known(target)
        if found:
            return found
        raise UsageError(f"no builds of '{target}' in the history ('{arg}')\n{self.recent()}")

    def _known(self, target: str) -> str | None:
        """The address of a target the history or the Forgefile knows, by address or unambiguous name."""
        known = {e.get("target") for e in self.history} | set(self.session.plan.targets)
        if target in known:
            return target
        named = sorted(a for a in known if a and ":" not in target and a.split(":", 1)[1] == target)
        if len(named) > 1:
            raise UsageError(f"'{target}' is ambiguous: {', '.join(named)}")
        return named[0] if named else None

    def _nth(self, arg: str, address: str, n: int) -> dict:
        builds = self.builds(address)
        if builds:
            if n > len(builds):
                raise UsageError(f"'{arg}': {address} has {len(builds)} build{'s' * (len(builds) != 1)} "
                                 f"in the history\n{self.recent()}")
            form, record_id, entry = builds[n - 1]
            record = self.get_record(record_id)
            if record is None:
                raise UsageError(f"'{arg}': the record of {address}'s build with key {entry['key'][:12]} "
                                 f"is no longer in the cache")
            return {"kind": "record", "label": arg, "record": record}
        records = [r for r in reversed(self.all_records()) if r["target"] == address]
        if n > len(records):
            raise UsageError(f"'{arg}': {address} has {len(records)} build record{'s' * (len(records) != 1)}\n"
                             f"{self.recent()}")
        return {"kind": "record", "label": arg, "record": records[n - 1]}

    def _lock(self, arg: str, path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"'{arg}' is a file but not a lock file: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
            raise UsageError(f"'{arg}' is not a lock file (no \"targets\" object)")
        return {"kind": "lock", "label": arg, "lock": data, "path": path}
