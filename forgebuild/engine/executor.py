"""Build the stale targets of a closure: in dependency order, in parallel where independent.

For each target whose dependencies are done, the scheduler computes its action
key from their *output* digests; a hit in the action cache is reused, a miss is
fetched from the remote cache when one is configured, else built by a worker thread.

Fetches are jobs in a lane of their own (FETCHES threads), beside the `jobs` build
slots: a slow download never holds a ready build back, and a build never holds a
fetch back, even at -j1. A target the planner saw on the remote (state `remote`) is
fetched from the start of the run, before its dependencies are settled (its key is
known from their remote digests), so a chain of fetches overlaps; it is settled in
dependency order all the same. The blobs of every fetch share the remote's one pool
of downloads. A build:

    lock the key -> check the cache again -> fresh scratch output folder ->
    rule.build (a child process unless the rule only launches a command) ->
    hash and ingest the output -> action-cache entry -> build record ->
    materialise at the stable path

Nothing enters the cache unless the build succeeded, and every store write is
atomic, so a killed build leaves no half artifact. A failure skips the
target's dependents; without keep_going no new build starts after it.
"""
from __future__ import annotations

import fcntl
import heapq
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from forgebuild import __version__
from forgebuild.engine.context import BuildContext
from forgebuild.engine.launcher import SAFE_PATH, kill_leftovers, kill_running, log_tail, marker, run_logged
from forgebuild.engine.scratch import OUT, Failure, read_failure, read_memos, read_metrics, read_verdict
from forgebuild.errors import BadInput, ForgeError, RuleFailed, StoreError
from forgebuild.engine.guard import InputGuard
from forgebuild.hashing import bytes_digest, file_digest
from forgebuild.planning.keys import Decision, action_key, explain, material
from forgebuild.planning.plan import Plan, TargetPlan, resolve_sources
from forgebuild.rules import parse_params
from forgebuild.store.workspace import remove_tree

# Targets fetched at once: each is an entry and a record (one GET each, the entry usually already read
# by the planner) and its blobs, which go to the remote's shared pool of 8 downloads (store/remote.py).
FETCHES = 8
EARLY_FAILED = object()  # an early fetch was refused: tried again, and said, when the target is ready


@dataclass
class Result:
    target: str
    action: str  # "built" | "cached" | "skipped" | "failed"
    key: str | None = None
    digest: str | None = None
    reason: str = ""
    seconds: float = 0.0
    exit_code: int = 0  # of a failure: 2 when the stage found its input data bad, else 1

    def as_dict(self) -> dict:
        return {"target": self.target, "action": self.action, "key": self.key, "digest": self.digest,
                "reason": self.reason, "seconds": round(self.seconds, 3)}


@dataclass(order=True)
class Pending:
    """A target waiting for a build slot (build order first), or being fetched."""

    position: int
    address: str = field(compare=False)
    key: str = field(compare=False)
    mat: dict = field(compare=False, repr=False)


