"""`forgebuild diff A B`: params, data, code, dependencies (the "because" chain), outputs, weights and
metrics between two builds; text, markdown and --json; records, TARGET@N and lock files; bad input."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest

FORGEFILE = """
[run.a]
cmd = "cat {in.src} > {out}/all.txt"
inputs = { src = "data/*.txt" }

[run.b]
cmd = "python3 {in.script} {in.a}/all.txt {params.n} > {out}/up.txt"
inputs = { a = "run:a", script = "scripts/up.py" }
params = { n = 1 }
"""

SCRIPT = """\
import sys
text = open(sys.argv[1]).read()
print(text.upper() * int(sys.argv[2]))
"""


@pytest.fixture
def two_builds(project):
    """run:b built twice: in between, its param n went 1 -> 2, its script changed and run:a's input
    data/a.txt changed (data/b.txt did not)."""
    project.write("data/a.txt", "hello\n")
    project.write("data/b.txt", "world\n")
    project.write("scripts/up.py", SCRIPT)
    project.forgefile(FORGEFILE)
    project.run("run:b")
    project.forgefile(FORGEFILE.replace("n = 1", "n = 2"))
    project.write("data/a.txt", "hello again\n")
    project.write("scripts/up.py", SCRIPT.replace("text.upper()", "text.title()"))
    project.run("run:b")
    return project


def records(project) -> dict:
    """target -> its records, oldest first (in the order of the build history)."""
    found = {}
    for line in open(os.path.join(project.root, ".forge/state/log.jsonl")):
        entry = json.loads(line)
        path = os.path.join(project.root, ".forge/records", f"{entry['record']}.json")
        found.setdefault(entry["target"], []).append(json.load(open(path)))
    return found


WHY = """\
why:
  run:b differs because param params.n 1 -> 2
  run:b differs because scripts/up.py changed
  run:b differs because run:a differs because data/a.txt changed
"""

TREE = """\
run:b  key {kb1} -> {kb2}, output {ob1} -> {ob2}
  params:
    params.n: 1 -> 2
  code:
    scripts/up.py (inputs.script): changed
      --- a/scripts/up.py
      +++ b/scripts/up.py
      @@ -1,3 +1,3 @@
       import sys
       text = open(sys.argv[1]).read()
      -print(text.upper() * int(sys.argv[2]))
      +print(text.title() * int(sys.argv[2]))
  outputs: 1 changed of 1 file, 13 -> 37 bytes
    changed  up.txt
  dependencies:
    run:a (inputs.a): output {oa1} -> {oa2}, because:
      run:a  key {ka1} -> {ka2}, output {oa1} -> {oa2}
        data:
          inputs.src: 1 changed of 2 files
            changed  data/a.txt
        outputs: 1 changed of 1 file, 12 -> 18 bytes
          changed  all.txt"""


def test_diff_shows_params_code_and_the_because_chain_through_a_dependency(two_builds):
    p = two_builds
    rs = records(p)
    (a1, a2), (b1, b2) = rs["run:a"], rs["run:b"]
    out = p.run("diff", "run:b@2", "run:b@1").stdout
    lines = out.splitlines()
    assert lines[0] == "forgebuild diff run:b@2 run:b@1"
    assert lines[1] == f"  old  {b1['id']}  run:b  {b1['started']}"
    assert lines[2] == f"  new  {b2['id']}  run:b  {b2['started']}"
    assert WHY in out
    assert out.endswith(TREE.format(kb1=b1["key"][:12], kb2=b2["key"][:12], ob1=b1["digest"][:12],
                                    ob2=b2["digest"][:12], ka1=a1["key"][:12], ka2=a2["key"][:12],
                                    oa1=a1["digest"][:12], oa2=a2["digest"][:12]) + "\n")
    # record ids and unique prefixes name the same builds; a bare address is TARGET@1
    assert p.run("diff", b1["id"], b2["id"]).stdout == out.replace("run:b@2 run:b@1", f"{b1['id']} {b2['id']}", 1)
    assert WHY in p.run("diff", b1["id"][:-3], "run:b").stdout
    # the same build twice
    same = p.run("diff", "run:b@1", "b@1").stdout
    assert same.endswith("identical: same keys and outputs\n")


def test_code_text_is_shown_only_when_found_with_its_recorded_digest(two_builds):
    """The old text comes from the record's `sources_text` (else the disk, the store, git at the
    record's commit), and only when its digest is the one the key used."""
    p = two_builds
    old = records(p)["run:b"][0]
    assert old["sources_text"] == {"scripts/up.py": SCRIPT}
    path = os.path.join(p.root, ".forge/records", old["id"] + ".json")
    os.chmod(path, 0o644)

    def code_line(text):
        old["sources_text"] = {"scripts/up.py": text} if text is not None else {}
        with open(path, "w") as f:
            json.dump(old, f)
        out = p.run("diff", "run:b@2", "run:b@1").stdout
        return out.split("  code:\n", 1)[1].splitlines()[0]

    s1, s2 = (r["material"]["inputs"]["inputs.script"][0][2][:12] for r in records(p)["run:b"])
    not_recorded = f"    scripts/up.py (inputs.script): changed (digest {s1} -> {s2}; old text not recorded)"
    assert code_line(None) == not_recorded  # a record from before records kept the text
    assert code_line(SCRIPT + "# edited\n") == not_recorded  # not the text that was built
    assert code_line(SCRIPT) == "    scripts/up.py (inputs.script): changed"
    # the newer text comes from the disk when the record lacks it
    new = records(p)["run:b"][1]
    new_path = os.path.join(p.root, ".forge/records", new["id"] + ".json")
    os.chmod(new_path, 0o644)
    new["sources_text"] = {}
    with open(new_path, "w") as f:
        json.dump(new, f)
    assert "      +print(text.title() * int(sys.argv[2]))\n" in p.run("diff", "run:b@2", "run:b@1").stdout


