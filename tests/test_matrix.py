"""Matrices end to end: a 2x2 sweep of tiny SFTs really trained, one value added, a sweep killed midway."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from conftest import ENV

SWEEP = """
[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = 32
train = {{ lr = 1e-3, steps = 3, batch_size = 4 }}
threads = 1
matrix = {{ "train.lr" = [{lrs}], "train.batch_size" = [4, 8] }}
"""


def trained_lr(p, address: str) -> float:
    with open(os.path.join(p.run("path", address).stdout.strip(), "training_config.json")) as f:
        found = json.load(f)
    return found["params"]["train"]["lr"] if "params" in found else found["train"]["lr"]


def test_a_2x2_sweep_builds_4_cells_and_a_new_value_builds_only_its_cells(recipe_project):
    p = recipe_project
    p.forgefile(p.preamble + SWEEP.format(lrs="1e-3, 3e-4"))
    built = p.build("model:sft", "-j", "2", timeout=600)
    cells = ["model:sft[lr=0.001,batch_size=4]", "model:sft[lr=0.001,batch_size=8]",
             "model:sft[lr=0.0003,batch_size=4]", "model:sft[lr=0.0003,batch_size=8]"]
    assert {a: built[a] for a in cells} == dict.fromkeys(cells, "built")
    assert trained_lr(p, "model:sft[lr=0.0003,batch_size=8]") == 3e-4
    # each cell is a target of its own: its own artifact, its own key
    digests = {p.run("path", c).stdout.strip() for c in cells}
    assert len(digests) == 4
    rows = {e["target"]: e for e in p.events("exp", "model:sft") if e["event"] == "cell"}
    assert list(rows) == cells and {r["state"] for r in rows.values()} == {"fresh"}
    assert rows[cells[1]]["values"] == {"train.lr": 1e-3, "train.batch_size": 8} and "loss" in rows[cells[1]]["metrics"]

    p.forgefile(p.preamble + SWEEP.format(lrs="1e-3, 3e-4, 1e-4"))
    status = p.run("status", "model:sft").stdout
    states = [line.split()[0] for line in status.splitlines() if "model:sft[" in line]
    assert sorted(states) == ["fresh"] * 4 + ["missing"] * 2, status
    built = p.build("model:sft", timeout=600)
    assert sorted(a for a, action in built.items() if action == "built") == [
        "model:sft[lr=0.0001,batch_size=4]", "model:sft[lr=0.0001,batch_size=8]"]
    assert sorted(a for a, action in built.items() if action != "built" and a.startswith("model:sft")) == sorted(cells)


SLOW_SWEEP = """
[run.cell]
cmd = ["python3", "-c", "import sys, time; time.sleep(0.5); open(sys.argv[1] + '/n.txt', 'w').write(sys.argv[2]); open('runs.txt', 'a').write(sys.argv[2] + chr(10))", "{out}", "{params.n}"]
params = { n = 0 }
matrix = { "params.n" = [1, 2, 3, 4, 5, 6] }
"""


def test_a_sweep_killed_midway_finishes_only_the_missing_cells(project):
    p = project
    p.forgefile(SLOW_SWEEP)
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", "run:cell", "-j", "1", "--json"], cwd=p.root,
                            stdout=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    done = []
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "built":
            done.append(event["target"])
        if len(done) == 2:
            os.killpg(proc.pid, signal.SIGKILL)  # forgebuild and the third cell's command, mid-sleep
            break
    proc.wait(timeout=30)
    assert p.runs()[:2] == ["1", "2"]
    built = p.build("run:cell")
    rebuilt = sorted(a for a, action in built.items() if action == "built")
    assert rebuilt == [f"run:cell[n={n}]" for n in range(3, 7)] and sorted(done) == ["run:cell[n=1]", "run:cell[n=2]"]
    assert p.runs() == ["3", "4", "5", "6"]
    for n in range(1, 7):
        assert p.read(os.path.join(p.run("path", f"run:cell[n={n}]").stdout.strip(), "n.txt")) == str(n)
