"""`forgebuild diff A B`: what differs between two builds, and why, down the dependency closure.

A and B are each a build record id (or a unique prefix of one), `TARGET@N` (the
N-th most recent entry of that target in `forgebuild log`: `@1` the latest, `@2`
the one before; a bare `TARGET` is `TARGET@1`), or a lock file (`forgebuild
lock`). Two records give one tree rooted at their target; two lock files give a
tree for every target whose key or output differs; a lock file and a record
compare the record with the lock's entry for the same target.

For each pair of builds of a target the diff lists, from the key material:
params (flattened, old -> new), the seed and rule version, data (the files of
each input, added / removed / changed, with counts), code references (a `*.py`
input that is a file of its own, e.g. a reward function or a scorer: a unified
diff when both texts can be found), dependencies and environment (declared
variables, library versions; Python, platform and forgebuild as recorded). From
the two outputs (action-cache manifests): the files added / removed / changed,
the changed numbers of `stats.json` (corpus, dataset), the weights of
`*.safetensors` files (per tensor: shape, L2 norm of the difference, relative
change; per layer; read one bounded chunk at a time) and metrics (`report.json`
of an eval, with intervals; `metrics.json` of a model; else the record's).

A dependency whose output digest differs is explained by the two build records
that produced those digests (found through the build history, else by scanning
the store's records), recursively; the recursion stops where digests are equal.
The "why" chains name each leaf cause through the dependencies it came by:
`run:b differs because run:a differs because data/a.txt changed`.

Old source text: a record does not (yet) keep the text of its sources, only
their digests. The text of a code reference is taken from, in order: the
record's `sources_text` (when the executor stores it), the file on disk, a blob
of the store, `git show COMMIT:PATH` at the record's commit; each only when its
digest is the recorded one. Otherwise the diff says the old text was not recorded.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import subprocess
import sys
import time

from forgebuild.errors import UsageError
from forgebuild.hashing import bytes_digest

RECENT = 5                   # builds listed when an argument names none
TOP_TENSORS = 10             # most-changed tensors and layers shown (JSON has every tensor)
LIST_LIMIT = 20              # file names shown per list in text and markdown (JSON has all)
DIFF_LINES = 200             # unified diff lines shown per code reference
TEXT_LIMIT = 256 * 1024      # largest source whose text is read for a unified diff
CHUNK_ELEMENTS = 1 << 19     # tensor elements read at a time (4 MiB as float64 per side)
RECORD_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]*$")


# ====================================================================== entry point

def cmd_diff(args, session, report) -> int:
    auditor = Auditor(session)
    old, new = auditor.resolve(args.a), auditor.resolve(args.b)
    result = auditor.compare(old, new)
    if args.json:
        for node in result["nodes"]:
            report({"event": "diff", **node})
        report({"event": "summary", "ok": True, **{k: v for k, v in result.items() if k != "nodes"}})
    elif args.format == "markdown":
        _print(render_markdown(result))
    else:
        _print(render_text(result))
    return 0


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# ====================================================================== resolving A and B

class Auditor:
    def __init__(self, session):
        self.session = session
        self.store, self.ws = session.store, session.workspace
        self.root = session.plan.root
        self._history = None
        self._by_output = None      # (target, digest) -> [records], filled on first miss
        self._git: dict = {}

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

    # ================================================================== comparing

    def compare(self, a: dict, b: dict) -> dict:
        self.nodes: list[dict] = []
        self.seen: dict = {}
        sides = {"a": side_info(a), "b": side_info(b)}
        added = removed = toolchain = []
        if a["kind"] == "record" and b["kind"] == "record":
            roots = [self.diff_pair(self.build_of(a["record"]), self.build_of(b["record"]), 0, None, (None, None))]
        elif a["kind"] == "lock" and b["kind"] == "lock":
            ta, tb = a["lock"]["targets"], b["lock"]["targets"]
            added, removed = [t for t in tb if t not in ta], [t for t in ta if t not in tb]
            toolchain = value_changes(a["lock"].get("toolchain"), b["lock"].get("toolchain"))
            differing = [t for t in tb if t in ta and (ta[t].get("key"), ta[t].get("digest")) != (tb[t].get("key"), tb[t].get("digest"))]
            below = {dep for t in differing
                     for dep, _, _ in dependency_changes(ta[t].get("material"), tb[t].get("material"))}
            roots = [self.diff_pair(self.lock_build(ta, t), self.lock_build(tb, t), 0, None, (ta, tb))
                     for t in differing if t not in below]
            for t in differing:  # one the recursion did not reach (no record to follow): a root of its own
                if t in below and not any(n["target"] == t for n in self.nodes):
                    roots.append(self.diff_pair(self.lock_build(ta, t), self.lock_build(tb, t), 0, None, (ta, tb)))
        else:
            record, lock = (a["record"], b) if a["kind"] == "record" else (b["record"], a)
            entry = lock["lock"]["targets"].get(record["target"])
            if entry is None:
                raise UsageError(f"lock file {lock['label']} has no entry for {record['target']}")
            builds = [self.build_of(record), self.lock_build(lock["lock"]["targets"], record["target"])]
            locks = [None, lock["lock"]["targets"]]
            if a["kind"] == "lock":
                builds.reverse()
                locks.reverse()
            roots = [self.diff_pair(builds[0], builds[1], 0, None, tuple(locks))]
        why = [chain for root in roots for chain in chains(root, self.by_id())]
        return {"a": sides["a"], "b": sides["b"], "identical": all(r["state"] == "identical" for r in roots)
                and not added and not removed,
                "roots": [r["target"] for r in roots], "targets": [n["target"] for n in self.nodes],
                "added": added, "removed": removed, "toolchain": toolchain, "why": why, "nodes": self.nodes}

    def by_id(self) -> dict:
        return {n["id"]: n for n in self.nodes}

    # ---------------------------------------------------------------- one side of a target

    @staticmethod
    def build_of(record: dict) -> dict:
        return {"target": record["target"], "key": record.get("key"), "digest": record.get("digest"),
                "material": record.get("material") or {}, "record": record}

    def lock_build(self, targets: dict, address: str) -> dict:
        entry = targets[address]
        record = self.find(address, entry.get("digest"))
        if record is not None and entry.get("key") and record.get("key") != entry.get("key"):
            record = {k: v for k, v in record.items() if k in ("id", "target", "digest", "started", "metrics",
                                                                   "sources_text", "git_commit")}
        return {"target": address, "key": entry.get("key"), "digest": entry.get("digest"),
                "material": entry.get("material") or (record or {}).get("material") or {}, "record": record}

    def dep_build(self, address: str, digest: str, lock: dict | None) -> dict | None:
        if lock is not None and (lock.get(address) or {}).get("digest") == digest:
            return self.lock_build(lock, address)
        record = self.find(address, digest)
        return self.build_of(record) if record is not None else None

    # ---------------------------------------------------------------- one pair

    def diff_pair(self, old: dict, new: dict, depth: int, parent: str | None, locks: tuple) -> dict:
        ident = (old["target"], new["target"], old["digest"], new["digest"], old["key"], new["key"])
        if ident in self.seen:
            return self.seen[ident]
        node = {"id": f"n{len(self.nodes) + 1}", "target": new["target"], "depth": depth, "parent": parent,
                "old": build_info(old), "new": build_info(new)}
        if old["target"] != new["target"]:
            node["target_old"] = old["target"]
        self.seen[ident] = node
        self.nodes.append(node)
        same_key, same_out = old["key"] == new["key"], old["digest"] == new["digest"]
        node["state"] = ("identical" if same_key and same_out else "same-output" if same_out
                         else "not-reproduced" if same_key else "different")
        mo, mn = old["material"], new["material"]
        node["rule"] = rule_change(mo, mn)
        node["seed"] = {"old": mo.get("seed"), "new": mn.get("seed")} if mo.get("seed") != mn.get("seed") else None
        node["params"] = param_changes(mo.get("params"), mn.get("params"))
        node["data"], node["code"] = self.input_changes(mo.get("inputs") or {}, mn.get("inputs") or {}, old, new)
        node["environment"] = environment_changes(old, new)
        node["dependencies"] = []
        node["causes"] = causes(node)
        for key, dep, od, nd in dependency_inputs(mo.get("inputs") or {}, mn.get("inputs") or {}):
            item = {"input": key, "target": dep, "old": od, "new": nd, "change": "changed" if od and nd else
                    "added" if nd else "removed", "node": None, "note": None}
            if od and nd:
                bo, bn = self.dep_build(dep, od, locks[0]), self.dep_build(dep, nd, locks[1])
                if bo is None or bn is None:
                    item["note"] = (f"no build record of {dep} with output {(od if bo is None else nd)[:12]} "
                                    f"(built elsewhere, or its record was removed)")
                else:
                    item["node"] = self.diff_pair(bo, bn, depth + 1, node["id"], locks)["id"]
            node["dependencies"].append(item)
        if same_out:
            node["outputs"], node["stats"], node["weights"], node["metrics"] = None, [], None, []
        else:
            self.output_changes(node, old, new)
        return node

    # ---------------------------------------------------------------- inputs

    def input_changes(self, old: dict, new: dict, bo: dict, bn: dict) -> tuple[list, list]:
        data, code = [], []
        for key in sorted(old.keys() | new.keys()):
            before = {name: d for kind, name, d in old.get(key, []) if kind != "target"}
            after = {name: d for kind, name, d in new.get(key, []) if kind != "target"}
            if not before and not after:
                continue
            single = len(before) <= 1 and len(after) <= 1
            changes = {"added": sorted(after.keys() - before.keys()), "removed": sorted(before.keys() - after.keys()),
                       "changed": sorted(n for n in before.keys() & after.keys() if before[n] != after[n])}
            if not any(changes.values()):
                continue
            names = set(changes["added"] + changes["removed"] + changes["changed"])
            if single and all(n.endswith(".py") for n in names):
                if len(changes["added"]) == 1 and len(changes["removed"]) == 1:  # the input names another file
                    (was,), (now,) = changes["removed"], changes["added"]
                    code.append(self.code_change(key, now, before[was], after[now], bo, bn, was))
                    continue
                for name in sorted(names):
                    code.append(self.code_change(key, name, before.get(name), after.get(name), bo, bn))
                continue
            data.append({"input": key, "files_old": len(before), "files_new": len(after), **changes})
        return data, code

    def code_change(self, key: str, path: str, od: str | None, nd: str | None, bo: dict, bn: dict,
                    old_path: str | None = None) -> dict:
        """One code reference; `old_path` when the input read another file before (a "replaced" change)."""
        old_path = old_path or path
        item = {"input": key, "path": path, "change": "changed" if od and nd else "added" if nd else "removed",
                "old": od, "new": nd, "diff": None, "note": None}
        if old_path != path:
            item.update(change="replaced", old_path=old_path)
        texts = [self.source_text(p, d, b.get("record")) if d else ""
                 for p, d, b in ((old_path, od, bo), (path, nd, bn))]
        if texts[0] is None or texts[1] is None:
            missing = " and ".join(w for w, t in zip(("old", "new"), texts) if t is None)
            item["note"] = f"{missing} text not recorded"
            return item
        lines = list(difflib.unified_diff(texts[0].splitlines(keepends=True), texts[1].splitlines(keepends=True),
                                          f"a/{old_path}", f"b/{path}"))
        item["diff"] = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                               for line in lines)
        return item

    def source_text(self, path: str, digest: str, record: dict | None) -> str | None:
        """The text of a source with this digest: from the record, the disk, the store or git."""
        def ok(data):
            if data is None or bytes_digest(data) != digest:
                return None
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return None

        recorded = ((record or {}).get("sources_text") or {}).get(path)
        if isinstance(recorded, str) and (text := ok(recorded.encode("utf-8"))) is not None:
            return text
        full = os.path.join(self.root, path)
        try:
            if os.path.getsize(full) <= TEXT_LIMIT:
                with open(full, "rb") as f:
                    if (text := ok(f.read())) is not None:
                        return text
        except OSError:
            pass
        if self.store.local and os.path.exists(self.store.blob_path(digest)):
            if os.path.getsize(self.store.blob_path(digest)) <= TEXT_LIMIT:
                with open(self.store.blob_path(digest), "rb") as f:
                    if (text := ok(f.read())) is not None:
                        return text
        commit = (record or {}).get("git_commit")
        if commit and (text := ok(self.git_show(commit, path))) is not None:
            return text
        return None

    def git_show(self, commit: str, path: str) -> bytes | None:
        if (commit, path) not in self._git:
            try:
                out = subprocess.run(["git", "show", f"{commit}:./{path}"], cwd=self.root, capture_output=True,
                                     timeout=10)
                self._git[commit, path] = out.stdout if out.returncode == 0 and len(out.stdout) <= TEXT_LIMIT else None
            except (OSError, subprocess.SubprocessError):
                self._git[commit, path] = None
        return self._git[commit, path]

    # ---------------------------------------------------------------- outputs

    def manifest(self, build: dict) -> dict | None:
        try:
            entry = self.store.get_action(build["key"], build["target"]) if build.get("key") else None
        except Exception:
            entry = None
        return entry if entry is not None and entry.get("digest") == build.get("digest") else None

    def blob(self, digest: str) -> str | None:
        if not self.store.local:
            return None
        path = self.store.blob_path(digest)
        return path if os.path.exists(path) else None

    def json_file(self, files: dict, name: str):
        item = files.get(name)
        path = self.blob(item["digest"]) if item and item["size"] <= 64 << 20 else None
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def output_changes(self, node: dict, old: dict, new: dict) -> None:
        node["outputs"], node["stats"], node["weights"], node["metrics"] = None, [], None, []
        mo, mn = self.manifest(old), self.manifest(new)
        if mo is None or mn is None:
            node["outputs"] = {"note": "output manifest not in the cache"}
            node["metrics"] = number_changes((old.get("record") or {}).get("metrics"),
                                             (new.get("record") or {}).get("metrics"))
            return
        fo = {f["path"]: f for f in mo["files"]}
        fn = {f["path"]: f for f in mn["files"]}
        node["outputs"] = {
            "files_old": len(fo), "files_new": len(fn),
            "added": sorted(fn.keys() - fo.keys()), "removed": sorted(fo.keys() - fn.keys()),
            "changed": sorted(p for p in fo.keys() & fn.keys() if fo[p]["digest"] != fn[p]["digest"]),
            "bytes_old": sum(f["size"] for f in fo.values()), "bytes_new": sum(f["size"] for f in fn.values())}
        if "stats.json" in node["outputs"]["changed"]:
            so, sn = self.json_file(fo, "stats.json"), self.json_file(fn, "stats.json")
            if isinstance(so, dict) and isinstance(sn, dict):
                node["stats"] = number_changes(so, sn)
        weights_old = {p: f for p, f in fo.items() if p.endswith(".safetensors")}
        weights_new = {p: f for p, f in fn.items() if p.endswith(".safetensors")}
        if weights_old and weights_new and {p: f["digest"] for p, f in weights_old.items()} != {
                p: f["digest"] for p, f in weights_new.items()}:
            po = [self.blob(f["digest"]) for f in weights_old.values()]
            pn = [self.blob(f["digest"]) for f in weights_new.values()]
            if None in po or None in pn:
                node["weights"] = {"note": "weights not in the local cache"}
            else:
                try:
                    node["weights"] = weight_diff(po, pn)
                except (OSError, ValueError) as e:
                    node["weights"] = {"note": f"cannot read the weights: {e}"}
        ro, rn = self.json_file(fo, "report.json"), self.json_file(fn, "report.json")
        if isinstance(ro, dict) and isinstance(rn, dict) and "results" in ro and "results" in rn:
            node["metrics"] = report_changes(ro, rn)
        else:
            mo_, mn_ = self.json_file(fo, "metrics.json"), self.json_file(fn, "metrics.json")
            if isinstance(mo_, dict) and isinstance(mn_, dict):
                node["metrics"] = number_changes(mo_, mn_)
            else:
                node["metrics"] = number_changes((old.get("record") or {}).get("metrics"),
                                                 (new.get("record") or {}).get("metrics"))


# ====================================================================== material comparisons

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


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _show(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def rule_change(old: dict, new: dict) -> dict | None:
    fields = ("format", "rule", "version")
    if all(old.get(f) == new.get(f) for f in fields):
        return None
    return {"old": {f: old.get(f) for f in fields}, "new": {f: new.get(f) for f in fields}}


def param_changes(old, new) -> list[dict]:
    before, after = _flatten(old or {}), _flatten(new or {})
    out = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            out.append({"name": name, "change": "removed", "old": before[name], "new": None})
        elif name not in before:
            out.append({"name": name, "change": "added", "old": None, "new": after[name]})
        elif before[name] != after[name]:
            out.append({"name": name, "change": "changed", "old": before[name], "new": after[name]})
    return out


def value_changes(old, new) -> list[dict]:
    """{"name", "old", "new"} for each top-level value that differs (a lock file's toolchain)."""
    old, new = old if isinstance(old, dict) else {}, new if isinstance(new, dict) else {}
    return [{"name": k, "old": old.get(k), "new": new.get(k)} for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


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
    out = []
    eo, en = (old["material"].get("env") or {}), (new["material"].get("env") or {})
    for section, kind in (("libraries", "library"), ("vars", "variable")):
        a, b = eo.get(section) or {}, en.get(section) or {}
        if section == "vars":  # a lock file keeps a digest of each value: compare like with like
            a, b = _redacted_like(a, b), _redacted_like(b, a)
        for name in sorted(a.keys() | b.keys()):
            if a.get(name) != b.get(name):
                out.append({"kind": kind, "name": name, "old": a.get(name), "new": b.get(name), "keyed": True})
    ro, rn = old.get("record") or {}, new.get("record") or {}
    if ro and rn:
        for name in ("python", "forgebuild", "platform", "git_commit"):
            if name in ro and name in rn and ro[name] != rn[name]:
                out.append({"kind": "recorded", "name": name, "old": ro.get(name), "new": rn.get(name),
                            "keyed": False})
    return out


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
        out.append(f"param {p['name']} added (= {_show(p['new'])})" if p["change"] == "added" else
                   f"param {p['name']} removed (was {_show(p['old'])})" if p["change"] == "removed" else
                   f"param {p['name']} {_show(p['old'])} -> {_show(p['new'])}")
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
            out.append(f"{e['kind']} {e['name']} {_show(e['old'])} -> {_show(e['new'])}")
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


def chain_text(chain: list[str]) -> str:
    return " differs because ".join(chain)


# ====================================================================== numbers: stats, metrics

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def number_changes(old, new) -> list[dict]:
    """Numeric (and boolean) leaves that differ, flattened: {"name", "old", "new", "delta"}."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    before, after = _flatten(old), _flatten(new)
    out = []
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a == b or not (_number(a) or _number(b) or isinstance(a, bool) or isinstance(b, bool)):
            continue
        delta = b - a if _number(a) and _number(b) else None
        out.append({"name": name, "old": a, "new": b, "delta": _finite(delta)})
    return out


def _finite(x):
    return x if x is None or math.isfinite(x) else None


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
                     "delta": _finite(vb - va) if _number(va) and _number(vb) else None,
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


# ====================================================================== weights

DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}


def safetensors_index(path: str) -> dict:
    """name -> {"dtype", "shape", "start", "end"} (absolute byte offsets), from the file's header only."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        size = int.from_bytes(head, "little")
        if size > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header of {size} bytes)")
        header = json.loads(f.read(size))
    base = 8 + size
    return {name: {"dtype": info["dtype"], "shape": list(info["shape"]), "start": base + info["data_offsets"][0],
                   "end": base + info["data_offsets"][1]}
            for name, info in header.items() if name != "__metadata__"}


def _chunks(path: str, info: dict, elements: int = CHUNK_ELEMENTS):
    """The tensor as float64 arrays of at most `elements` values, read one at a time."""
    import numpy as np

    raw = np.dtype(DTYPES[info["dtype"]])
    step = elements * raw.itemsize
    with open(path, "rb") as f:
        f.seek(info["start"])
        left = info["end"] - info["start"]
        while left > 0:
            data = f.read(min(step, left))
            if not data:
                raise ValueError(f"{path}: truncated tensor data")
            left -= len(data)
            values = np.frombuffer(data, dtype=raw)
            if info["dtype"] == "BF16":
                values = (values.astype(np.uint32) << 16).view(np.float32)
            del data
            yield values.astype(np.float64)


def _raw_chunks(path: str, info: dict, size: int = 8 << 20):
    with open(path, "rb") as f:
        f.seek(info["start"])
        left = info["end"] - info["start"]
        while left > 0:
            data = f.read(min(size, left))
            if not data:
                return
            left -= len(data)
            yield data


def tensor_norms(path_a: str, info_a: dict, path_b: str, info_b: dict, elements: int = CHUNK_ELEMENTS) -> dict:
    """Sums of squares of a, b and a - b over two same-shaped tensors, chunk by chunk.

    Both sides are read `elements` values at a time (whatever their dtypes), so chunks pair up.
    """
    import numpy as np

    sa = sb = sd = 0.0
    for a, b in zip(_chunks(path_a, info_a, elements), _chunks(path_b, info_b, elements)):
        if len(a) != len(b):
            raise ValueError("tensor data of different lengths")
        sa += float(np.dot(a, a))
        sb += float(np.dot(b, b))
        np.subtract(a, b, out=a)
        sd += float(np.dot(a, a))
    return {"old": sa, "new": sb, "diff": sd}


def _layer(name: str) -> str:
    m = re.match(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks|block)\.\d+)\.", name)
    if m:
        return m.group(1)
    return name.rsplit(".", 1)[0] if "." in name else name


