"""provenance.py in process: the statement a real build stores, rebuilt byte for byte from its
entry and record, and every reason `problem` refuses one."""
from __future__ import annotations

import copy
import os
import json

import pytest

from forgebuild.store import provenance
from forgebuild.store.local import Store
from forgebuild.hashing import bytes_digest
from forgebuild.store.workspace import Workspace
from unitlab import lab  # noqa: F401  (a fixture)

FORGEFILE = """
[run.prep]
cmd = "cp {in.raw} {out}/x.txt && mkdir {out}/sub && echo b > {out}/sub/b.txt"
inputs = { raw = "data/raw.txt" }
params = { n = 3 }

[run.count]
cmd = "wc -c < {in.prep}/x.txt > {out}/n.txt"
inputs = { prep = "run:prep", script = "data/raw.txt" }
"""


@pytest.fixture
def built(lab):
    """(store, address, key, material, entry, statement) of run:count, built for real."""
    lab.write("data/raw.txt", "hello\n")
    lab.write("Forgefile.toml", FORGEFILE)
    assert lab.build("run:count")[0] == 0
    store = Store(Workspace(lab.root).dir)
    last = Workspace(lab.root).last_build("run:count")
    entry = store.get_action(last["key"])
    with open(store.blob_path(entry["provenance"]), "rb") as f:
        stmt = json.load(f)
    return store, "run:count", last["key"], last["material"], entry, stmt


def test_a_stored_statement_is_this_build_rebuilt_byte_for_byte(built):
    store, address, key, mat, entry, stmt = built
    assert provenance.problem(stmt, address, key, mat, entry) is None
    record = store.get_record(entry["record"])
    assert record["material"] == mat
    again = provenance.statement(address, key, record["material"], entry, record)
    assert again == stmt
    assert bytes_digest(provenance.encode(again)) == entry["provenance"]


def test_a_statement_names_subjects_materials_and_parameters(built):
    store, address, key, mat, entry, stmt = built
    prep = Workspace(os.path.dirname(store.root)).last_build("run:prep")["digest"]
    assert [s["name"] for s in stmt["subject"]] == ["run:count", "run:count/n.txt"]
    assert stmt["subject"][0]["digest"] == {"blake3": entry["digest"]}
    definition = stmt["predicate"]["buildDefinition"]
    assert [(m["name"], m["annotations"]) for m in definition["resolvedDependencies"]] == [
        ("run:prep", {"key": "inputs.prep", "kind": "target"}),
        ("data/raw.txt", {"key": "inputs.script", "kind": "file"})]
    assert definition["resolvedDependencies"][0]["digest"] == {"blake3": prep}
    assert definition["internalParameters"]["action_key"] == key
    assert definition["externalParameters"]["target"] == "run:count"
    assert definition["externalParameters"]["seed"] == mat["seed"]
    assert stmt["predicate"]["runDetails"]["metadata"]["invocationId"] == entry["record"]


def test_every_refusal_of_problem(built):
    store, address, key, mat, entry, stmt = built

    def bent(path: str, value):
        other = copy.deepcopy(stmt)
        *parents, last = path.split("/")
        node = other
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
        return provenance.problem(other, address, key, mat, entry)

    not_one = "its provenance is not an in-toto statement"
    assert provenance.problem([stmt], address, key, mat, entry) == not_one
    assert bent("_type", "https://in-toto.io/Statement/v0.1") == not_one
    assert bent("predicateType", "https://slsa.dev/provenance/v0.2") == not_one
    assert provenance.problem(stmt, address, "0" * 64, mat, entry) == "its provenance names another action key"
    assert bent("predicate/buildDefinition/internalParameters/action_key", "0" * 64) == (
        "its provenance names another action key")
    other_materials = "its provenance lists other materials than this build's inputs"
    assert bent("predicate/buildDefinition/resolvedDependencies/1/digest/blake3", "0" * 64) == other_materials
    assert bent("predicate/buildDefinition/resolvedDependencies/0/annotations/key", "inputs.other") == other_materials
    assert bent("predicate/buildDefinition/resolvedDependencies", []) == other_materials
    other_digests = "its provenance names other artifact digests"
    assert bent("subject/1/digest/blake3", "0" * 64) == other_digests
    assert bent("subject/0/name", "run:prep") == other_digests
    assert bent("subject", stmt["subject"][:1]) == other_digests
    assert provenance.problem(stmt, "run:prep", key, mat, entry) == other_digests  # another target's artifact
    # and from the other side: the same statement does not vouch for another entry or other inputs
    extra = {**entry, "files": [*entry["files"], {"path": "y", "digest": "0" * 64, "size": 0}]}
    assert provenance.problem(stmt, address, key, mat, extra) == other_digests
    moved = {**mat, "inputs": {**mat["inputs"], "inputs.script": [["file", "data/raw2.txt", mat["inputs"]["inputs.script"][0][2]]]}}
    assert provenance.problem(stmt, address, key, moved, entry) == other_materials
    # parameters are not compared: they are what the key already covers
    assert bent("predicate/buildDefinition/externalParameters/params", {}) is None
