"""The scratch-file protocol between a build and its parent, in process: what a rule's build writes
beside its output (engine/scratch.py: memos, handed files, metrics, verdict; the worker's failure) and
what the executor makes of it (the cache entry's memos and verdict, the record's metrics, exit codes).

The rule is a real plugin: a module and an entry point (a .dist-info folder) on sys.path, as
`pip install` would leave them. `scratch` builds in this process; `scratchiso` in a worker process,
the one path here that starts a child (the protocol's failure is only read from a child)."""
from __future__ import annotations

import json
import os
import sys

import pytest

from forgebuild.engine import worker
from forgebuild.engine.scratch import HANDED, MEMOS, Failure, read_failure, read_metrics, read_verdict
from forgebuild.store.local import Store
from forgebuild.engine.context import BuildContext
from forgebuild.planning.keys import action_key
from forgebuild.store.workspace import Workspace
from unitlab import lab  # noqa: F401  (a fixture)

RULE = '''
from pydantic import BaseModel, ConfigDict

version = "1"
isolate = {isolate}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    do: str = "ok"


def inputs(params):
    return {{}}


def build(ctx):
    with open(ctx.out + "/a.txt", "w") as f:
        f.write("a")
    ctx.memo("step", {{"n": 1}}, lambda folder: open(folder + "/m.txt", "w").write("m"))
    ctx.metrics({{"loss": 1.5}})
    ctx.metrics({{"tokens": 10, "loss": 0.5}})  # a later call updates an earlier key
    if ctx.params.do == "verdict":
        ctx.verdict("gate: loss 0.5 above 0.1")
    if ctx.params.do == "bad":
        raise ctx.bad_input("data/x.jsonl:3: field 'text' is missing")
    if ctx.params.do == "fail":
        raise ctx.failure("it broke")
    if ctx.params.do == "bug":
        raise ValueError("oops")
'''

MEMO_KEY = action_key({"memo": "step", "rule": "scratch", "version": "1", "material": {"n": 1}})


@pytest.fixture
def plugin(tmp_path_factory, monkeypatch):
    """The folder holding the two rule modules and their entry points, first on sys.path."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "unit_scratch_rule.py").write_text(RULE.format(isolate=False))
    (folder / "unit_scratch_iso_rule.py").write_text(RULE.format(isolate=True))
    info = folder / "unit_scratch_rule-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: unit-scratch-rule\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[forgebuild.rules]\nscratch = unit_scratch_rule\n"
                                           "scratchiso = unit_scratch_iso_rule\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    for name in ("unit_scratch_rule", "unit_scratch_iso_rule"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    for name in ("FORGE_CONTEXT_FILE", "FORGE_STAGE_STARTED"):  # worker.main sets them in this process
        monkeypatch.delenv(name, raising=False)
    return folder


FORGEFILE = """
[scratch.ok]

[scratch.gate]
do = "verdict"

[scratch.bad]
do = "bad"

[scratchiso.bad]
do = "bad"

[scratchiso.fail]
do = "fail"
"""


def cached(lab, address: str) -> tuple[dict, dict]:
    """(cache entry, build record) of the target's last build."""
    ws = Workspace(lab.root)
    store = Store(ws.dir)
    entry = store.get_action(ws.last_build(address)["key"])
    return entry, store.get_record(entry["record"])


def test_memos_and_metrics_reach_the_entry_and_the_record_not_the_artifact(lab, plugin):
    lab.write("Forgefile.toml", FORGEFILE)
    assert lab.build("scratch:ok")[0] == 0
    entry, record = cached(lab, "scratch:ok")
    assert entry["memos"] == [MEMO_KEY]
    assert record["metrics"] == {"loss": 0.5, "tokens": 10}
    assert [f["path"] for f in entry["files"]] == ["a.txt"]
    assert "verdict" not in entry
    assert not os.path.exists(os.path.join(lab.root, ".forge", "scratch")) or not os.listdir(
        os.path.join(lab.root, ".forge", "scratch"))  # the scratch folder went with the build


def test_a_verdict_fails_the_target_but_keeps_its_artifact(lab, plugin):
    lab.write("Forgefile.toml", FORGEFILE)
    code, printed = lab.build("scratch:gate")
    assert code == 1 and "FAILED  scratch:gate: gate: loss 0.5 above 0.1\n" in printed
    entry, record = cached(lab, "scratch:gate")
    assert entry["verdict"] == record["verdict"] == "gate: loss 0.5 above 0.1"
    assert [f["path"] for f in entry["files"]] == ["a.txt"]
    code, printed = lab.build("scratch:gate")  # asked again: the same failure, from the cache
    assert code == 1 and printed.startswith("FAILED  scratch:gate: gate: loss 0.5 above 0.1\n")


def test_bad_input_exits_2_in_process_and_from_a_worker(lab, plugin):
    lab.write("Forgefile.toml", FORGEFILE)
    for address in ("scratch:bad", "scratchiso:bad"):
        code, printed = lab.build(address)
        assert code == 2, printed
        assert f"FAILED  {address}: data/x.jsonl:3: field 'text' is missing\n" in printed
    code, printed = lab.build("scratchiso:fail")
    assert code == 1 and "FAILED  scratchiso:fail: it broke\n" in printed