def test_unknown_build_lists_recent_ones(two_builds):
    p = two_builds
    rs = records(p)
    proc = p.run("diff", "20990101T000000-nothing", "run:b@1", expect=2)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == "forgebuild: no build record, TARGET@N or lock file '20990101T000000-nothing'"
    assert lines[1] == "recent builds (`forgebuild log` lists more):"
    assert [line.split()[:2] for line in lines[2:]] == [
        ["run:b@1", rs["run:b"][1]["id"]], ["run:a@1", rs["run:a"][1]["id"]],
        ["run:b@2", rs["run:b"][0]["id"]], ["run:a@2", rs["run:a"][0]["id"]]]
    assert "run:b has 2 builds in the history" in p.run("diff", "run:b@3", "run:b@1", expect=2).stderr
    assert "counts builds from the latest" in p.run("diff", "run:b@0", "run:b@1", expect=2).stderr
    assert "no builds of 'run:zz'" in p.run("diff", "run:zz@1", "run:b@1", expect=2).stderr
    events = p.events("diff", "nope", "run:b@1", expect=2)
    assert events[0]["event"] == "error" and "recent builds" in events[0]["message"]
    assert events[-1] == {"event": "summary", "ok": False, "error": events[0]["message"], "targets": []}


def test_json_events_then_a_summary(two_builds):
    p = two_builds
    events = p.events("diff", "run:b@2", "run:b@1")
    assert [e["event"] for e in events] == ["diff", "diff", "summary"]
    b, a, summary = events
    assert (b["target"], b["depth"], b["parent"], b["state"]) == ("run:b", 0, None, "different")
    assert (a["target"], a["depth"], a["parent"]) == ("run:a", 1, b["id"])
    assert b["params"] == [{"name": "params.n", "change": "changed", "old": 1, "new": 2}]
    assert b["dependencies"][0]["target"] == "run:a" and b["dependencies"][0]["node"] == a["id"]
    assert b["code"][0]["path"] == "scripts/up.py" and b["code"][0]["diff"].startswith("--- a/scripts/up.py\n")
    assert a["data"] == [{"input": "inputs.src", "files_old": 2, "files_new": 2, "added": [], "removed": [],
                          "changed": ["data/a.txt"]}]
    assert a["outputs"]["changed"] == ["all.txt"] and b["weights"] is None
    assert summary["ok"] is True and summary["identical"] is False
    assert summary["roots"] == ["run:b"] and summary["targets"] == ["run:b", "run:a"]
    assert summary["why"] == [["run:b", "param params.n 1 -> 2"], ["run:b", "scripts/up.py changed"],
                              ["run:b", "run:a", "data/a.txt changed"]]
    assert summary["a"]["arg"] == "run:b@2" and summary["b"]["kind"] == "record"


