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

Here: the verb and the tree (`Auditor`). `diff_resolve` finds the builds an argument names,
`diff_changes` compares the parts of one pair, `tensors` the weights, `diff_render` prints the tree.
"""
from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys

from forgebuild.cli.diff_changes import (build_info, causes, chains, dependency_changes, dependency_inputs,
                                         environment_changes, number_changes, param_changes, report_changes,
                                         rule_change, side_info, value_changes)
from forgebuild.cli.diff_render import render_markdown, render_text
from forgebuild.cli.diff_resolve import Resolver
from forgebuild.cli.tensors import weight_diff
from forgebuild.errors import UsageError
from forgebuild.hashing import bytes_digest
from forgebuild.planning.change import diff

TEXT_LIMIT = 256 * 1024      # largest source whose text is read for a unified diff


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


class Auditor(Resolver):
    """Builds the tree of one diff: a node per pair of builds of a target, down the dependencies."""

    def __init__(self, session):
        super().__init__(session)
        self._git: dict = {}      # (commit, path) -> the file's bytes at that commit, or None

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
        changes = diff(mo, mn)
        node["seed"] = next(({"old": c.old, "new": c.new} for c in changes if c.kind == "seed"), None)
        node["params"] = param_changes(changes)
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