class KeyLock:
    """An exclusive lock per action key, across processes (flock on a file in the store)."""

    def __init__(self, store, key: str):
        self.path = os.path.join(store.root, "locks", f"{key}.lock")
        self.fd = None

    def acquire(self, on_wait=None) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Executor:
    def __init__(self, plan: Plan, workspace, store, stat_cache, reporter, load_rules, jobs=1, keep_going=False,
                 force=False, remote=None, runner=None, spawn=None):
        """`load_rules()` gives {kind: rule module}; called only when a rule builds in this process
        (the run rule), since importing every rule costs ~0.1 s that isolated builds never need."""
        self.plan, self.ws, self.store, self.stat_cache = plan, workspace, store, stat_cache
        self.report, self.load_rules = reporter, load_rules
        self.jobs, self.keep_going, self.force = max(1, jobs), keep_going, force
        self.remote = remote  # a shared cache: read on a local miss, written after a build
        self.runner = runner  # None: build processes are children of this one; else Ray or Slurm
        # How a local build process starts: launcher.run_logged's signature and exit status (a warm pool's run)
        self.spawn = spawn or run_logged
        self._git_commit = False

    @property
    def git_commit(self) -> str | None:
        if self._git_commit is False:
            self._git_commit = git_commit(self.plan.root)
        return self._git_commit

    # ---------------------------------------------------------------- scheduling

    def run(self, addresses, decisions: dict[str, Decision]) -> list[Result]:
        """Each target starts once its dependencies are settled; linear in the graph's size."""
        closure = self.plan.closure(addresses)
        with ThreadPoolExecutor(self.jobs) as pool, ThreadPoolExecutor(FETCHES, "forge-fetch-target") as lane:
            run = Schedule(self, closure, decisions, pool, lane)
            try:
                while run.ready or run.to_build or run.running:
                    run.admit_ready()
                    run.start_builds()
                    if run.running:
                        done, _ = wait(run.running, return_when=FIRST_COMPLETED)
                        for future in done:
                            run.finish(future)
            except BaseException:
                kill_running()
                for future in run.early.values():
                    future.cancel()
                raise
        return [run.results[a] for a in closure]

    def _prefetch(self, lane, closure, decisions) -> dict:
        """Fetches of the targets the planner saw on the remote, started now: {address: Future} (the Future
        carries the key it fetches). Their dependencies need not be settled: the key is known."""
        early = {}
        if self.remote is None or self.force:
            return early
        for address in closure:
            d = decisions.get(address)
            if d is not None and d.state == "remote":
                future = lane.submit(self._fetch_early, d.key, address, d.material)
                future.key = d.key
                early[address] = future
        return early

    def _may_fetch(self, key: str) -> bool:
        """Whether the remote may have `key`: not when there is none, or it is off, or this run already read
        that it has no entry (the planner's read is not repeated)."""
        if self.remote is None or self.force or self.remote.disabled:
            return False
        return not self.remote.known_miss(key)

    def _emit_result(self, result: Result) -> Result:
        self.report(dict(event=result.action, **result.as_dict()))
        return result

    def _try_cache(self, address: str, results, position: int, early: dict):
        """A Result if the local action cache has the target, else a Pending (its key and material). A target
        being fetched early under this key is Pending: its fetch (which may have filled the local cache
        already) says how it came."""
        target = self.plan.targets[address]
        dep_digests = {d: results[d].digest for d in target.deps}
        mat = material(self.plan, target, self.stat_cache, dep_digests)
        key = action_key(mat)
        if not self.force and getattr(early.get(address), "key", None) != key:
            entry = self.store.get_action(key, address)
            if entry is not None:
                return self._cached(address, key, entry, mat, "up to date")
        return Pending(position, address, key, mat)

    def _reason(self, job: Pending, decision: Decision | None) -> str:
        """Why the target builds: the planner's words when it keyed it the same (and did not expect a fetch)."""
        if self.force:
            return "forced (-B)"
        if decision is not None and decision.key == job.key and decision.state != "remote":
            return "; ".join(decision.reasons)
        last = self.ws.last_build(job.address)
        return "; ".join(explain(last.get("material") if last else None, job.mat))

    def _fetch_early(self, key: str, address: str, mat: dict):
        """A fetch before the target's dependencies are settled: a refusal here is not said yet (EARLY_FAILED),
        since a blob it shares with a dependency that is being rebuilt here will be in the local cache then."""
        from forgebuild.store.remote import RemoteUnreachable

        try:
            return self.remote.fetch(key, address, self.store, mat)
        except RemoteUnreachable:
            raise
        except StoreError:
            return EARLY_FAILED

    def _fetch(self, key: str, address: str, mat: dict) -> dict | None:
        """The remote's entry, its blobs now in the local store (a job in the fetch lane); None when it is not
        there or is refused (one warning: the target is built here)."""
        if self.remote is None:
            return None
        from forgebuild.store.remote import RemoteUnreachable

        try:
            return self.remote.fetch(key, address, self.store, mat)
        except RemoteUnreachable:
            raise
        except StoreError as e:  # a corrupt or tampered remote entry: say so, build here
            self.report({"event": "warning", "target": address, "message": f"{e}; building locally"})
            return None

    def _push(self, address: str, key: str, entry: dict) -> None:
        if self.remote is None:
            return
        try:
            self.remote.push(key, entry, self.store)
        except StoreError as e:
            self.report({"event": "warning", "target": address, "message": f"push failed: {e}"})

    def _cached(self, address: str, key: str, entry: dict, mat: dict, reason: str) -> Result:
        self.ws.materialise(address, entry, self.store)
        self._remember(address, key, entry["digest"], mat, None, "cached")
        if "verdict" in entry:  # a kept failure (a failed gate): the same answer, without re-running
            return self._verdict(address, key, entry, 0.0)
        return self._emit_result(Result(address, "cached", key, entry["digest"], reason))

    def _verdict(self, address: str, key: str, entry: dict, seconds: float) -> Result:
        result = Result(address, "failed", key, entry["digest"], entry["verdict"], seconds, 1)
        self.report({"event": "failed", **result.as_dict(), "verdict": True, "log_tail": "",
                     "log": self.ws.log_path(address)})
        return result

    def _remember(self, address, key, digest, mat, record_id, action) -> None:
        if action == "cached" and (self.ws.last_build(address) or {}).get("key") == key:
            return  # nothing new to say: the history records changes, not every no-op
        self.ws.record_build(address, {"key": key, "digest": digest, "material": mat, "record": record_id})
        self.ws.append_log({"target": address, "action": action, "key": key, "digest": digest, "record": record_id})

    # ---------------------------------------------------------------- building

    def _build(self, address: str, key: str, mat: dict, reason: str) -> Result:
        started = time.time()
        lock = KeyLock(self.store, key)
        lock.acquire(on_wait=lambda: self.report({"event": "waiting", "target": address, "key": key,
                                                  "reason": "another build of the same key is running"}))
        try:
            if not self.force:
                entry = self.store.get_action(key, address)
                if entry is not None:  # another process built it while we waited
                    return self._cached(address, key, entry, mat, "built by another process")
            return self._build_locked(address, key, mat, reason)
        except RuleFailed as e:
            return self._failed(address, key, e.message, e.log_tail, started, e.exit_code)
        except ForgeError as e:
            return self._failed(address, key, str(e), "", started)
        except Exception as e:  # a rule's bug or a full disk must not take the other builds down
            with open(self.ws.log_path(address), "a", encoding="utf-8") as f:
                traceback.print_exc(file=f)
            return self._failed(address, key, f"{type(e).__name__}: {e}", "", started)
        finally:
            lock.release()

    def _failed(self, address: str, key: str, message: str, tail: str, started: float, exit_code=1) -> Result:
        tail = tail or log_tail(self.ws.log_path(address))
        result = Result(address, "failed", key, None, message, time.time() - started, exit_code)
        self.report({"event": "failed", **result.as_dict(), "log_tail": tail, "log": self.ws.log_path(address)})
        return result

    def _build_locked(self, address: str, key: str, mat: dict, reason: str) -> Result:
        if getattr(self.runner, "worker_files", "shared") == "remote":  # no folder of this workspace reaches the worker
            return self._build_on_worker(address, key, mat, reason)
        target = self.plan.targets[address]
        self.report({"event": "start", "target": address, "key": key, "reason": reason})
        started = time.time()
        leftovers = self.ws.leftover_scratch(key)
        if leftovers:  # an earlier attempt was killed: stop what it left running, drop what it wrote
            kill_leftovers(marker(key, self.ws.dir))
            for folder in leftovers:
                remove_tree(folder)
        scratch = self.ws.scratch(key)
        out = os.path.join(scratch, OUT)
        os.makedirs(out)
        work = self.ws.work(key)
        os.makedirs(work, exist_ok=True)
        log = self._new_log(address, key, reason)
        dep_digests = {a: d for entries in mat["inputs"].values() for kind, a, d in entries if kind == "target"}
        sources = self._context_sources(target, dep_digests)
        ctx = BuildContext(
            target=address, kind=target.kind, key=key, inputs=self._context_inputs(sources), sources=sources,
            out=out, work=work,
            seed=mat["seed"], project_dir=self.plan.root, log_path=log,
            raw_params=target.values, version=target.version,
            digests={rel: d for entries in mat["inputs"].values() for kind, rel, d in entries if kind == "file"},
            dep_digests=dep_digests,
            store_root=self.store.root, workspace_dir=self.ws.dir,
        )
        guard = InputGuard(self.plan.root, self.ws, self.store, mat)
        try:
            self._run_rule(ctx, target)
        finally:  # a failed stage's damage is repaired all the same, and named first
            guard.watch_handed(scratch)
            damage = guard.check()
            if damage:
                raise RuleFailed(address, damage, log_tail(log))
        seconds = time.time() - started
        entry, record = self._store_build(target, key, mat, scratch, started, seconds, log)
        self._push(address, key, entry)
        self.ws.materialise(address, entry, self.store)
        self._remember(address, key, entry["digest"], mat, entry["record"], "built")
        remove_tree(scratch)
        remove_tree(work)  # checkpoints are only for resuming this key, which is now done
        if "verdict" in entry:
            return self._verdict(address, key, entry, seconds)
        built = Result(address, "built", key, entry["digest"], reason, seconds)
        self.report({"event": "built", **built.as_dict(), **({"metrics": record["metrics"]} if "metrics" in record else {})})
        return built

    def _run_rule(self, ctx: BuildContext, target: TargetPlan) -> None:
        if target.isolate or self.runner is not None:
            self._build_in_child(ctx, target)
            return
        rule = self.load_rules()[target.kind]
        ctx.params = parse_params(rule, ctx.raw_params)
        try:
            rule.build(ctx)
        except RuleFailed as e:  # type(e): a BadInput keeps its exit code 2, as from a worker
            raise type(e)(ctx.target, e.message, log_tail(ctx.log_path)) from None

    def _store_build(self, target: TargetPlan, key, mat, scratch, started, seconds, log) -> tuple[dict, dict]:
        """Output, log, record, statement, then the action-cache entry: (entry, record). Whatever this build
        added to the store goes again if a write fails before the entry (a full disk): nothing orphaned."""
        added: list[str] = []  # new blobs
        record_id = None
        try:
            entry = self._ingest(target.address, key, os.path.join(scratch, OUT), added)
            memos = read_memos(scratch)
            if memos is not None:
                entry["memos"] = memos
            record = self._record(target, key, mat, entry, started, seconds, log, added)
            record["sources_text"] = self._code_texts(mat)
            metrics = read_metrics(scratch)
            if metrics is not None:
                record["metrics"] = metrics
            verdict = read_verdict(scratch)
            if verdict is not None:
                entry["verdict"] = record["verdict"] = verdict
            record_id = entry["record"] = self.store.put_record(record)
            entry["provenance"] = self._statement(scratch, target.address, key, mat, entry, record, added)
            self.store.put_action(key, entry)  # last: the entry is the commit point of the build
        except BaseException:
            self._unstore(added, record_id)
            raise
        return entry, record

    def _unstore(self, blobs: list[str], record_id: str | None) -> None:
        for digest in blobs:
            try:
                self.store.remove_blob(digest)
            except OSError:
                pass
        if record_id:
            try:
                self.store.remove_record(record_id)
            except OSError:
                pass

    def _code_texts(self, mat: dict) -> dict:
        """The text of the code a build read (reward functions, scorers, scripts): an audit diff shows
        how it changed, long after the files did. Python files under 256 KB that an input names on
        its own (a glob of code is data: corpus:repo would copy the project's sources into every
        record), and only the bytes the key hashed."""
        texts = {}
        for entries in mat["inputs"].values():
            files = [e for e in entries if e[0] == "file"]
            if len(files) != 1 or not files[0][1].endswith(".py"):
                continue
            _, rel, digest = files[0]
            path = os.path.join(self.plan.root, rel)
            try:
                if os.path.getsize(path) >= 262144:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                if bytes_digest(data) == digest:  # not a file edited since it was hashed
                    texts[rel] = data.decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
        return texts

    def _statement(self, scratch: str, address: str, key: str, mat: dict, entry: dict, record: dict,
                   added: list) -> str:
        """The artifact's provenance statement, stored as a blob; its digest."""
        from forgebuild.store import provenance

        path = os.path.join(scratch, "provenance.json")
        with open(path, "wb") as f:
            f.write(provenance.encode(provenance.statement(address, key, mat, entry, record)))
        digest = file_digest(path)
        if self.store.put_file(path, digest):
            added.append(digest)
        return digest

    def _context_sources(self, target: TargetPlan, digests: dict[str, str]) -> dict[str, list[dict]]:
        """Each input as the Forgefile wrote it, with what it resolved to.

        Key path -> [{"spec", "kind": "target" | "glob" | "path", "path", "files"}]:
        for a target, "path" is its artifact folder and "address"/"digest" name it;
        for a glob or a path (file or folder), "files" are the project-relative files.
        """
        found: dict[str, list[dict]] = {}
        for spec in target.inputs:
            item = {"spec": spec.spec, "kind": spec.kind}
            if spec.kind == "target":
                item.update(path=self.ws.display(self.ws.artifact_dir(digests[spec.spec])), address=spec.spec,
                            digest=digests[spec.spec], files=[])
            elif spec.kind == "external":
                item.update(path=os.path.join(self.plan.root, os.path.expanduser(spec.spec)), files=[])
            else:
                files = [rel for rel, _ in resolve_sources(self.plan, target, spec)]
                item.update(path=os.path.normpath(spec.spec), files=files)
            found.setdefault(spec.key, []).append(item)
        return found

    @staticmethod
    def _context_inputs(sources: dict[str, list[dict]]) -> dict:
        """Input paths as commands see them: one string for a single file, folder or target;
        a list for a glob or a list of specs."""
        found = {}
        for key, items in sources.items():
            paths = [p for i in items for p in (i["files"] if i["kind"] == "glob" else [i["path"]])]
            plural = len(items) > 1 or items[0]["kind"] == "glob"
            found[key] = paths if plural else paths[0]
        return found

    def _build_in_child(self, ctx: BuildContext, target: TargetPlan) -> None:
        argv = [sys.executable, "-m", "forgebuild.engine.worker", ctx.save()]
        env, tag = {**os.environ, **SAFE_PATH}, marker(ctx.key, ctx.workspace_dir)
        if self.runner is None:
            code = self.spawn(argv, ctx.log_path, ctx.project_dir, env=env, key=tag)
        else:
            from forgebuild.engine.backends import resources

            code = self.runner.run(argv, ctx.log_path, ctx.project_dir, env, resources(target), tag)
        if code != 0:
            failure = read_failure(ctx.scratch_dir) or Failure(
                f"build process exited with code {code}" if code > 0 else f"build process killed by signal {-code}")
            kind = BadInput if failure.bad_input else RuleFailed
            raise kind(ctx.target, failure.message, log_tail(ctx.log_path))

    def _new_log(self, address: str, key: str, reason: str) -> str:
        """The stage log of this attempt, begun with what builds and why (a worker's lines follow it)."""
        log = self.ws.log_path(address)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "w", encoding="utf-8") as f:
            f.write(f"# forgebuild {address} key {key} ({reason})\n")
        return log

    def _build_on_worker(self, address: str, key: str, mat: dict, reason: str) -> Result:
        """--worker-files remote: the target builds in a worker's own copy of the project. Its dependencies go to
        the remote first; its artifact comes back from there, checked like any fetch (digests, provenance)."""
        from forgebuild.engine.backends import resources

        self.report({"event": "start", "target": address, "key": key, "reason": reason})
        started = time.time()
        log = self._new_log(address, key, reason)
        for entries in mat["inputs"].values():
            for kind, dep, digest in entries:
                if kind == "target":
                    self._hand_over(address, dep, digest)
        outcome = self.runner.build(address, key, resources(self.plan.targets[address]), log)
        event = outcome.settled(address, key, log)  # the worker's failure raises here, as a local one would
        try:
            entry = self.remote.fetch(key, address, self.store, mat, also_trust=outcome.signer)
        except StoreError as e:
            raise RuleFailed(address, f"built on a worker, but its artifact cannot be fetched: {e}") from None
        if entry is None:
            raise RuleFailed(address, f"built on a worker, but {self.remote.url} has no entry for key {key}")
        self.remote.push(key, entry, self.store)  # signed again with this workspace's key, which others trust
        worker = {"executor": self.runner.name, "host": outcome.host, "remote": self.remote.url,
                  "seconds": event.get("seconds")}
        record = self.store.get_record(entry["record"]) if entry.get("record") else None
        if record is not None:  # the worker wrote the record; this workspace's copy says where it ran
            self.store.put_record_as({**record, "worker": worker})
        self.ws.materialise(address, entry, self.store)
        self._remember(address, key, entry["digest"], mat, entry.get("record"), "built")
        seconds = time.time() - started
        if "verdict" in entry:
            return self._verdict(address, key, entry, seconds)
        built = Result(address, "built", key, entry["digest"], reason, seconds)
        self.report({"event": "built", **built.as_dict(), "worker": worker,
                     **({"metrics": event["metrics"]} if "metrics" in event else {})})
        return built

    def _hand_over(self, address: str, dep: str, digest: str) -> None:
        """A dependency's entry onto the remote, for the worker to fetch: the workspace's last build of it is
        the one this run settled (a push sends only what the remote lacks)."""
        last = self.ws.last_build(dep) or {}
        entry = self.store.get_action(last["key"], dep) if last.get("digest") == digest else None
        if entry is None:
            raise RuleFailed(address, f"dependency {dep} ({digest}) is not in the local cache to hand to the worker")
        self.remote.push(last["key"], entry, self.store)

    def _ingest(self, address: str, key: str, out: str, added: list) -> dict:
        try:
            manifest = self.store.ingest_tree(out, added)
        except ValueError as e:
            raise RuleFailed(address, f"output {e}") from None
        return {**manifest, "target": address, "key": key}

    def _record(self, target: TargetPlan, key, mat, entry, started, seconds, log, added: list) -> dict:
        log_digest = file_digest(log)
        if self.store.copy_in(log, log_digest):  # staged in the store's tmp/: a full disk leaves no part behind
            added.append(log_digest)
        return {
            "target": target.address, "key": key, "digest": entry["digest"], "material": mat,
            "runtime": target.runtime, "files": len(entry["files"]),
            "bytes": sum(f["size"] for f in entry["files"]), "log": log_digest,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "seconds": round(seconds, 3),
            "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "forgebuild": __version__, "forgefile": os.path.basename(self.plan.forgefile),
            "git_commit": self.git_commit,
        }