def weight_diff(old_paths: list[str], new_paths: list[str], top: int = TOP_TENSORS,
                elements: int = CHUNK_ELEMENTS) -> dict:
    """Tensor by tensor, over every tensor of the safetensors files of each side (shards merged by name).

    Memory stays bounded by a few chunks of `elements` values, whatever the tensor sizes.
    Each tensor: {"name", "layer", "change" (changed, same, reshaped, added, removed, unsupported),
    "shape_old", "shape_new", "dtype_old", "dtype_new", "old_l2", "new_l2", "diff_l2", "relative"}
    with relative = ||old - new|| / ||old|| (None when ||old|| is 0 and something changed).
    """
    index_a = {name: (p, info) for p in old_paths for name, info in safetensors_index(p).items()}
    index_b = {name: (p, info) for p in new_paths for name, info in safetensors_index(p).items()}
    tensors, layers = [], {}
    for name in sorted(index_a.keys() | index_b.keys()):
        (pa, ia), (pb, ib) = index_a.get(name, (None, None)), index_b.get(name, (None, None))
        t = {"name": name, "layer": _layer(name), "shape_old": ia and ia["shape"], "shape_new": ib and ib["shape"],
             "dtype_old": ia and ia["dtype"], "dtype_new": ib and ib["dtype"],
             "old_l2": None, "new_l2": None, "diff_l2": None, "relative": None}
        tensors.append(t)
        if ia is None or ib is None:
            t["change"] = "added" if ia is None else "removed"
            continue
        if ia["shape"] != ib["shape"]:
            t["change"] = "reshaped"
            continue
        if ia["dtype"] not in DTYPES or ib["dtype"] not in DTYPES:
            same = ia["dtype"] == ib["dtype"] and all(
                x == y for x, y in zip(_raw_chunks(pa, ia), _raw_chunks(pb, ib)))
            t["change"] = "same" if same else "unsupported"
            continue
        sums = tensor_norms(pa, ia, pb, ib, elements)
        t["old_l2"], t["new_l2"], t["diff_l2"] = (math.sqrt(sums[k]) for k in ("old", "new", "diff"))
        t["relative"] = t["diff_l2"] / t["old_l2"] if t["old_l2"] > 0 else (0.0 if t["diff_l2"] == 0 else None)
        t["change"] = "same" if t["diff_l2"] == 0 else "changed"
        layer = layers.setdefault(t["layer"], {"layer": t["layer"], "tensors": 0, "changed": 0, "old": 0.0, "diff": 0.0})
        layer["tensors"] += 1
        layer["changed"] += t["change"] == "changed"
        layer["old"] += sums["old"]
        layer["diff"] += sums["diff"]
    counts = {c: sum(t["change"] == c for t in tensors)
              for c in ("changed", "same", "reshaped", "added", "removed", "unsupported")}
    total_old = sum(layer["old"] for layer in layers.values())
    total_diff = sum(layer["diff"] for layer in layers.values())
    layer_rows = []
    for layer in layers.values():
        old, diff = math.sqrt(layer["old"]), math.sqrt(layer["diff"])
        layer_rows.append({"layer": layer["layer"], "tensors": layer["tensors"], "changed": layer["changed"],
                           "old_l2": old, "diff_l2": diff,
                           "relative": diff / old if old > 0 else (0.0 if diff == 0 else None)})
    order = lambda row: (-(row["relative"] if row["relative"] is not None else math.inf), -(row["diff_l2"] or 0.0))
    layer_rows.sort(key=lambda r: (order(r), r["layer"]))
    ranked = sorted((t for t in tensors if t["change"] == "changed"), key=lambda t: (order(t), t["name"]))
    return {"counts": counts, "tensors": tensors, "top": [t["name"] for t in ranked[:top]],
            "layers": layer_rows[:top], "total": {
                "old_l2": math.sqrt(total_old), "diff_l2": math.sqrt(total_diff),
                "relative": math.sqrt(total_diff) / math.sqrt(total_old) if total_old > 0 else None}}


