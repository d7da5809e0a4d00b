"""`forgebuild cache push|pull`: targets to and from the shared remote cache (store/remote.py)."""
from __future__ import annotations

from forgebuild.cli.session import Session
from forgebuild.errors import StoreError, UsageError


def cmd_cache(args, session: Session, report) -> int:
    remote = session.remote
    if remote is None:
        raise UsageError("no remote: give --remote URL, set FORGE_REMOTE, or [forge] remote")
    addresses = session.plan.closure(session.resolve(args.targets, use_default=False))
    if args.action == "push":
        return _push(session, remote, addresses, report)
    return _pull(session, remote, addresses, report)


def _push(session: Session, remote, addresses, report) -> int:
    decisions = session.decide(addresses)
    pushed = sent = skipped = 0
    for address in addresses:
        d = decisions[address]
        entry = session.store.get_action(d.key, address) if d.state == "fresh" else None
        if entry is None:
            skipped += 1
            continue
        sent += remote.push(d.key, entry, session.store)
        pushed += 1
        report({"event": "pushed", "target": address, "key": d.key, "digest": d.digest})
    ok = not remote.disabled
    message = (f"pushed {pushed} targets ({sent / 1e6:.1f} MB sent) to {remote.url}"
               + (f"; {skipped} not built here" if skipped else ""))
    report({"event": "summary", "ok": ok, "pushed": pushed, "not_built": skipped, "bytes": sent, "message": message})
    return 0 if ok else 1


def _pull(session: Session, remote, addresses, report) -> int:
    """In build order: each target's key from its dependencies' digests, fetched when the remote has it."""
    from forgebuild.planning.keys import action_key, material

    digests, pulled, missing = {}, 0, []
    for address in addresses:
        target = session.plan.targets[address]
        if any(d not in digests for d in target.deps):
            missing.append(address)
            continue
        mat = material(session.plan, target, session.stat_cache, {d: digests[d] for d in target.deps})
        key = action_key(mat)
        entry = session.store.get_action(key, address)
        if entry is None:
            try:
                entry = remote.fetch(key, address, session.store, mat)
            except StoreError as e:
                report({"event": "warning", "message": str(e)})
                entry = None
            pulled += entry is not None
        if entry is None:
            missing.append(address)
            continue
        session.workspace.materialise(address, entry, session.store)
        session.workspace.record_build(address, {"key": key, "digest": entry["digest"], "material": mat,
                                                 "record": entry.get("record")})
        digests[address] = entry["digest"]
        report({"event": "pulled", "target": address, "key": key, "digest": entry["digest"]})
    message = f"pulled {pulled} targets from {remote.url}" + (f"; not there: {', '.join(missing)}" if missing else "")
    report({"event": "summary", "ok": not missing, "pulled": pulled, "missing": missing, "message": message})
    return 0 if not missing else 1