class Schedule:
    """One run's bookkeeping: what is ready, waiting for a build slot, being built or fetched, settled."""

    def __init__(self, executor: Executor, closure: list[str], decisions: dict[str, Decision], pool, lane):
        self.ex, self.decisions, self.pool, self.lane = executor, decisions, pool, lane
        targets = executor.plan.targets
        self.position = {a: i for i, a in enumerate(closure)}
        self.waiting = {a: len(targets[a].deps) for a in closure}
        self.readers: dict[str, list[str]] = {a: [] for a in closure}
        for address in closure:
            for dep in targets[address].deps:
                self.readers[dep].append(address)
        self.ready = [(self.position[a], a) for a in closure if self.waiting[a] == 0]  # build order breaks ties
        heapq.heapify(self.ready)
        self.to_build: list[Pending] = []
        self.results: dict[str, Result] = {}
        self.running: dict = {}  # future -> Pending: a build, or a fetch when it is in `fetching`
        self.fetching: set = set()
        self.stopped_by = None
        self.early = executor._prefetch(lane, closure, decisions)

    def settle(self, address: str, result: Result) -> None:
        self.results[address] = result
        for reader in self.readers[address]:
            self.waiting[reader] -= 1
            if self.waiting[reader] == 0:
                heapq.heappush(self.ready, (self.position[reader], reader))

    def skip(self, address: str, reason: str) -> None:
        self.settle(address, self.ex._emit_result(Result(address, "skipped", reason=reason)))

    def admit_ready(self) -> None:
        """Every ready target: skipped, settled from the local cache, fetched, or waiting for a build slot."""
        while self.ready:
            _, address = heapq.heappop(self.ready)
            bad = [d for d in self.ex.plan.targets[address].deps if self.results[d].action in ("failed", "skipped")]
            if bad or self.stopped_by:
                self.skip(address, f"dependency {bad[0]} {self.results[bad[0]].action}" if bad
                          else f"build stopped after {self.stopped_by} failed")
                continue
            hit = self.ex._try_cache(address, self.results, self.position[address], self.early)
            if isinstance(hit, Result):
                self.settle(address, hit)
            elif self.ex._may_fetch(hit.key):
                future = self.early.pop(address, None)
                self.fetch(hit, future if getattr(future, "key", None) == hit.key else None)
            else:
                heapq.heappush(self.to_build, hit)

    def fetch(self, job: Pending, future=None) -> None:
        if future is None:
            future = self.lane.submit(self.ex._fetch, job.key, job.address, job.mat)
        self.running[future] = job
        self.fetching.add(future)

    def start_builds(self) -> None:
        """Builds into the free slots (fetches take none); after a failure, none: what waits is skipped."""
        while self.to_build and len(self.running) - len(self.fetching) < self.ex.jobs and not self.stopped_by:
            job = heapq.heappop(self.to_build)
            reason = self.ex._reason(job, self.decisions.get(job.address))
            self.running[self.pool.submit(self.ex._build, job.address, job.key, job.mat, reason)] = job
        if self.stopped_by:
            for job in self.to_build:
                self.skip(job.address, f"build stopped after {self.stopped_by} failed")
            self.to_build.clear()

    def finish(self, future) -> None:
        job = self.running.pop(future)
        if future in self.fetching:
            self.fetching.discard(future)
            entry = future.result()
            if entry is EARLY_FAILED:  # again, now that its dependencies are here (that one warns)
                self.fetch(job)
            elif entry is None:  # not there, or refused (warned): built here
                heapq.heappush(self.to_build, job)
            else:
                self.settle(job.address, self.ex._cached(job.address, job.key, entry, job.mat,
                                                         f"fetched from {self.ex.remote.url}"))
            return
        result = future.result()
        self.settle(job.address, result)
        if result.action == "failed" and not self.ex.keep_going and self.stopped_by is None:
            self.stopped_by = job.address


def git_commit(folder: str) -> str | None:
    """The project's git commit, recorded (never keyed) for provenance."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None

