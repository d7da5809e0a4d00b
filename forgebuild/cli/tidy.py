"""The verbs that tidy: `clean` removes outputs and scratch, `gc` what no current target uses."""
from __future__ import annotations

import os

from forgebuild.cli.session import Session


def cmd_clean(args, session: Session, report) -> int:
    from forgebuild.store.workspace import remove_tree

    ws = session.workspace
    for part in ("out", "artifacts", "scratch", "work", "logs", "state"):
        remove_tree(ws.path(part))
    if args.cache:
        for part in ("cas", "ac", "records", "index", "tmp", "locks"):
            remove_tree(os.path.join(session.store.root, part))
    what = "outputs, scratch and cache" if args.cache else "outputs and scratch (the cache is kept)"
    if not args.quiet and not args.json:
        print(f"removed {what} in {ws.display(ws.dir)}")
    if args.json:
        report({"event": "summary", "ok": True, "cleaned": what})
    return 0


def cmd_gc(args, session: Session, report) -> int:
    from forgebuild.store.gc import collect

    stats = collect(session.store, session.workspace, _kept(session), dry_run=args.dry_run, grace=args.grace)
    if args.json:
        report({"event": "summary", "ok": True, **stats})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"{verb} {stats['actions']} cache entries, {stats['blobs']} blobs ({stats['bytes'] / 1e6:.1f} MB), "
              f"{stats['folders']} folders; kept {stats['kept_actions']} entries")
    return 0


def _kept(session: Session) -> dict[str, str]:
    """Each current target's action key to keep: the one the Forgefile resolves to now when the target is
    fresh (so `clean`, which forgets the last builds, does not make everything garbage), else its last
    build's."""
    decisions = session.decide(list(session.plan.order))
    keep = {}
    for address in session.plan.targets:
        d = decisions[address]
        key = d.key if d.state == "fresh" else (session.workspace.last_build(address) or {}).get("key")
        if key:
            keep[address] = key
    return keep
