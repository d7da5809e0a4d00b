"""The scratch protocol (engine/scratch.py), in process: every message written and read back, a bad-input
failure read back as one, and a missing or torn file read as no message."""
from __future__ import annotations

import json
import os

import pytest

from forgebuild.engine import scratch
from forgebuild.engine.scratch import Failure, Lines


def test_context_round_trip(tmp_path):
    fields = {"target": "run:a", "inputs": {"inputs.x": ["a b", "c"]}, "seed": 3}
    path = scratch.write_context(str(tmp_path), fields)
    assert path == str(tmp_path / scratch.CONTEXT)
    assert scratch.read_context(path) == fields


@pytest.mark.parametrize("failure, printed", [
    (Failure("it broke"), "it broke"),
    (Failure("data/x.jsonl:3: field 'text' is missing", bad_input=True),
     "bad input: data/x.jsonl:3: field 'text' is missing"),
    (Failure("bad input: is only text here"), "bad input: is only text here"),  # no prefix parsed back
])
def test_failure_round_trip(tmp_path, failure, printed):
    scratch.write_failure(str(tmp_path), failure)
    found = scratch.read_failure(str(tmp_path))
    assert found == failure and found.bad_input is failure.bad_input
    assert str(found) == printed


def test_metrics_verdict_and_memos_round_trip(tmp_path):
    folder = str(tmp_path)
    scratch.add_metrics(folder, {"loss": 1.5, "steps": 2})
    scratch.add_metrics(folder, {"loss": 0.5, "tokens": 10})  # a later write updates an earlier key
    assert scratch.read_metrics(folder) == {"loss": 0.5, "steps": 2, "tokens": 10}
    scratch.write_verdict(folder, "gate: loss 0.5 above 0.1")
    assert scratch.read_verdict(folder) == "gate: loss 0.5 above 0.1"
    lines = Lines(folder)
    for key in ("b" * 64, "a" * 64, "b" * 64):
        lines.memo(key)
    assert scratch.read_memos(folder) == ["a" * 64, "b" * 64]  # each once, sorted
    lines.handed("k", "step", "d1", "sub/m.txt", "d2", [1, 2, 3, 4])
    with open(os.path.join(folder, scratch.HANDED), encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == [["k", "step", "d1", "sub/m.txt", "d2", [1, 2, 3, 4]]]


def test_a_forked_process_appends_whole_lines_through_its_own_handle(tmp_path):
    lines = Lines(str(tmp_path))
    lines.memo("parent")
    pid = os.fork()
    if pid == 0:  # a rule's pool worker
        try:
            lines.memo("child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    lines.memo("parent-again")
    assert (tmp_path / scratch.MEMOS).read_text().splitlines() == ["parent", "child", "parent-again"]


def test_missing_files_are_no_message(tmp_path):
    folder = str(tmp_path)
    assert scratch.read_failure(folder) is None
    assert scratch.read_metrics(folder) is None
    assert scratch.read_verdict(folder) is None
    assert scratch.read_memos(folder) is None
    with pytest.raises(FileNotFoundError):  # the worker cannot build without its context
        scratch.read_context(os.path.join(folder, scratch.CONTEXT))


@pytest.mark.parametrize("name, text", [
    (scratch.FAILURE, '{"message": "it bro'),  # cut short
    (scratch.FAILURE, '"it broke"'),  # not a failure
    (scratch.FAILURE, '{"message": "x", "exit": 2}'),  # not one of ours
    (scratch.METRICS, '{"loss": 0.'),
    (scratch.METRICS, '[1, 2]'),
    (scratch.VERDICT, '"gate: lo'),
])
def test_a_torn_or_foreign_file_is_no_message(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    read = {scratch.FAILURE: scratch.read_failure, scratch.METRICS: scratch.read_metrics,
            scratch.VERDICT: scratch.read_verdict}[name]
    assert read(str(tmp_path)) is None


def test_a_write_is_whole_or_absent(tmp_path, monkeypatch):
    """A writer that fails midway (a full disk) leaves no file, and no temporary one either."""
    folder = str(tmp_path)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError):
        scratch.write_failure(folder, Failure("it broke"))
    assert os.listdir(folder) == [] and scratch.read_failure(folder) is None
