"""store/remote.py in process, over a local folder and fsspec's memory://: a real build pushed by one
workspace and fetched by another, and what a fetch refuses (untrusted signer, a tampered blob, a
statement for other inputs). A refused entry never enters the reader's store, nor a blob that fails its digest."""
from __future__ import annotations

import json
import os
import uuid

import pytest

from forgebuild.store import signing
from forgebuild.store.documents import Untrusted
from forgebuild.store.remote import Remote
from forgebuild.store.local import Store
from forgebuild.hashing import bytes_digest
from forgebuild.store.workspace import Workspace
from unitlab import lab  # noqa: F401  (a fixture)

FORGEFILE = """
[run.make]
cmd = "cp {in.raw} {out}/x.txt && printf abc > {out}/y.txt"
inputs = { raw = "data/raw.txt" }
"""


class Built:
    """A workspace that built run:make: its store, signing key, the target's key, material and entry."""

    def __init__(self, lab):
        lab.write("data/raw.txt", "hello\n")
        lab.write("Forgefile.toml", FORGEFILE)
        assert lab.build("run:make")[0] == 0
        self.dir = Workspace(lab.root).dir
        self.store = Store(self.dir)
        last = Workspace(lab.root).last_build("run:make")
        self.key, self.mat = last["key"], last["material"]
        self.entry = self.store.get_action(self.key)

    def remote(self, url: str, trust=None) -> Remote:
        return Remote(url, workspace_dir=self.dir, trusted=trust)

    def public(self) -> dict:
        return signing.trusted_keys([signing.public_line(signing.load_or_make(self.dir))], "", "test")


@pytest.fixture
def pair(lab, tmp_path_factory):
    """A writer that built run:make and pushed it to a folder, and a reader workspace that trusts it."""
    writer = Built(lab)
    url = str(tmp_path_factory.mktemp("remote"))
    sent = writer.remote(url).push(writer.key, writer.entry, writer.store)
    reader = tmp_path_factory.mktemp("reader") / ".forge"
    return writer, url, sent, Store(str(reader)), Remote(url, workspace_dir=str(reader), trusted=writer.public())


def blob_names(store: Store) -> list[str]:
    return sorted(store.blob_digests())


def test_push_sends_what_is_missing_once(pair):
    writer, url, sent, _, _ = pair
    provenance = os.path.getsize(writer.store.blob_path(writer.entry["provenance"]))
    assert sent == sum(f["size"] for f in writer.entry["files"]) + provenance == 6 + 3 + provenance
    assert writer.remote(url).push(writer.key, writer.entry, writer.store) == 0  # already there, signed by us
    there = json.loads(open(Store(url).action_path(writer.key)).read())
    assert signing.check(there["signature"], writer.key, there, writer.public()) is None


def test_fetch_brings_blobs_record_and_entry_and_a_miss_is_none(pair):
    writer, url, _, local, remote = pair
    assert remote.fetch("0" * 64, "run:make", local, writer.mat) is None
    entry = remote.fetch(writer.key, "run:make", local, writer.mat)
    assert entry["digest"] == writer.entry["digest"] and entry["files"] == writer.entry["files"]
    assert local.get_action(writer.key) == entry
    assert blob_names(local) == sorted([*(f["digest"] for f in entry["files"]), entry["provenance"]])
    assert local.get_record(entry["record"]) == writer.store.get_record(entry["record"])


def test_an_untrusted_signer_is_refused_before_any_download(pair):
    writer, url, _, local, _ = pair
    stranger = Remote(url, workspace_dir=local.root)  # trusts only its own (new) key
    with pytest.raises(Untrusted) as e:
        stranger.fetch(writer.key, "run:make", local, writer.mat)
    fingerprint = next(iter(writer.public().values()))
    assert str(e.value) == (f"remote entry {writer.key} for run:make: it is signed by {signing.fingerprint(fingerprint)}, "
                            "a key this workspace does not trust ([forge] trusted_keys)")
    assert stranger.refused == {writer.key}
    assert blob_names(local) == [] and local.get_action(writer.key) is None


