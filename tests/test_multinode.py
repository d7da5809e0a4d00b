"""One training stage on several nodes: the rendezvous settings (torch-free), and two "nodes" on
this machine's loopback, each its own `forgebuild join` process with Slurm's variables, as an
`srun forgebuild join TARGET` job step would start them on two machines."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tinylab
from conftest import ENV, Project

from forgebuild.rules.model.common import Launch
from forgebuild.engine.join import node_rank
from forgebuild.rules.model.launch import LaunchError, first_host, master_addr, master_port

# As tests/test_distributed.py: another summation order, not another step. Measured here: every
# per-step loss of two 1-process nodes within 9.5e-7 of the single-process run's.
TOLERANCE = 1e-3

KEY = "3f2a9c0d" + "0" * 56


@pytest.mark.parametrize("nodelist,host", [("gpu07", "gpu07"), ("gpu[07-09,12],cpu1", "gpu07"),
                                           ("node[3,5]", "node3"), ("a-b.c,d", "a-b.c"), ("rack1-[002-004]", "rack1-002")])
def test_first_host_of_a_slurm_nodelist(nodelist, host):
    assert first_host(nodelist) == host


def test_rendezvous_settings_come_from_the_launch_then_the_environment():
    two = Launch(nodes=2)
    assert master_addr(Launch(nodes=2, master_addr="10.0.0.1"), {"MASTER_ADDR": "x"}) == "10.0.0.1"
    assert master_addr(two, {"MASTER_ADDR": "head", "SLURM_JOB_NODELIST": "n[1-2]"}) == "head"
    assert master_addr(two, {"SLURM_JOB_NODELIST": "n[1-2]"}) == "n1"
    with pytest.raises(LaunchError) as e:
        master_addr(two, {})
    assert str(e.value) == ("launch.nodes = 2 needs the address of node 0: set launch.master_addr, MASTER_ADDR, "
                            "or run inside a Slurm allocation")
    assert master_port(Launch(nodes=2, master_port=29500), KEY, {"MASTER_PORT": "1"}) == 29500
    assert master_port(two, KEY, {"MASTER_PORT": "29999"}) == 29999
    port = master_port(two, KEY, {})
    assert port == master_port(two, KEY, {}) and 20000 <= port < 40000  # every node derives the same port
    assert node_rank(None, {"NODE_RANK": "3", "SLURM_NODEID": "1"}) == 3
    assert node_rank(None, {"SLURM_NODEID": "1"}) == 1 and node_rank(2, {"SLURM_NODEID": "1"}) == 2
    assert node_rank(None, {}) == 0


def losses(folder: str) -> list[float]:
    with open(os.path.join(folder, "training_log.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if "loss" in row]


def test_pretrain_on_two_nodes_matches_one_process(tmp_path, tiny_base):
    lab = Project(str(tmp_path))
    tinylab.write_stdlib_text(lab.root)
    lab.forgefile(tinylab.BASE_FORGEFILE + "launch = { nodes = 2, processes = 1 }\n")
    # What srun gives each task of a two-node job step (the address is this machine's loopback)
    slurm = {"SLURM_JOB_NODELIST": "127.0.0.1", "SLURM_NNODES": "2"}
    nodes = [subprocess.Popen([sys.executable, "-m", "forgebuild", "join", "model:base"], cwd=lab.root,
                              env={**ENV, **slurm, "SLURM_NODEID": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert "built   model:base" in outputs[0]  # node 0 built it, dependencies included
    assert "joining as node 1 of 2 at 127.0.0.1:" in outputs[1] and "node 1: joined 1 stage" in outputs[1]
    log = lab.read(".forge/logs/model/base.log")
    assert "launching 2 processes on 2 nodes" in log and "--node_rank=0" in log
    assert "--node_rank=1" in lab.read(".forge/logs/model/base.node1.log")
    path = lab.run("path", "model:base").stdout.strip()
    one, two = losses(tiny_base), losses(path)
    assert len(two) == len(one) == 30
    assert max(abs(a - b) for a, b in zip(one, two)) < TOLERANCE
    # built: joining again has nothing to wait for
    again = lab.run("join", "model:base", "--node-rank", "1")
    assert "node 1: joined 0 stages" in again.stdout
    assert not [n for _, _, names in os.walk(os.path.join(lab.root, ".forge")) for n in names if n == "launch.json"]


def test_two_nodes_without_an_address_is_bad_input(recipe_project):
    p = recipe_project
    p.forgefile(p.preamble + """
        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "dataset:sft"
        max_length = 32
        train = { steps = 2, batch_size = 4 }
        launch = { nodes = 2, processes = 1 }
    """)
    clean = {name: "" for name in ("MASTER_ADDR", "SLURM_JOB_NODELIST", "SLURM_NODELIST")}
    proc = p.run("model:sft", expect=2, env=clean, timeout=300)
    assert ("FAILED  model:sft: launch.nodes = 2 needs the address of node 0: set launch.master_addr, MASTER_ADDR, "
            "or run inside a Slurm allocation") in proc.stdout


def test_join_needs_a_multi_node_stage(project):
    project.forgefile('[run.a]\ncmd = "true"\n')
    proc = project.run("join", "run:a", "--node-rank", "1", expect=2)
    assert proc.stderr.strip() == "forgebuild: nothing to join: no stage of run:a has launch.nodes > 1"


def test_a_joining_node_waits_without_importing_torch(recipe_project, no_torch_env):
    p = recipe_project
    p.forgefile(p.preamble + """
        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "dataset:sft"
        launch = { nodes = 2, master_addr = "127.0.0.1" }
    """)
    env = {**no_torch_env, "SLURM_NODEID": "1"}
    proc = p.run("join", "model:sft", "--wait", "1", env=env, expect=1)  # no node 0 is building it
    assert "warning: no stage to join after 1 s; waiting for model:sft stopped" in proc.stdout
    assert proc.stdout.strip().endswith("node 1: joined 0 stages, 1 failed")
    proc = p.run("join", "model:sft", "--node-rank", "2", env=env, expect=2)
    assert proc.stderr.strip() == "forgebuild: node rank 2 is not below model:sft's launch.nodes 2"