def test_markdown(two_builds):
    out = two_builds.run("diff", "run:b@2", "run:b@1", "--format", "markdown").stdout
    assert out.startswith("# forgebuild diff `run:b@2` → `run:b@1`\n")
    assert """\
## Why

- `run:b` differs because param params.n 1 -> 2
- `run:b` differs because scripts/up.py changed
- `run:b` differs because `run:a` differs because data/a.txt changed
""" in out
    assert "| `params.n` | `1` | `2` |" in out
    assert "see [run:a](#runa)" in out
    assert "## run:a" in out and "| `inputs.src` | `data/a.txt` | changed |" in out


def test_two_lock_files(two_builds):
    p = two_builds
    rs = records(p)
    for i in (0, 1):
        lock = {"targets": {t: {"key": rs[t][i]["key"], "digest": rs[t][i]["digest"],
                                "material": rs[t][i]["material"]} for t in ("run:a", "run:b")}}
        p.write(f"lock{i}.json", json.dumps(lock))
    out = p.run("diff", "lock0.json", "lock1.json").stdout
    assert WHY in out and "run:a  key" in out
    summary = p.events("diff", "lock0.json", "lock1.json")[-1]
    assert summary["roots"] == ["run:b"] and summary["a"]["kind"] == "lock"
    # a record against a lock: the lock's entry for the record's target
    assert WHY in p.run("diff", "lock0.json", "run:b@1").stdout
    assert p.run("diff", "lock1.json", "lock1.json").stdout.endswith("identical: same keys and outputs\n")
    p.write("bad.json", "[]")
    assert "not a lock file" in p.run("diff", "bad.json", "run:b@1", expect=2).stderr


def test_many_changed_files_are_counted_in_the_chain(project):
    project.forgefile('[run.a]\ncmd = "cat {in.src} > {out}/all.txt"\ninputs = { src = "data/*.txt" }\n')
    for i in range(6):
        project.write(f"data/{i}.txt", f"{i}\n")
    project.run("run:a")
    for i in range(4):
        project.write(f"data/{i}.txt", f"{i} changed\n")
    os.unlink(os.path.join(project.root, "data/5.txt"))
    project.write("data/new.txt", "new\n")
    project.run("run:a")
    out = project.run("diff", "run:a@2", "run:a@1").stdout
    assert "  run:a differs because inputs.src: 4 changed, 1 added, 1 removed (of 6 -> 6 files)\n" in out
    assert "    inputs.src: 4 changed, 1 added, 1 removed of 6 files\n" in out


# ------------------------------------------------------------------ weights

