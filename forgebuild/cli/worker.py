"""`forgebuild worker status|stop`: this project's warm workers (engine/warm.py), from their state files
in .forge/workers/."""
from __future__ import annotations

import time

from forgebuild.cli.session import Session


def cmd_worker(args, session: Session, report) -> int:
    from forgebuild.engine import warm

    ws = session.workspace
    found = warm.servers(ws.dir)
    if args.action == "stop":
        stopped = [s for s in found if warm.stop_server(s["name"])]
        if args.json:
            report({"event": "summary", "ok": True, "stopped": [_brief(s) for s in stopped]})
        elif not args.quiet:
            for state in stopped:
                print(f"stopped worker {state['name']} (pid {state['pid']})")
            if not stopped:
                print("no warm worker running")
        return 0
    if args.json:
        report({"event": "summary", "ok": True, "workers": [_brief(s) for s in found]})
        return 0
    for state in found:
        print(_line(state, ws.display(state["log"])))
    if not found and not args.quiet:
        print("no warm worker running")
    return 0


def _brief(state: dict) -> dict:
    keep = ("name", "pid", "mode", "started", "idle", "modules", "rules", "log")
    return {k: state.get(k) for k in keep}


def _line(state: dict, log: str) -> str:
    up = time.time() - state["started"]
    idle = f", exits after {state['idle']:g} s idle" if state.get("idle") else ""
    modules = ", ".join(state.get("modules") or []) or "forgebuild only"
    return f"{state['name']}  pid {state['pid']}  {state['mode']}  up {up:.0f} s{idle}  preloaded: {modules}  log: {log}"