def context(lab, scratch, do: str) -> str:
    """A context.json as the executor writes it, for a `scratch` target doing `do`."""
    out = scratch / "out"
    out.mkdir(parents=True)
    ctx = BuildContext(target=f"scratch:{do}", kind="scratch", key="ab" * 32, inputs={}, out=str(out),
                       work=str(scratch / "work"), seed=1, project_dir=lab.root, log_path=str(scratch / "log"),
                       raw_params={"do": do}, version="1", store_root=os.path.join(lab.root, ".forge"),
                       workspace_dir=os.path.join(lab.root, ".forge"))
    path = ctx.save()
    assert path == str(scratch / "context.json") and BuildContext.load(path) == ctx
    return path


@pytest.mark.parametrize("do, failure, printed", [
    ("ok", None, None),
    ("bad", Failure("data/x.jsonl:3: field 'text' is missing", bad_input=True),
     "bad input: data/x.jsonl:3: field 'text' is missing"),
    ("fail", Failure("it broke"), "it broke"),
    ("bug", Failure("build raised ValueError: oops"), "build raised ValueError: oops"),
])
def test_the_worker_writes_what_its_parent_reads(lab, plugin, tmp_path, do, failure, printed, capsys):
    scratch = tmp_path / "scratch" / f"k.{do}"
    assert worker.main(context(lab, scratch, do)) == (0 if failure is None else 1)
    assert read_failure(str(scratch)) == failure
    assert read_metrics(str(scratch)) == {"loss": 0.5, "tokens": 10}
    assert (scratch / MEMOS).read_text() == MEMO_KEY + "\n"
    handed = [json.loads(line) for line in (scratch / HANDED).read_text().splitlines()]
    assert [(h[0], h[1], h[3]) for h in handed] == [(MEMO_KEY, "step", "m.txt")]
    assert read_verdict(str(scratch)) is None
    if failure:
        assert capsys.readouterr().err.splitlines()[-1] == f"forgebuild: scratch:{do}: {printed}"


@pytest.mark.parametrize("written, reason", [
    (Failure("data/x.jsonl:3: field 'text' is missing", bad_input=True),
     "bad input: data/x.jsonl:3: field 'text' is missing"),
    (None, "exit code 1"),
])
def test_a_launch_names_the_failure_its_processes_wrote(lab, tmp_path, monkeypatch, written, reason):
    """model/launch.delegate: each torchrun process runs the worker again, which writes its failure into
    the scratch folder; the launch reads it through its context (a rule reads no scratch file)."""
    from types import SimpleNamespace

    from forgebuild.engine.scratch import write_failure
    from forgebuild.errors import RuleFailed
    from forgebuild.rules.model.common import Launch
    from forgebuild.rules.model.launch import delegate

    path = context(lab, tmp_path / "scratch" / "k.1", "ok")
    ctx = BuildContext.load(path)
    ctx.params = SimpleNamespace(launch=Launch(processes=2), train=SimpleNamespace(batch_size=4))
    monkeypatch.setenv("FORGE_CONTEXT_FILE", path)

    def torchrun(argv, env=None):  # what its processes leave behind
        if written:
            write_failure(ctx.scratch_dir, written)
        return 1

    monkeypatch.setattr(ctx, "run_command", torchrun)
    with pytest.raises(RuleFailed) as failed:
        delegate(ctx)
    assert failed.value.message == f"distributed training failed (2 processes): {reason}"
    assert failed.value.exit_code == 1


def test_a_kept_batch_is_recalled_item_by_item_whatever_batch_asks(lab, tmp_path):
    """ctx.keep stores one result under each item's key; ctx.recall finds each alone, materialises a result
    once however many items it serves, and lists every key it used (memos.txt: gc keeps them)."""
    scratch = tmp_path / "scratch" / "k.1"
    ctx = BuildContext.load(context(lab, scratch, "ok"))
    items = [{"prompt": p, "sample": 0} for p in ("a", "b", "c")]

    def produce(folder):
        with open(os.path.join(folder, "rows.txt"), "w") as f:
            f.write("a b c")

    kept = ctx.keep("sample", items, produce)
    found = ctx.recall("sample", [items[2], {"prompt": "d", "sample": 0}, items[0]])
    assert found == [kept, None, kept] and open(os.path.join(kept, "rows.txt")).read() == "a b c"
    keys = [action_key({"memo": "sample", "rule": "scratch", "version": "1", "material": m}) for m in items]
    assert set((scratch / MEMOS).read_text().split()) == set(keys)
    # the result's blob gone (dropped as damaged): every item it held is missing, to be made again
    store = Store(os.path.join(lab.root, ".forge"))
    blob = store.get_action(keys[1])["files"][0]["digest"]
    store.remove_blob(blob)
    from forgebuild.store.workspace import remove_tree

    remove_tree(kept)
    assert ctx.recall("sample", items) == [None, None, None]
    assert ctx.memo("sample", items[1], produce) == kept  # made again, under the same content digest