def test_weight_diff_per_tensor_and_layer_in_chunks(tmp_path):
    import torch
    from safetensors.torch import save_file

    from forgebuild.cli.tensors import weight_diff

    torch.manual_seed(0)
    old = {"model.embed_tokens.weight": torch.randn(10, 4),
           "model.layers.0.self_attn.q_proj.weight": torch.randn(4, 4),
           "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4),
           "model.layers.1.self_attn.q_proj.weight": torch.randn(4, 4),
           "model.layers.1.mlp.up_proj.weight": torch.randn(8, 4).to(torch.bfloat16),
           "lm_head.weight": torch.randn(10, 4),
           "gone.bias": torch.zeros(3)}
    new = {k: v.clone() for k, v in old.items() if k != "gone.bias"}
    new["model.layers.0.self_attn.q_proj.weight"] += 0.5
    new["model.layers.1.mlp.up_proj.weight"] = (new["model.layers.1.mlp.up_proj.weight"].float() * 2).to(torch.bfloat16)
    new["lm_head.weight"] = torch.randn(12, 4)
    new["extra.weight"] = torch.ones(2)
    save_file(old, str(tmp_path / "a.safetensors"))
    # the new side is sharded in two files: tensors are matched by name
    names = sorted(new)
    save_file({k: new[k] for k in names[:3]}, str(tmp_path / "b1.safetensors"))
    save_file({k: new[k] for k in names[3:]}, str(tmp_path / "b2.safetensors"))
    w = weight_diff([str(tmp_path / "a.safetensors")], [str(tmp_path / "b1.safetensors"), str(tmp_path / "b2.safetensors")],
                    elements=5)  # 5 values at a time: every tensor is read in several chunks
    by = {t["name"]: t for t in w["tensors"]}
    assert w["counts"] == {"changed": 2, "same": 3, "reshaped": 1, "added": 1, "removed": 1, "unsupported": 0}
    q = by["model.layers.0.self_attn.q_proj.weight"]
    a, b = old["model.layers.0.self_attn.q_proj.weight"].double(), new["model.layers.0.self_attn.q_proj.weight"].double()
    assert math.isclose(q["diff_l2"], 2.0, rel_tol=1e-6)  # 16 values moved by 0.5
    assert math.isclose(q["old_l2"], a.norm().item(), rel_tol=1e-9)
    assert math.isclose(q["new_l2"], b.norm().item(), rel_tol=1e-9)
    assert math.isclose(q["relative"], 2.0 / a.norm().item(), rel_tol=1e-6)
    up = by["model.layers.1.mlp.up_proj.weight"]  # bf16, doubled exactly: relative change 1
    assert up["dtype_old"] == "BF16" and math.isclose(up["relative"], 1.0, rel_tol=1e-9)
    assert (by["lm_head.weight"]["change"], by["lm_head.weight"]["shape_old"], by["lm_head.weight"]["shape_new"]) == (
        "reshaped", [10, 4], [12, 4])
    assert by["extra.weight"]["change"] == "added" and by["gone.bias"]["change"] == "removed"
    assert by["model.embed_tokens.weight"]["change"] == "same" and by["model.embed_tokens.weight"]["relative"] == 0.0
    assert w["top"] == ["model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"]
    layers = {r["layer"]: r for r in w["layers"]}
    assert set(layers) == {"model.layers.0", "model.layers.1", "model.embed_tokens"}
    assert layers["model.layers.0"]["changed"] == 1 and layers["model.layers.0"]["tensors"] == 2
    l0 = math.sqrt(a.norm().item() ** 2 + old["model.layers.0.mlp.up_proj.weight"].double().norm().item() ** 2)
    assert math.isclose(layers["model.layers.0"]["relative"], 2.0 / l0, rel_tol=1e-6)
    assert w["layers"][0]["layer"] == "model.layers.1"


def test_model_diff_names_the_param_and_the_most_changed_weights(recipe_project):
    p = recipe_project
    text = p.preamble + """
        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "dataset:sft"
        max_length = 32
        train = { lr = 1e-3, steps = 3, batch_size = 8 }
        threads = 1
    """
    p.forgefile(text)
    p.run("model:sft", timeout=300)
    p.forgefile(text.replace("lr = 1e-3", "lr = 3e-3"))
    p.run("model:sft", timeout=300)
    out = p.run("diff", "model:sft@2", "model:sft@1").stdout
    assert "why:\n  model:sft differs because param train.lr 0.001 -> 0.003\n" in out
    assert "    train.lr: 0.001 -> 0.003\n" in out
    assert "  weights: " in out and "most-changed tensors" in out and "most-changed layers" in out
    assert "    model.layers.0  " in out or "    model.layers.1  " in out
    assert "  metrics:\n" in out
    node = p.events("diff", "model:sft@2", "model:sft@1")[0]
    w = node["weights"]
    assert w["counts"]["changed"] > 0 and w["counts"]["reshaped"] == 0
    assert all(t["relative"] is not None and t["relative"] >= 0 for t in w["tensors"] if t["change"] == "changed")
    assert 0 < w["total"]["relative"] < 1
    assert "model.safetensors" in node["outputs"]["changed"]
    assert any(m["name"] == "loss" or m["name"].endswith("loss") for m in node["metrics"])


def _write_safetensors(path: str, tensors: dict) -> None:
    """A safetensors file written by hand (numpy float32 only), so the memory test imports no torch."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        data = array.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for data in blobs:
            f.write(data)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_weight_diff_memory_stays_bounded_for_a_large_tensor(tmp_path):
    """Two 128 MB tensors are compared in chunks: the process grows by far less than one tensor."""
    import subprocess
    import sys

    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal(32 << 20, dtype=np.float32)
    _write_safetensors(str(tmp_path / "a.safetensors"), {"w": a})
    a[::2] += 1.0
    _write_safetensors(str(tmp_path / "b.safetensors"), {"w": a})
    del a
    code = f"""