def test_a_tampered_blob_is_refused_and_never_enters_the_local_store(pair):
    writer, url, _, local, remote = pair
    y = next(f for f in writer.entry["files"] if f["path"] == "y.txt")
    path = Store(url).blob_path(y["digest"])
    os.chmod(path, 0o644)
    with open(path, "w") as f:
        f.write("abd")  # the same size: only its digest tells
    with pytest.raises(Untrusted) as e:
        remote.fetch(writer.key, "run:make", local, writer.mat)
    got = bytes_digest(b"abd")
    assert str(e.value) == (f"remote entry {writer.key} for run:make: blob {y['digest']} does not match its digest "
                            f"(the remote holds {got}): a corrupt or tampered remote")
    assert y["digest"] not in blob_names(local) and local.get_action(writer.key) is None
    assert remote.bad_blobs == {y["digest"]}
    assert os.listdir(os.path.join(local.root, "tmp")) == []  # the download's temporary file is gone


def test_a_statement_for_other_inputs_is_refused(pair):
    writer, url, _, local, remote = pair
    other = {**writer.mat, "inputs": {"inputs.raw": [["file", "data/raw.txt", "0" * 64]]}}
    with pytest.raises(Untrusted) as e:
        remote.fetch(writer.key, "run:make", local, other)
    assert str(e.value) == (f"remote entry {writer.key} for run:make: its provenance lists other materials than "
                            "this build's inputs")
    assert local.get_action(writer.key) is None


def test_push_and_fetch_over_memory(lab, tmp_path_factory):
    writer = Built(lab)
    url = f"memory://fb-unit-{uuid.uuid4().hex}"
    writer.remote(url).push(writer.key, writer.entry, writer.store)
    local = Store(str(tmp_path_factory.mktemp("reader") / ".forge"))
    entry = Remote(url, workspace_dir=local.root, trusted=writer.public()).fetch(writer.key, "run:make", local, writer.mat)
    assert entry["digest"] == writer.entry["digest"]
    ws = Workspace(os.path.dirname(local.root))
    assert open(os.path.join(ws.materialise("run:make", entry, local), "y.txt")).read() == "abc"


def test_a_push_after_a_refusal_writes_the_bad_blob_again(pair, tmp_path_factory):
    writer, url, _, _, _ = pair
    y = next(f for f in writer.entry["files"] if f["path"] == "y.txt")
    path = Store(url).blob_path(y["digest"])
    os.chmod(path, 0o644)
    with open(path, "w") as f:
        f.write("abd")
    remote = writer.remote(url, writer.public())
    with pytest.raises(Untrusted):
        remote.fetch(writer.key, "run:make", Store(str(tmp_path_factory.mktemp("r1") / ".forge")), writer.mat)
    assert remote.push(writer.key, writer.entry, writer.store) == 3  # only the refused blob goes again
    assert open(path).read() == "abc"
    again = Store(str(tmp_path_factory.mktemp("r2") / ".forge"))
    assert Remote(url, workspace_dir=again.root, trusted=writer.public()).fetch(
        writer.key, "run:make", again, writer.mat)["digest"] == writer.entry["digest"]


def test_the_planner_s_lookup_is_the_fetch_s_read_of_the_entry(pair):
    """lookup() checks the entry without a blob; the fetch that follows in the same process reads it no more
    (here: the entry is gone from the remote by then, and the fetch still has it)."""
    writer, url, _, local, remote = pair
    assert remote.lookup("0" * 64, "run:make") is None and remote.known_miss("0" * 64)
    entry, reason = remote.lookup(writer.key, "run:make")
    assert reason == f"available in {url}" and entry["digest"] == writer.entry["digest"]
    assert blob_names(local) == []  # no blob read to say so
    os.chmod(Store(url).action_path(writer.key), 0o644)
    os.unlink(Store(url).action_path(writer.key))
    assert remote.fetch(writer.key, "run:make", local, writer.mat)["digest"] == writer.entry["digest"]


def test_a_refused_entry_is_not_available_and_says_why(pair):
    writer, url, _, local, _ = pair
    stranger = Remote(url, workspace_dir=str(local.root))  # trusts no one but its own (absent) key
    entry, reason = stranger.lookup(writer.key, "run:make")
    assert entry is None and reason.startswith(f"not taken from {url}: remote entry {writer.key} for run:make: ")
    assert stranger.refused == {writer.key}
    with pytest.raises(Untrusted):  # the fetch gives the same answer, without reading again
        stranger.fetch(writer.key, "run:make", local, writer.mat)


def test_an_objects_size_is_content_range_s_total_else_its_length():
    from forgebuild.store.remote import _object_size

    assert _object_size({"ContentRange": "bytes 0-5/6", "ContentLength": 6}) == 6
    assert _object_size({"ContentRange": "bytes 0-64/400000000", "ContentLength": 65}) == 400_000_000
    assert _object_size({"ContentLength": 9}) == 9  # a server that ignored the range sends the whole object
