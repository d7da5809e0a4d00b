"""The verbs that inspect and change nothing but materialised links: status, explain, graph, path, show,
log, schema and diff."""
from __future__ import annotations

import json
import os
import sys
import time

from forgebuild.cli.session import Session


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
            verb = "fetch" if d.state == "remote" else "build"
            print(f"forgebuild: {address} is {d.state} ({'; '.join(d.reasons)}); {verb} it with `forgebuild {address}`",
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


def cmd_schema(args, session, report) -> int:
    from forgebuild.planning.schema import forgefile_schema

    print(json.dumps(forgefile_schema(), indent=2))
    return 0


def cmd_diff(args, session, report) -> int:
    from forgebuild.cli.diff import cmd_diff as run

    return run(args, session, report)
