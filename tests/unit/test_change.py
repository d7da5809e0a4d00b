"""planning.change: the one diff of two key materials, and the lines explain prints from it."""
from __future__ import annotations

from forgebuild.planning.change import Change, diff, reasons, values

OLD = {
    "format": 2, "rule": "run", "version": "1",
    "params": {"cmd": "x", "train": {"lr": 0.1, "gone": "a"}},
    "seed": 5,
    "inputs": {"inputs.raw": [["file", "data/raw.txt", "d1"]], "inputs.prep": [["target", "run:prep", "o1"]],
               "inputs.old": [["file", "data/old.txt", "d2"]], "inputs.a": [["file", "data/a.txt", "d3"]]},
    "env": {"vars": {"V": None, "W": "1"}, "libraries": {"torch": "2.0"}},
}


def test_each_kind_of_change_with_its_key_path_and_values():
    new = {
        "format": 3, "rule": "run", "version": "2",
        "params": {"cmd": "x", "train": {"lr": 0.2, "steps": 3}},
        "seed": 6,
        "inputs": {"inputs.raw": [["file", "data/raw.txt", "d9"]], "inputs.prep": [["target", "run:prep", "o2"]],
                   "inputs.b": [["file", "data/a.txt", "d3"]], "inputs.new": [["target", "run:new", "o3"]]},
        "env": {"vars": {"V": "2", "W": None}, "libraries": {"torch": "2.1", "trl": "0.9"}},
    }
    assert diff(OLD, new) == [
        Change("format", "", "changed", 2, 3),
        Change("rule", "run", "changed", ("run", "1"), ("run", "2")),
        Change("param", "train.gone", "removed", "a", None),
        Change("param", "train.lr", "changed", 0.1, 0.2),
        Change("param", "train.steps", "added", None, 3),
        Change("seed", "", "changed", 5, 6),
        Change("input", "data/a.txt", "moved", ("inputs.a",), ("inputs.b",)),
        Change("input", "data/old.txt", "removed", "d2", None),
        Change("input", "data/raw.txt", "changed", "d1", "d9"),
        Change("dependency", "run:new", "added", None, "o3"),
        Change("dependency", "run:prep", "changed", "o1", "o2"),
        Change("variable", "V", "added", None, "2"),
        Change("variable", "W", "removed", "1", None),
        Change("library", "torch", "changed", "2.0", "2.1"),
        Change("library", "trl", "added", None, "0.9"),
    ]
    assert reasons(diff(OLD, new)) == [
        "key format 2 -> 3",
        "rule run version 1 -> 2",
        'param train.gone removed (was "a")',
        "param train.lr 0.1 -> 0.2",
        "param train.steps added (= 3)",
        "seed 5 -> 6",
        "input data/a.txt moved: inputs.a -> inputs.b",
        "input data/old.txt removed",
        "input data/raw.txt changed",
        "dependency run:new added",
        "dependency run:prep rebuilt with new output",
        'environment V null -> "2"',
        'environment W "1" -> null',
        'library torch "2.0" -> "2.1"',
        'library trl null -> "0.9"',
    ]


def test_no_difference_and_sections_a_material_lacks():
    assert diff(OLD, dict(OLD)) == []
    # a record written without a material is compared section by section, without a KeyError
    found = diff({}, {"params": {"a": 1}})
    assert Change("param", "a", "added", None, 1) in found
    assert [c.kind for c in diff({"env": {}}, {"env": {"vars": {"V": "x"}}})] == ["variable"]


def test_a_dependency_moved_and_removed_and_an_input_added():
    new = {**OLD, "inputs": {"inputs.raw": [["file", "data/raw.txt", "d1"]], "inputs.a": [["file", "data/a.txt", "d3"]],
                             "inputs.old": [["file", "data/old.txt", "d2"]], "inputs.x": [["file", "data/x.txt", "d4"]],
                             "inputs.base": [["target", "run:prep", "o1"]]}}
    assert [c.text() for c in diff(OLD, new)] == ["input data/x.txt added",
                                                  "dependency run:prep moved: inputs.prep -> inputs.base"]
    gone = {**OLD, "inputs": {k: v for k, v in OLD["inputs"].items() if k != "inputs.prep"}}
    assert [c.text() for c in diff(OLD, gone)] == ["dependency run:prep removed"]


def test_one_file_named_by_two_inputs_is_one_reason():
    twice = {**OLD, "inputs": {**OLD["inputs"], "inputs.b": [["file", "data/a.txt", "d9"]],
                               "inputs.a": [["file", "data/a.txt", "d9"]]}}
    assert reasons(diff(OLD, twice)) == ["input data/a.txt changed"]


def test_values_and_their_texts():
    found = values("toolchain", {"torch": "2.0", "trl": "0.9"}, {"torch": "2.1", "peft": "0.1"})
    assert [c.change for c in found] == ["added", "changed", "removed"]
    assert [c.text() for c in found] == ["peft not installed -> 0.1", "torch 2.0 -> 2.1", "trl 0.9 -> not installed"]
    assert values("library", {"a": None}, {}) == []  # a missing name is unset, like None
    assert Change("recorded", "python", "changed", "3.11", "3.12").text() == 'recorded python "3.11" -> "3.12"'
    # the lock words a variable by its change only: its values are digests there
    assert reasons(diff(OLD, {**OLD, "env": {**OLD["env"], "vars": {"V": "x", "W": "1"}}}),
                   lambda c: f"environment {c.name} {c.change}") == ["environment V added"]
