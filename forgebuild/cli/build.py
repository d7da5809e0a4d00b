"""`forgebuild [TARGET...]` (the `build` verb), and `lock` and `verify`, which hold builds to a lock file."""
from __future__ import annotations

from forgebuild.cli.session import Session


def cmd_build(args, session: Session, report) -> int:
    worker_files = args.worker_files or session.plan.settings.get("worker_files") or "shared"
    if worker_files == "remote" and args.executor != "local":  # bad usage exits 2 before anything runs, even a no-op
        from forgebuild.engine.backends import check_remote_files

        check_remote_files(args.executor, session.remote)
    addresses = session.resolve(args.targets, use_default=True)
    if not args.dry_run and any(session.plan.targets[a].kind == "search" for a in session.plan.closure(addresses)):
        from forgebuild.cli.search import fill  # proposals first, each trial built as it is recorded

        fill(args, session, report, addresses, lambda trials: _trials_built(args, session, report, worker_files, trials))
    decisions = session.decide(addresses, force=args.force)
    if args.frozen:
        from forgebuild.cli.lock import frozen_problems

        if frozen_problems(args, session, decisions, report):
            return 1
    if args.dry_run:
        from forgebuild.engine import preflight

        # what the files the Forgefile names say (a decontamination that can match nothing): exit 2 now,
        # as the build would; the packages are the build's machine's business
        preflight.check(session.plan, session.rules, decisions, packages=False)
        entries = []
        for d in decisions.values():
            action = {"fresh": "cached", "remote": "would-fetch"}.get(d.state, "would-build")
            entries.append({"target": d.address, "action": action, "key": d.key, "digest": d.digest,
                            "reason": "; ".join(d.reasons), "seconds": 0.0})
            if action != "cached" and not args.json:
                print(f"{action.replace('-', ' ')} {d.address}  ({'; '.join(d.reasons)})")
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
    results = _execute(args, session, report, worker_files, addresses, decisions)
    ok = all(r.action in ("built", "cached") for r in results)
    if ok and args.frozen:  # a dependency rebuilt to another output changes its readers' keys only now
        from forgebuild.cli.lock import frozen_results

        ok = not frozen_results(args, session, results, report)
    report({"event": "summary", "ok": ok, "targets": [r.as_dict() for r in results]})
    failures = [r.exit_code or 1 for r in results if r.action == "failed"]
    return max(failures, default=0 if ok else 1)  # 2 when a stage found its input data bad


def _execute(args, session: Session, report, worker_files: str, addresses, decisions) -> list:
    from forgebuild.engine import preflight

    # a missing package or a bad file: exit 2 now, not after minutes of work
    preflight.check(session.plan, session.rules, decisions, packages=args.executor == "local")
    from forgebuild.engine.executor import Executor

    jobs = args.jobs or session.plan.settings.get("jobs") or 1
    from forgebuild.engine.backends import make_runner

    ws = session.workspace
    runner = make_runner(args.executor, ws.dir, worker_files, session.remote, session.plan.forgefile, session.store.root)
    # started before the executor: its imports overlap the cache checks and the first cheap stages
    pool = _warm_pool(args, session, report, decisions) if runner is None else None
    from forgebuild.engine.launcher import run_stage

    executor = Executor(session.plan, ws, session.store, session.stat_cache, report, lambda: session.rules,
                        jobs=jobs, keep_going=args.keep_going, force=args.force, remote=session.remote,
                        runner=runner, spawn=pool.run if pool else run_stage)
    try:
        return executor.run(addresses, decisions)
    finally:
        if pool is not None:
            pool.close()


def _warm_pool(args, session: Session, report, decisions):
    """A warm worker for the isolated stages this run will build (engine/warm.py), or None (cold)."""
    settings = session.plan.settings
    mode = getattr(args, "workers", None) or settings.get("workers") or "run"
    building = [session.plan.targets[a] for a, d in decisions.items()
                if d.state not in ("fresh", "remote") and session.plan.targets[a].isolate]
    if mode == "cold" or not building:
        return None
    from forgebuild.engine import preflight, warm
    from forgebuild.rules import hooks, parse_params

    modules, heavy = [], set()
    for target in building:
        rule = session.rules[target.kind]
        needs = [m for m in [*hooks(rule).preload, *sorted(hooks(rule).requires(parse_params(rule, target.values)))]
                 if preflight._installed(m.split(".", 1)[0])]
        modules += needs
        if warm.HEAVY.intersection(m.split(".", 1)[0] for m in needs):
            heavy.add(target.kind)
    return warm.pool_for(mode, settings.get("worker_idle") or 900, session.workspace.dir, session.plan.root,
                         modules, {t.kind for t in building}, heavy, report)


def _trials_built(args, session: Session, report, worker_files: str, trials: list[str]) -> list[str]:
    """A search's new trials built (cli/search.py): the targets that failed."""
    results = _execute(args, session, report, worker_files, trials, session.decide(trials, force=args.force))
    return [r.target for r in results if r.action not in ("built", "cached")]


def cmd_lock(args, session, report) -> int:
    from forgebuild.cli.lock import cmd_lock as run

    return run(args, session, report)


def cmd_verify(args, session, report) -> int:
    from forgebuild.cli.verify import cmd_verify as run

    return run(args, session, report)
