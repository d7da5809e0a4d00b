"""The command line: `forgebuild [TARGET...]` builds; other verbs inspect and tidy.

Exit codes: 0 success, 1 a build failed (or a target is not built, for `path`),
2 bad usage, a bad Forgefile or a corrupt cache. Never a traceback for those.

A no-op build stays on the standard library and xxhash: the plan comes from
.forge/plan.json when the Forgefile is unchanged, and pydantic, networkx,
fsspec and rich are imported only when something must be validated, drawn or
built.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from forgebuild import __version__
from forgebuild.planning import plan as planlib
from forgebuild.errors import ForgefileError, ForgeError, UsageError, did_you_mean, suggest_address
from forgebuild.hashing import StatCache
from forgebuild.store.workspace import Workspace

VERBS = ("build", "status", "explain", "graph", "path", "show", "log", "clean", "gc", "schema", "lock", "verify",
         "diff", "cache", "join", "keys")
TAKES_VALUE = {"-f", "--file", "-j", "--jobs", "--format", "--limit", "--grace", "--remote", "--lock", "--executor",
               "--node-rank", "--wait", "--worker-files"}


# ------------------------------------------------------------------ arguments

def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-f", "--file", default=None, help="the Forgefile (default: ./Forgefile.toml)")
    common.add_argument("--json", action="store_true", help="JSON Lines on stdout, a summary object last")
    common.add_argument("-v", "--verbose", action="store_true", help="say more")
    common.add_argument("-q", "--quiet", action="store_true", help="only failures and the summary")
    common.add_argument("--remote", default=None, metavar="URL",
                        help="a shared cache (fsspec URL); also FORGE_REMOTE or [forge] remote")
    common.add_argument("--no-push", action="store_true", help="read from the remote, never write to it")
    common.add_argument("--require-remote", action="store_true",
                        help="fail (exit 2) instead of going on locally when the remote cannot be reached")

    parser = argparse.ArgumentParser(prog="forgebuild", description="make for language models")
    parser.add_argument("--version", action="version", version=f"forgebuild {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    b = sub.add_parser("build", parents=[common], help="build targets (the default verb)")
    b.add_argument("targets", nargs="*", metavar="TARGET")
    b.add_argument("-j", "--jobs", type=int, default=None, help="stages to run in parallel")
    b.add_argument("-n", "--dry-run", action="store_true", help="say what would be built, build nothing")
    b.add_argument("-k", "--keep-going", action="store_true", help="after a failure, go on with independent targets")
    b.add_argument("-B", "--force", action="store_true", help="rebuild the targets and their dependencies")
    b.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="where stages run: here, as Ray tasks (RAY_ADDRESS or a local cluster), or as Slurm jobs "
                        "(submitit)")
    b.add_argument("--worker-files", choices=("shared", "remote"), default=None,
                   help="how Ray workers see the project: through a shared filesystem (shared, the default), or as "
                        "their own copy, exchanging artifacts through the remote cache (remote); also [forge] "
                        "worker_files")
    b.add_argument("--frozen", action="store_true",
                   help="fail (exit 1) when any target's key differs from Forgefile.lock, naming what changed")
    b.add_argument("--lock", default=None, metavar="FILE", help="the lock file (default: Forgefile.lock beside the Forgefile)")

    s = sub.add_parser("status", parents=[common], help="every target: fresh / stale / missing, and why")
    s.add_argument("targets", nargs="*", metavar="TARGET")
    e = sub.add_parser("explain", parents=[common], help="why a target would rebuild")
    e.add_argument("targets", nargs="+", metavar="TARGET")
    g = sub.add_parser("graph", parents=[common], help="the target graph")
    g.add_argument("targets", nargs="*", metavar="TARGET")
    g.add_argument("--format", choices=("text", "dot", "mermaid"), default="text")
    g.add_argument("--states", action="store_true", help="mark each target fresh / stale / missing")
    p = sub.add_parser("path", parents=[common], help="where a target's artifact is")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    sh = sub.add_parser("show", parents=[common], help="a target's build record (provenance)")
    sh.add_argument("targets", nargs="+", metavar="TARGET")
    lg = sub.add_parser("log", parents=[common], help="build history")
    lg.add_argument("targets", nargs="*", metavar="TARGET")
    lg.add_argument("--limit", type=int, default=50, help="at most this many entries (default 50)")
    c = sub.add_parser("clean", parents=[common], help="remove materialised outputs and scratch; keep the cache")
    c.add_argument("--cache", action="store_true", help="also empty the local cache")
    gc = sub.add_parser("gc", parents=[common], help="drop cache entries no current target uses")
    gc.add_argument("-n", "--dry-run", action="store_true", help="say what would be removed")
    gc.add_argument("--grace", type=float, default=3600.0,
                    help="keep objects written less than this many seconds ago (default 3600): they may belong to a running build")
    sub.add_parser("schema", parents=[common], help="JSON Schema of the Forgefile")
    lk = sub.add_parser("lock", parents=[common], help="write Forgefile.lock: every target's key, digest, toolchain")
    lk.add_argument("targets", nargs="*", metavar="TARGET")
    lk.add_argument("--lock", default=None, metavar="FILE", help="where (default: Forgefile.lock beside the Forgefile)")
    vf = sub.add_parser("verify", parents=[common], help="re-hash the cache, or rebuild and compare digests")
    vf.add_argument("targets", nargs="*", metavar="TARGET")
    vf.add_argument("--rebuild", action="store_true", help="rebuild the closure ignoring caches and compare digests")
    df = sub.add_parser("diff", parents=[common], help="what differs between two builds, and why")
    df.add_argument("a", metavar="A", help="a build record id, TARGET@N (from `log`), or a lock file")
    df.add_argument("b", metavar="B", help="the same, for the other side")
    df.add_argument("--format", choices=("text", "markdown"), default="text")
    ca = sub.add_parser("cache", parents=[common], help="the shared remote cache: push or pull targets")
    ca.add_argument("action", choices=("push", "pull"))
    ca.add_argument("targets", nargs="*", metavar="TARGET")
    sub.add_parser("keys", parents=[common], help="make (once) and show this workspace's signing key for the remote")
    jn = sub.add_parser("join", parents=[common], help="on another node: take part in the multi-node stages of a build")
    jn.add_argument("targets", nargs="*", metavar="TARGET")
    jn.add_argument("--node-rank", type=int, default=None,
                    help="this node's rank (default: NODE_RANK or SLURM_NODEID); rank 0 builds")
    jn.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                    help="give up after waiting this long for a stage to join (default: wait for node 0)")
    jn.add_argument("-k", "--keep-going", action="store_true", help="after a failed stage, wait for the next")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`forgebuild [flags] [TARGET...]` means `forgebuild build ...`: insert the verb if absent."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in TAKES_VALUE:
            i += 2
            continue
        if token.startswith("-"):
            if token in ("-h", "--help", "--version"):
                break
            i += 1
            continue
        # the verb goes first, so `forgebuild -f F status` works like `forgebuild status -f F`
        argv = [token, *argv[:i], *argv[i + 1:]] if token in VERBS else ["build", *argv]
        break
    else:
        argv = ["build", *argv]
    args = _parser().parse_args(argv)
    if args.verb is None:
        args = _parser().parse_args(["build", *argv])
    return args


# ------------------------------------------------------------------ loading

class Session:
    """The loaded project: plan (cached when possible), workspace, store and stat cache."""

    def __init__(self, args, report=None):
        given = args.file or "Forgefile.toml"
        path = os.path.abspath(given)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            hint = "" if args.file else " (use -f FILE to name another)"
            raise UsageError(f"no Forgefile at {given}{hint}") from None
        except OSError as e:
            raise UsageError(f"cannot read {given}: {e.strerror}") from None
        self.workspace = Workspace(os.path.dirname(path))
        self._warned: set[str] = set()  # a cache file that cannot be saved is said once
        digest = planlib.forgefile_digest(data + path.encode())
        self.plan = planlib.load_cached(self.workspace.plan_path, digest)
        self._rules = None
        if self.plan is None:
            from forgebuild.planning import forgefile

            self.plan = forgefile.load(path, self.rules)
            self._save_cache(report, "plan cache", self.workspace.plan_path,
                             lambda: planlib.save(self.plan, self.workspace.plan_path, digest))
        cache = self.plan.settings.get("cache")
        from forgebuild.store.local import Store

        self.store = Store(os.path.join(self.plan.root, cache) if cache else self.workspace.dir)
        self.stat_cache = StatCache(self.workspace.statcache_path)
        self.args, self.report, self._remote = args, report, False

    @property
    def remote(self):
        """The shared cache, when one is configured (made on first use: fsspec stays unimported otherwise)."""
        if self._remote is False:
            from forgebuild.store.remote import remote_for

            self._remote = remote_for(self.args, self.plan.settings, self.plan.root, self.report, self.workspace.dir,
                                      self.plan.display_name)
        return self._remote

    @property
    def rules(self):
        if self._rules is None:
            from forgebuild.rules import load_rules

            self._rules = load_rules()
        return self._rules

    def resolve(self, names: list[str], use_default=False) -> list[str]:
        """Named targets; with none, `[forge] default` (when use_default) or every target."""
        if not names:
            default = self.plan.settings.get("default") if use_default else None
            return list(default) if default else list(self.plan.order)
        found, by_name = [], {}
        for address in self.plan.targets:
            by_name.setdefault(address.split(":", 1)[1], []).append(address)
        for name in names:
            if name in self.plan.targets:
                found.append(name)
            elif ":" not in name and len(by_name.get(name, [])) == 1:
                found.append(by_name[name][0])
            elif ":" not in name and name in by_name:
                raise UsageError(f"'{name}' is ambiguous: {', '.join(sorted(by_name[name]))}")
            else:
                hint = suggest_address(name, self.plan.targets) if ":" in name else did_you_mean(name, by_name)
                raise UsageError(f"no target '{name}' in {self.plan.display_name}{hint}")
        return found

    def decide(self, addresses, force=False):
        from forgebuild.planning.keys import decide

        return decide(self.plan, addresses, self.stat_cache, self.store.get_action, self.workspace.last_build, force)

    def close(self) -> None:
        """Save the stat cache (main calls this just before the summary, and again at the end)."""
        self._save_cache(self.report, "stat cache", self.stat_cache.path, self.stat_cache.save)

    def _save_cache(self, report, what: str, path: str, save) -> None:
        """The plan and stat caches only save work: a folder that cannot be written (read-only, full) is one
        warning, never a failed `status` or no-op build."""
        try:
            save()
        except OSError as e:
            if report is not None and what not in self._warned:
                self._warned.add(what)
                report({"event": "warning", "message": f"cannot save the {what} {self.workspace.display(path)}: "
                                                       f"[Errno {e.errno}] {e.strerror} (going on without it)"})


# ------------------------------------------------------------------ verbs

def cmd_build(args, session: Session, report) -> int:
    worker_files = args.worker_files or session.plan.settings.get("worker_files") or "shared"
    if worker_files == "remote" and args.executor != "local":  # bad usage exits 2 before anything runs, even a no-op
        from forgebuild.engine.backends import check_remote_files

        check_remote_files(args.executor, session.remote)
    addresses = session.resolve(args.targets, use_default=True)
    decisions = session.decide(addresses, force=args.force)
    if args.frozen:
        from forgebuild.cli.lockfile import frozen_problems

        if frozen_problems(args, session, decisions, report):
            return 1
    if args.dry_run:
        entries = []
        for d in decisions.values():
            action = "cached" if d.state == "fresh" else "would-build"
            entries.append({"target": d.address, "action": action, "key": d.key, "digest": d.digest,
                            "reason": "; ".join(d.reasons), "seconds": 0.0})
            if action != "cached" and not args.json:
                print(f"would build {d.address}  ({'; '.join(d.reasons)})")
        report({"event": "summary", "ok": True, "dry_run": True, "targets": entries})
        return 0
    ws = session.workspace
    if all(d.state == "fresh" and d.reasons == ["up to date"] and ws.is_materialised(a, d.digest)
           for a, d in decisions.items()):
        # The no-op fast path: nothing to build, nothing to link; no heavy import was needed.
        targets = [{"target": a, "action": "cached", "key": d.key, "digest": d.digest, "reason": "up to date",
                    "seconds": 0.0} for a, d in decisions.items()]
        report({"event": "summary", "ok": True, "targets": targets})
        return 0
    from forgebuild.engine import preflight

    # a missing package or a bad file: exit 2 now, not after minutes of work
    preflight.check(session.plan, session.rules, decisions, packages=args.executor == "local")
    from forgebuild.engine.executor import Executor

    jobs = args.jobs or session.plan.settings.get("jobs") or 1
    from forgebuild.engine.backends import make_runner

    executor = Executor(session.plan, ws, session.store, session.stat_cache, report, lambda: session.rules,
                        jobs=jobs, keep_going=args.keep_going, force=args.force, remote=session.remote,
                        runner=make_runner(args.executor, ws.dir, worker_files, session.remote, session.plan.forgefile,
                                           session.store.root))
    results = executor.run(addresses, decisions)
    ok = all(r.action in ("built", "cached") for r in results)
    if ok and args.frozen:  # a dependency rebuilt to another output changes its readers' keys only now
        from forgebuild.cli.lockfile import frozen_results

        ok = not frozen_results(args, session, results, report)
    report({"event": "summary", "ok": ok, "targets": [r.as_dict() for r in results]})
    failures = [r.exit_code or 1 for r in results if r.action == "failed"]
    return max(failures, default=0 if ok else 1)  # 2 when a stage found its input data bad


def cmd_status(args, session: Session, report) -> int:
    decisions = session.decide(session.resolve(args.targets))
    entries = []
    width = max((len(a) for a in decisions), default=0)
    for d in decisions.values():
        entry = {"target": d.address, "state": d.state, "reason": "; ".join(d.reasons), "key": d.key, "digest": d.digest}
        entries.append(entry)
        if args.json:
            report({"event": "status", **entry})
        elif not (args.quiet and d.state == "fresh"):
            print(f"{d.state:<8}{d.address:<{width}}  {entry['reason']}")
    if args.json:
        report({"event": "summary", "ok": True, "targets": entries})
    return 0


def cmd_explain(args, session: Session, report) -> int:
    wanted = session.resolve(args.targets)
    decisions = session.decide(wanted)
    shown = []
    for address in reversed(list(decisions)):  # the asked-for targets first, then what they wait on
        d = decisions[address]
        if address in wanted or d.state != "fresh":
            shown.append(d)
    for d in shown:
        if args.json:
            report({"event": "explain", "target": d.address, "state": d.state, "reasons": d.reasons, "key": d.key})
        else:
            print(f"{d.address}: {d.state}")
            for reason in d.reasons:
                print(f"  - {reason}")
    if args.json:
        report({"event": "summary", "ok": True, "targets": [
            {"target": d.address, "state": d.state, "reason": "; ".join(d.reasons)} for d in shown]})
    return 0


def cmd_graph(args, session: Session, report) -> int:
    from forgebuild.planning import graph

    addresses = session.resolve(args.targets)
    states = {a: d.state for a, d in session.decide(addresses).items()} if args.states else None
    text = graph.render(session.plan, addresses, args.format, states)
    if args.json:
        closure = session.plan.closure(addresses)
        report({"event": "graph", "format": args.format, "text": text,
                "nodes": closure, "edges": [[d, a] for a in closure for d in session.plan.targets[a].deps]})
    else:
        print(text)
    return 0


def cmd_path(args, session: Session, report) -> int:
    addresses = session.resolve(args.targets)
    decisions = session.decide(addresses)
    code, paths = 0, {}
    for address in addresses:
        d = decisions[address]
        if d.state != "fresh":
            print(f"forgebuild: {address} is {d.state} ({'; '.join(d.reasons)}); build it with `forgebuild {address}`",
                  file=sys.stderr)
            code = 1
            continue
        if not session.workspace.is_materialised(address, d.digest):
            session.workspace.materialise(address, session.store.get_action(d.key, address), session.store)
        paths[address] = os.path.abspath(session.workspace.out_link(address))
        if not args.json:
            print(paths[address])
    if args.json:
        report({"event": "summary", "ok": code == 0, "paths": paths})
    return code


def _record_for(session: Session, address: str) -> dict | None:
    last = session.workspace.last_build(address)
    if not last:
        return None
    record_id = last.get("record")
    if record_id is None:
        entry = session.store.get_action(last["key"], address)
        record_id = entry.get("record") if entry else None
    return session.store.get_record(record_id) if record_id else None


def cmd_show(args, session: Session, report) -> int:
    code = 0
    for address in session.resolve(args.targets):
        record = _record_for(session, address)
        if record is None:
            print(f"forgebuild: {address} has no build record yet; build it with `forgebuild {address}`", file=sys.stderr)
            code = 1
        elif args.json:
            report({"event": "record", **record})
        else:
            print(json.dumps(record, indent=2, sort_keys=True))
    return code


def cmd_log(args, session: Session, report) -> int:
    wanted = set(session.resolve(args.targets)) if args.targets else None
    entries = [e for e in session.workspace.history() if wanted is None or e.get("target") in wanted]
    for e in entries[-args.limit:]:
        if args.json:
            report({"event": "log", **e})
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))
            print(f"{when}  {e['action']:<7} {e['target']}  key {e['key'][:12]}  out {(e.get('digest') or '')[:12]}")
    return 0


def cmd_clean(args, session: Session, report) -> int:
    from forgebuild.store.workspace import remove_tree

    ws = session.workspace
    for part in ("out", "artifacts", "scratch", "work", "logs", "state"):
        remove_tree(ws.path(part))
    if args.cache:
        for part in ("cas", "ac", "records", "tmp", "locks"):
            remove_tree(os.path.join(session.store.root, part))
    what = "outputs, scratch and cache" if args.cache else "outputs and scratch (the cache is kept)"
    if not args.quiet and not args.json:
        print(f"removed {what} in {ws.display(ws.dir)}")
    if args.json:
        report({"event": "summary", "ok": True, "cleaned": what})
    return 0


def cmd_gc(args, session: Session, report) -> int:
    from forgebuild.store.gc import collect

    stats = collect(session, dry_run=args.dry_run, grace=args.grace)
    if args.json:
        report({"event": "summary", "ok": True, **stats})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {stats['actions']} cache entries, {stats['blobs']} blobs ({stats['bytes'] / 1e6:.1f} MB), "
              f"{stats['folders']} folders; kept {stats['kept_actions']} entries")
    return 0


def cmd_schema(args, session, report) -> int:
    from forgebuild.planning.schema import forgefile_schema

    print(json.dumps(forgefile_schema(), indent=2))
    return 0


def cmd_lock(args, session, report) -> int:
    from forgebuild.cli.lockfile import cmd_lock as run

    return run(args, session, report)


def cmd_verify(args, session, report) -> int:
    from forgebuild.cli.lockfile import cmd_verify as run

    return run(args, session, report)


def cmd_diff(args, session, report) -> int:
    from forgebuild.cli.audit import cmd_diff as run

    return run(args, session, report)


def cmd_join(args, session, report) -> int:
    from forgebuild.engine.join import cmd_join as run
    from forgebuild.rules.model.launch import node_rank

    build_defaults = vars(_parser().parse_args(["build"]))  # node 0 builds: the build verb's defaults
    args = argparse.Namespace(**{**build_defaults, **vars(args)})
    rank = node_rank(args.node_rank)
    if rank == 0:  # node 0 is the build itself: one command for every node of a Slurm job
        return cmd_build(args, session, report)
    return run(args, session, report, rank)


def cmd_cache(args, session, report) -> int:
    from forgebuild.store.remote import cmd_cache as run

    return run(args, session, report)


def cmd_keys(args, session: Session, report) -> int:
    """The public key other workspaces put in their `[forge] trusted_keys`; the private key stays here."""
    from forgebuild.store import signing

    ws = session.workspace
    public = signing.public_line(signing.load_or_make(ws.dir))
    where = ws.display(signing.private_path(ws.dir))
    if args.json:
        report({"event": "summary", "ok": True, "public_key": public, "private_key": where})
    else:
        print(public)
        if not args.quiet:
            print(f"# private key: {where} (stays on this machine: never pushed, never cached)")
    return 0


COMMANDS = {"build": cmd_build, "status": cmd_status, "explain": cmd_explain, "graph": cmd_graph,
            "path": cmd_path, "show": cmd_show, "log": cmd_log, "clean": cmd_clean, "gc": cmd_gc,
            "schema": cmd_schema, "lock": cmd_lock, "verify": cmd_verify, "diff": cmd_diff, "cache": cmd_cache,
            "join": cmd_join, "keys": cmd_keys}


# ------------------------------------------------------------------ entry point

def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from forgebuild.cli.reporter import make_reporter

    report = Summarised(make_reporter(args.json, args.verbose, args.quiet,
                                      building=args.verb == "build" and not getattr(args, "dry_run", False)))
    session = None
    try:
        session = Session(args, report) if args.verb != "schema" else None
        if session is not None:  # its warning, if any, before the summary: JSON's last line stays the summary
            report.before_summary = session.close
        code = COMMANDS[args.verb](args, session, report)
        if args.json and not report.summarised:  # every verb's JSON ends with a summary object
            report({"event": "summary", "ok": code == 0})
        return code
    except BrokenPipeError:  # `forgebuild log | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ForgeError as e:
        report.close()
        _report_error(e, args, report)
        return e.exit_code
    except KeyboardInterrupt:
        report.close()
        print("forgebuild: interrupted", file=sys.stderr)
        return 130
    finally:
        if session is not None:
            session.close()
        report.close()


class Summarised:
    """Passes events on, noting whether a summary went out."""

    def __init__(self, reporter):
        self.reporter, self.summarised = reporter, False
        self.before_summary = None

    def __call__(self, event: dict) -> None:
        if event["event"] == "summary" and self.before_summary is not None:
            self.before_summary, run = None, self.before_summary
            run()
        self.summarised |= event["event"] == "summary"
        self.reporter(event)

    def close(self) -> None:
        self.reporter.close()


def _report_error(e: ForgeError, args, report) -> None:
    if isinstance(e, ForgefileError):
        text = "\n".join(str(p) for p in e.problems)
    else:
        text = f"forgebuild: {e}"
    print(text, file=sys.stderr)
    if args.json:
        problems = [p.__dict__ for p in getattr(e, "problems", [])]
        report({"event": "error", "exit_code": e.exit_code, "message": str(e), "problems": problems})
        report({"event": "summary", "ok": False, "error": str(e), "targets": []})