# ====================================================================== rendering: text

def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def _num(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return _show(x)
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


def render_text(result: dict) -> str:
    out = [f"forgebuild diff {result['a']['arg']} {result['b']['arg']}",
           _side_line("old", result["a"]), _side_line("new", result["b"])]
    for what in ("added", "removed"):
        if result[what]:
            out += ["", f"targets {what}: {', '.join(result[what])}"]
    if result["toolchain"]:
        out += ["", "toolchain (lock files):"]
        out += [f"  {t['name']}: {_show(t['old'])} -> {_show(t['new'])}" for t in result["toolchain"]]
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
        out.append(f"{pad}rule: {_show(node['rule']['old'])} -> {_show(node['rule']['new'])}")
    if node["seed"]:
        out.append(f"{pad}seed: {node['seed']['old']} -> {node['seed']['new']}")
    if node["params"]:
        out.append(f"{pad}params:")
        for p in node["params"]:
            out.append(f"{pad}  {p['name']}: " + (f"added (= {_show(p['new'])})" if p["change"] == "added" else
                                                  f"removed (was {_show(p['old'])})" if p["change"] == "removed"
                                                  else f"{_show(p['old'])} -> {_show(p['new'])}"))
    if node["data"]:
        out.append(f"{pad}data:")
        for d in node["data"]:
            out.append(f"{pad}  {d['input']}: {_describe_files(d)}")
            for what in ("changed", "added", "removed"):
                names, more = _names(d[what])
                out += [f"{pad}    {what:<8} {name}" for name in names]
                if more:
                    out.append(f"{pad}    ... {more} more {what}")
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
            out.append(f"{pad}  {e['kind']} {e['name']}: {_show(e['old'])} -> {_show(e['new'])}{note}")
    outputs = node.get("outputs")
    if outputs:
        if "note" in outputs:
            out.append(f"{pad}outputs: {outputs['note']}")
        else:
            out.append(f"{pad}outputs: {_describe_files(outputs)}, {outputs['bytes_old']} -> {outputs['bytes_new']} bytes")
            for what in ("changed", "added", "removed"):
                names, more = _names(outputs[what])
                out += [f"{pad}  {what:<8} {name}" for name in names]
                if more:
                    out.append(f"{pad}  ... {more} more {what}")
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


# ====================================================================== rendering: markdown

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
        out += [f"| {_code(t['name'])} | {_code(_show(t['old']))} | {_code(_show(t['new']))} |" for t in result["toolchain"]]
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
        rows.append(["rule", _code(_show(node["rule"]["old"])), _code(_show(node["rule"]["new"]))])
    if node["seed"]:
        rows.append(["seed", _code(node["seed"]["old"]), _code(node["seed"]["new"])])
    rows += [[_code(p["name"]), _code(_show(p["old"])) if p["change"] != "added" else "(absent)",
              _code(_show(p["new"])) if p["change"] != "removed" else "(absent)"] for p in node["params"]]
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
          [[_code(f"{e['kind']} {e['name']}"), _code(_show(e["old"])), _code(_show(e["new"])),
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