import glob
import json
def peak():  # this process's own high-water mark (ru_maxrss would include the parent's, after fork)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
import numpy
from forgebuild.cli.tensors import weight_diff
before = peak()
w = weight_diff([{str(tmp_path / "a.safetensors")!r}], [{str(tmp_path / "b.safetensors")!r}])
print(json.dumps({{"grew_kb": peak() - before, "diff": w["tensors"][0]["diff_l2"]}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout)
    assert math.isclose(out["diff"], math.sqrt(16 << 20), rel_tol=1e-9)  # 16M values moved by exactly 1
    assert out["grew_kb"] < 48 * 1024, out  # measured: about 22 MB, numpy's buffers for a few chunks


def test_eval_metrics_with_intervals():
    from forgebuild.cli.diff_changes import report_changes
    from forgebuild.cli.diff_render import render_text

    old = {"results": {"model:sft": {"arith.exact_match": {"value": 0.41, "low": 0.3, "high": 0.52, "n": 50},
                                     "holdout.perplexity": {"value": 210.0, "low": 200.0, "high": 220.0, "n": 9}}},
           "passed": False}
    new = {"results": {"model:sft": {"arith.exact_match": {"value": 0.62, "low": 0.55, "high": 0.7, "n": 50},
                                     "holdout.perplexity": {"value": 210.0, "low": 200.0, "high": 220.0, "n": 9}}},
           "passed": True}
    found = report_changes(old, new)
    assert [m["name"] for m in found] == ["model:sft arith.exact_match", "gates passed"]
    m = found[0]
    assert m["old_interval"] == [0.3, 0.52] and m["new_interval"] == [0.55, 0.7] and m["overlap"] is False
    assert math.isclose(m["delta"], 0.21)
    node = {"id": "n1", "target": "eval:check", "parent": None, "depth": 0, "state": "different",
            "old": {"record": "r1", "key": "a" * 32, "digest": "b" * 32, "started": None},
            "new": {"record": "r2", "key": "c" * 32, "digest": "d" * 32, "started": None},
            "rule": None, "seed": None, "params": [], "data": [], "code": [], "environment": [],
            "dependencies": [], "causes": [], "outputs": None, "stats": [], "weights": None, "metrics": found}
    side = {"arg": "x", "kind": "record", "id": "r", "target": "eval:check", "started": None}
    text = render_text({"a": side, "b": side, "identical": False, "added": [], "removed": [], "toolchain": [],
                        "why": [], "nodes": [node]})
    assert "    model:sft arith.exact_match: 0.41 [0.3, 0.52] -> 0.62 [0.55, 0.7] (+0.21) (intervals do not overlap)\n" in text
    assert text.endswith("    gates passed: false -> true")


def test_old_code_text_from_git_at_the_records_commit(project):
    """A record without `sources_text` (written before records kept it): the text at its git commit."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project.root, check=True,
                       capture_output=True)

    project.forgefile('[run.s]\ncmd = "python3 {in.script} > {out}/o.txt"\ninputs = { script = "s.py" }\n')
    project.write("s.py", "print(1)\n")
    git("init", "-q")
    git("add", "Forgefile.toml", "s.py")
    git("commit", "-q", "-m", "one")
    project.run("run:s")
    project.write("s.py", "print(2)\n")
    project.run("run:s")
    for path in glob.glob(os.path.join(project.root, ".forge/records/*.json")):
        record = json.load(open(path))
        record.pop("sources_text", None)
        os.chmod(path, 0o644)
        json.dump(record, open(path, "w"))
    out = project.run("diff", "run:s@2", "run:s@1").stdout
    assert "      -print(1)\n      +print(2)\n" in out


def test_an_input_that_names_another_script_is_diffed_against_the_old_one(project):
    project.write("s1.py", "print(1)\nprint('same')\n")
    project.write("s2.py", "print(2)\nprint('same')\n")
    text = '[run.s]\ncmd = "python3 {in.script} > {out}/o.txt"\ninputs = { script = "s1.py" }\n'
    project.forgefile(text)
    project.run("run:s")
    project.forgefile(text.replace("s1.py", "s2.py"))
    project.run("run:s")
    out = project.run("diff", "run:s@2", "run:s@1").stdout
    assert "  run:s differs because inputs.script: s1.py replaced by s2.py\n" in out
    assert """\
  code:
    s1.py -> s2.py (inputs.script): replaced
      --- a/s1.py
      +++ b/s2.py
      @@ -1,2 +1,2 @@
      -print(1)
      +print(2)
       print('same')
""" in out
