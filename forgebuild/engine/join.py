"""`forgebuild join TARGET`: this machine's part in a build whose stages span several nodes.

Node 0 runs the build itself (`forgebuild TARGET`, or `join` with node rank 0): it plans,
builds the single-machine stages, and hosts the rendezvous of each stage with
`launch.nodes > 1` (forgebuild/rules/model/launch.py). Every other node runs `forgebuild join
TARGET` in the same project folder (a shared filesystem): it waits for node 0 to start such
a stage (the key's launch.json), starts its own torchrun processes with its node rank, and
goes on to the next multi-node stage of TARGET's closure until all of them are built. What
join knows of a stage it asks the stage's rule (hooks `nodes`, `join_launch`, `join_argv`).

Nothing is cached here: node 0 (rank 0) writes the artifact and the cache entry. Each
joined stage's torchrun starts through the one launcher (`launcher.run_logged`), its output to
the stage log's sibling `NAME.node<RANK>.log`.
"""
from __future__ import annotations

import glob
import os
import time

from forgebuild.engine.launcher import SAFE_PATH, log_tail, run_logged
from forgebuild.errors import UsageError

POLL_SECONDS = 1.0  # a launch.json appears once per stage; node 0's torchrun waits for the others anyway


def node_rank(given: int | None, env=os.environ) -> int:
    """This machine's node rank: `--node-rank`, else the launcher's or Slurm's variable, else 0."""
    if given is not None:
        return given
    for name in ("NODE_RANK", "SLURM_NODEID"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return 0


def stage_nodes(session, address: str) -> int:
    """Machines a stage spans, as its rule says (hook `nodes`: the model rule's `launch.nodes`)."""
    from forgebuild.rules import hooks

    target = session.plan.targets[address]
    return hooks(session.rules[target.kind]).nodes(target.runtime)


def multi_node_targets(session, addresses: list[str]) -> list[str]:
    return [a for a in session.plan.closure(addresses) if stage_nodes(session, a) > 1]


def cmd_join(args, session, report, rank: int) -> int:
    """A node other than 0 (node 0 is the build itself: `cli.cmd_join` builds there)."""
    addresses = session.resolve(args.targets, use_default=True)
    staged = multi_node_targets(session, addresses)
    if not staged:
        raise UsageError(f"nothing to join: no stage of {', '.join(addresses)} has launch.nodes > 1")
    for address in staged:
        nodes = stage_nodes(session, address)
        if rank >= nodes:
            raise UsageError(f"node rank {rank} is not below {address}'s launch.nodes {nodes}")
    joined, failed = [], []
    deadline = time.time() + args.wait if args.wait else None
    seen: set[str] = set()
    while True:
        decisions = session.decide(staged)
        pending = [a for a in staged if decisions[a].state != "fresh"]
        if not pending:
            break
        launch = next_launch(session, pending, seen)
        if launch is not None:
            seen.add(launch["attempt"])
            code = join_stage(session, launch, rank, report)
            (joined if code == 0 else failed).append(launch["target"])
            if code != 0 and not args.keep_going:
                break
            deadline = time.time() + args.wait if args.wait else None
            continue
        if deadline and time.time() > deadline:
            report({"event": "warning", "message": f"no stage to join after {args.wait:g} s; waiting for "
                                                   f"{', '.join(pending)} stopped"})
            failed += pending
            break
        time.sleep(POLL_SECONDS)
    targets = [{"target": a, "action": "failed" if a in failed else "built"} for a in joined + failed]
    message = (f"node {rank}: joined {len(joined)} stage{'s' if len(joined) != 1 else ''}"
               + (f", {len(failed)} failed" if failed else ""))
    report({"event": "summary", "ok": not failed, "targets": targets, "message": message})
    return 1 if failed else 0


def next_launch(session, pending: list[str], seen: set[str]) -> dict | None:
    """A stage node 0 is launching now, for one of the pending targets, not joined before; each
    key's work folder read by the rules of the pending kinds (hook `join_launch`)."""
    from forgebuild.rules import hooks

    rules = [hooks(session.rules[kind]) for kind in sorted({a.split(":", 1)[0] for a in pending})]
    for work in glob.glob(os.path.join(session.workspace.path("work"), "*", "")):
        for rule in rules:
            launch = rule.join_launch(work)
            if launch and launch.get("target") in pending and launch["attempt"] not in seen:
                return launch
    return None


def join_stage(session, launch: dict, rank: int, report) -> int:
    from forgebuild.rules import hooks

    address = launch["target"]
    report({"event": "start", "target": address, "key": launch["key"],
            "reason": f"joining as node {rank} of {launch['nodes']} at {launch['master_addr']}:{launch['master_port']}"})
    started = time.time()
    argv = hooks(session.rules[address.split(":", 1)[0]]).join_argv(launch, rank)
    log = session.workspace.log_path(address)[:-len(".log")] + f".node{rank}.log"
    env = {**os.environ, **SAFE_PATH, "TORCH_EXTENSIONS_DIR": os.environ.get(
        "TORCH_EXTENSIONS_DIR", os.path.join(session.workspace.dir, f"torch_extensions.node{rank}"))}
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"# forgebuild join {address} key {launch['key']} as node {rank}: {' '.join(argv[2:])}\n")
    code = run_logged(argv, log, session.plan.root, env)
    seconds = time.time() - started
    if code == 0:
        report({"event": "built", "target": address, "key": launch["key"], "seconds": seconds,
                "reason": f"node {rank} took part"})
    else:
        report({"event": "failed", "target": address, "key": launch["key"], "seconds": seconds,
                "reason": f"node {rank}'s processes exited with code {code}", "log_tail": log_tail(log), "log": log})
    return code
