"""One training stage on several processes, on one machine or several: the rendezvous.

Torch-free: the build process (node 0) and `forgebuild join` on the other nodes both use it.

- One machine: the build process reruns its own build (the worker's context file) under
  `python -m torch.distributed.run` with `launch.processes` processes, on a free loopback port.
- Several machines (`launch.nodes`): node 0 is the machine that runs `forgebuild TARGET`; it
  hosts the rendezvous (torchrun's static one: node 0 is rank 0, so the artifact, the
  checkpoints and the log lines are written where the build's cache is) at `master_addr`
  (launch, MASTER_ADDR, or the first host of SLURM_JOB_NODELIST) and `master_port`. Before
  starting torchrun it writes `launch.json` into the key's work folder; each other node runs
  `forgebuild join TARGET`, which waits for that file and starts its own torchrun with its
  node rank (--node-rank, NODE_RANK or SLURM_NODEID). The project folder (context file,
  inputs, artifact folder) must be on a filesystem every node sees: a cluster's shared one.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys

LAUNCH_FILE = "launch.json"  # in the key's work folder while node 0's torchrun runs


class LaunchError(Exception):
    """A launch that cannot start: no rendezvous address, a batch that does not split."""


def world_size(launch) -> int:
    return launch.nodes * launch.processes if launch else 1


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: "gpu[07-09,12],cpu1" -> "gpu07" (Slurm numbers the
    nodes of a job in this order, so it is where SLURM_NODEID 0 runs)."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m or not m.group(1):
        raise LaunchError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def master_addr(launch, env=os.environ) -> str:
    if launch.master_addr:
        return launch.master_addr
    if env.get("MASTER_ADDR"):
        return env["MASTER_ADDR"]
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodelist:
        return first_host(nodelist)
    raise LaunchError(f"launch.nodes = {launch.nodes} needs the address of node 0: set launch.master_addr, "
                      f"MASTER_ADDR, or run inside a Slurm allocation")


def master_port(launch, key: str, env=os.environ) -> int:
    """Derived from the key when not given: every node computes the same port, and two multi-node
    stages on one head (different keys) rarely collide (1 in 20000)."""
    if launch.master_port:
        return launch.master_port
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    return 20000 + int(key[:8], 16) % 20000


def free_port() -> int:
    with socket.socket() as s:  # a free port for a one-machine rendezvous: two launches never collide
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_argv(nodes: int, processes: int, rank: int, addr: str, port: int, context_file: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
            f"--nnodes={nodes}", f"--node_rank={rank}", f"--master_addr={addr}", f"--master_port={port}",
            "-m", "forgebuild.engine.worker", context_file]


def plan_launch(launch, key: str, context_file: str, batch_size: int) -> dict:
    """Node 0's launch: what it runs, and what the other nodes read from launch.json."""
    n = world_size(launch)
    if batch_size % n:
        raise LaunchError(f"train.batch_size {batch_size} is not a multiple of the {n} processes "
                          f"(launch.nodes x launch.processes): the global batch is split evenly between processes"
                          if launch.nodes > 1 else
                          f"train.batch_size {batch_size} is not a multiple of launch.processes {n}: the global "
                          f"batch is split evenly between processes")
    if launch.nodes == 1:
        addr, port = "127.0.0.1", free_port()
    else:
        addr, port = master_addr(launch), master_port(launch, key)
    return {"key": key, "context_file": context_file, "nodes": launch.nodes, "processes": launch.processes,
            "master_addr": addr, "master_port": port, "attempt": os.path.basename(os.path.dirname(context_file))}


def write_launch_file(work: str, launch_plan: dict, target: str) -> str:
    path = os.path.join(work, LAUNCH_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**launch_plan, "target": target}, f)
    os.replace(tmp, path)  # a joining node reads a whole file or none
    return path


def read_launch_file(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def delegate(ctx) -> None:
    """Run this very build (the worker's context file) in its processes under torchrun, as node 0."""
    from forgebuild.errors import Delegated

    launch = ctx.params.launch
    context_file = os.environ["FORGE_CONTEXT_FILE"]
    try:
        plan = plan_launch(launch, ctx.key, context_file, ctx.params.train.batch_size)
    except LaunchError as e:
        raise ctx.bad_input(str(e)) from None
    argv = torchrun_argv(launch.nodes, launch.processes, 0, plan["master_addr"], plan["master_port"], context_file)
    n = world_size(launch)
    where = f" on {launch.nodes} nodes" if launch.nodes > 1 else ""
    ctx.log(f"launching {n} processes{where}: {' '.join(argv[2:])}")
    if launch.nodes > 1:
        ctx.log(f"waiting for {launch.nodes - 1} more node(s): run `forgebuild join {ctx.target}` there "
                f"(node rank from --node-rank, NODE_RANK or SLURM_NODEID)")
    # DeepSpeed compiles a small op on first use: once per workspace, not per build
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": os.environ.get(
        "TORCH_EXTENSIONS_DIR", os.path.join(ctx.workspace_dir, "torch_extensions"))}
    launch_file = write_launch_file(ctx.work, plan, ctx.target) if launch.nodes > 1 else None
    try:
        code = ctx.run_command(argv, env=env)
    finally:
        if launch_file and os.path.exists(launch_file):
            os.remove(launch_file)
    if code != 0:  # each process ran the worker again, which wrote its failure where the context tells
        reason = ctx.process_failure() or f"exit code {code}"
        raise ctx.failure(f"distributed training failed ({n} processes{where}): {reason}")
    raise Delegated()
