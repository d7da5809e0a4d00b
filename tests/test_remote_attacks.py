"""A remote writer attacks: one test per attack class of issue 11 §2, each on moto's S3 server and on a
file:// folder. Workspace `a` builds and pushes honestly; the attacker then rewrites what `a` pushed;
workspace `b`, which trusts `a`'s key, builds. Every attack must end the same way: exactly one warning
line naming the entry and the reason, the target built here from its real inputs, exit 0, no traceback,
the remote never reported as unreachable, `verify` clean, and nothing written outside `.forge/`.

Where an attack only gets past the signature with a trusted key (a bug in a trusted workspace, or its
stolen key), the forged entry is re-signed with `a`'s key: the structural checks behind the signature
(schema, names, sizes, tree digest) must hold on their own."""
from __future__ import annotations

import json
import os

import pytest
from test_remote import PIPELINE, s3_env, workspaces  # noqa: F401 (s3_env: the moto server fixture)

from forgebuild.store import signing
from forgebuild.hashing import bytes_digest, tree_digest

ATTACKED = PIPELINE.replace("echo hello > {out}/x.txt;", "echo hello > {out}/x.txt; : > {out}/empty;")


class Remote:
    """The attacker's view of the remote: raw objects under its root, through fsspec."""

    def __init__(self, kind: str, tmp_path, s3_env):
        import fsspec

        if kind == "file":
            self.url, self.env, self.root = f"file://{tmp_path}/shared", {}, f"{tmp_path}/shared"
            self.fs = fsspec.filesystem("file")
        else:
            self.url, self.env, self.root = f"s3://team-cache/{tmp_path.name}", s3_env, f"team-cache/{tmp_path.name}"
            self.fs = fsspec.filesystem("s3", key="test", secret="test", skip_instance_cache=True,
                                        client_kwargs={"endpoint_url": s3_env["AWS_ENDPOINT_URL"],
                                                       "region_name": "us-east-1"})
        self.kind = kind

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def write(self, rel: str, data: bytes) -> None:
        if self.fs.exists(self.path(rel)):  # a file:// remote keeps its objects read-only
            self.fs.rm_file(self.path(rel))
        self.fs.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)
        self.fs.pipe_file(self.path(rel), data)
        self.fs.invalidate_cache()

    def entry(self, key: str) -> dict:
        return json.loads(self.read(f"ac/{key[:2]}/{key}.json"))

    def put_entry(self, key: str, entry: dict) -> None:
        self.write(f"ac/{key[:2]}/{key}.json", json.dumps(entry).encode())

    def put_blob(self, data: bytes) -> str:
        digest = bytes_digest(data)
        self.write(f"cas/{digest[:2]}/{digest}", data)
        return digest


@pytest.fixture(params=["file", "s3"])
def attack(request, tmp_path):
    """(remote, a, b, key of run:one) once `a` has built and pushed; `b` trusts `a`."""
    env = request.getfixturevalue("s3_env") if request.param == "s3" else {}
    remote = Remote(request.param, tmp_path, env)
    a, b = workspaces(tmp_path, pipeline=ATTACKED)
    a.run("--remote", remote.url, env=remote.env)
    assert a.runs() == ["one", "two"]
    key = json.loads(a.run("show", "run:one", "--json").stdout.splitlines()[0])["key"]
    return remote, a, b, key


def signed_by(project, key: str, entry: dict) -> dict:
    """The entry re-signed with `project`'s key (over the record the original signature named)."""
    private = signing.load_or_make(os.path.join(project.root, ".forge"))
    return {**entry, "signature": signing.sign(private, key, entry, entry["signature"]["record"])}


def rebuilt_with_one_warning(remote, b, reason: str, key: str, a=None) -> None:
    """b builds: run:one here with exactly this warning, run:two fetched (run:one's output is the real one).
    With `a`: b's push repaired the remote (its entry, and blobs that failed their checks), so `a`, its
    cache emptied, fetches everything without a warning."""
    proc = b.run("--remote", remote.url, env=remote.env)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: remote entry {key} for run:one{reason}; building locally"]
    assert b.runs() == ["one"]
    assert b.read(".forge/out/run/one/x.txt") == "hello\n" and b.read(".forge/out/run/two/y.txt") == "hello\n"
    assert b.build("--remote", remote.url, env=remote.env) == {"run:one": "cached", "run:two": "cached"}
    assert b.runs() == []
    b.run("verify")
    if a is not None:
        a.run("clean", "--cache")
        proc = a.run("--remote", remote.url, env=remote.env)
        assert "warning" not in proc.stdout and a.runs() == []


def test_a_record_id_that_climbs_out_is_refused(attack, tmp_path):
    from forgebuild.store.local import Store
    from forgebuild.errors import StoreError

    remote, a, b, key = attack
    entry = remote.entry(key)
    climb = "../../../../canary/package"
    record = json.loads(remote.read(f"records/{entry['record']}.json"))
    remote.write(f"records/{entry['record']}.json", json.dumps({**record, "id": climb}).encode())
    remote.put_entry(key, signed_by(a, key, {**entry, "record": climb}))
    rebuilt_with_one_warning(remote, b, " is malformed: record: String should match pattern "
                                        "'^[0-9]{8}T[0-9]{6}-[0-9a-f]{12}-[0-9a-f]{6}$'", key, a)
    # the mechanism itself, whoever calls it: nothing lands outside the store
    with pytest.raises(StoreError, match=r"^build record id '\.\./\.\./\.\./\.\./canary/package' is not a record id"):
        Store(os.path.join(b.root, ".forge")).put_record_as({**record, "id": climb})
    assert not any(os.path.exists(os.path.join(b.root, ".forge", "records", *[".."] * n, "canary"))
                   for n in range(1, 6))


def test_a_forged_self_consistent_statement_with_a_swapped_blob_is_refused(attack):
    """The attacker rewrites x.txt, its digest, the tree digest and the statement consistently, and signs
    with a key of its own: only the signature can tell."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    remote, a, b, key = attack
    entry = remote.entry(key)
    files = [{**f, "digest": remote.put_blob(b"evil!\n")} if f["path"] == "x.txt" else f for f in entry["files"]]
    digest = tree_digest((f["path"], f["x"], f["digest"]) for f in files)
    statement = json.loads(remote.read(f"cas/{entry['provenance'][:2]}/{entry['provenance']}"))
    statement["subject"] = [{"name": "run:one", "digest": {"blake3": digest}},
                            *({"name": f"run:one/{f['path']}", "digest": {"blake3": f["digest"]}} for f in files)]
    forged = {**entry, "files": files, "digest": digest, "provenance": remote.put_blob(json.dumps(statement).encode())}
    attacker = Ed25519PrivateKey.generate()
    forged["signature"] = signing.sign(attacker, key, forged, entry["signature"]["record"])
    remote.put_entry(key, forged)
    fingerprint = signing.fingerprint(attacker.public_key())
    rebuilt_with_one_warning(remote, b, f": it is signed by {fingerprint}, a key this workspace does not trust "
                                        "([forge] trusted_keys)", key, a)


def test_a_manifest_whose_tree_digest_is_not_its_files_is_refused(attack):
    """Even signed by a trusted key: the entry's digest names artifacts/<digest>, so it must be derived
    from the files, never taken on the entry's word."""
    remote, a, b, key = attack
    entry = remote.entry(key)
    files = [{**f, "digest": remote.put_blob(b"evil!\n")} if f["path"] == "x.txt" else f for f in entry["files"]]
    remote.put_entry(key, signed_by(a, key, {**entry, "files": files}))
    tree = tree_digest((f["path"], f["x"], f["digest"]) for f in files)
    rebuilt_with_one_warning(remote, b, f": its digest {entry['digest']} is not the digest of its files ({tree})",
                             key, a)


@pytest.mark.parametrize("damage", ["not JSON", "wrong type", "record without id", "blob is a folder"])
def test_malformed_documents_are_one_warning(attack, damage):
    remote, a, b, key = attack
    entry = remote.entry(key)
    x = next(f for f in entry["files"] if f["path"] == "x.txt")["digest"]
    if damage == "not JSON":
        remote.write(f"ac/{key[:2]}/{key}.json", b'{"digest": [')
        reason = " is not JSON"
    elif damage == "wrong type":
        files = [{**f, "size": str(f["size"])} for f in entry["files"]]
        remote.put_entry(key, signed_by(a, key, {**entry, "files": files}))
        reason = " is malformed: files.0.size: Input should be a valid integer"
    elif damage == "record without id":
        record = json.loads(remote.read(f"records/{entry['record']}.json"))
        del record["id"]
        remote.write(f"records/{entry['record']}.json", json.dumps(record).encode())
        reason = f": build record {entry['record']} is malformed: id: Field required"
    else:
        remote.fs.rm_file(remote.path(f"cas/{x[:2]}/{x}"))
        remote.write(f"cas/{x[:2]}/{x}/inside", b"hello\n")  # on S3: an object below the blob's name
        reason = (f": blob {x} cannot be read (IsADirectoryError: [Errno 21] Is a directory: "
                  f"'{remote.root}/cas/{x[:2]}/{x}')" if remote.kind == "file" else  # S3: no object by that name
                  f": blob {x} is missing from the remote")
    rebuilt_with_one_warning(remote, b, reason, key, a if damage != "blob is a folder" else None)


def test_an_oversized_blob_is_refused_before_it_is_downloaded(attack):
    remote, a, b, key = attack
    entry = remote.entry(key)
    x = next(f for f in entry["files"] if f["path"] == "x.txt")["digest"]
    size = 400_000_000 if remote.kind == "file" else 20_000_000  # moto holds objects in memory
    if remote.kind == "file":  # sparse: 400 MB that cost no disk
        remote.fs.rm_file(remote.path(f"cas/{x[:2]}/{x}"))
        with open(remote.path(f"cas/{x[:2]}/{x}"), "wb") as f:
            f.truncate(size)
    else:
        remote.write(f"cas/{x[:2]}/{x}", bytes(size))
    rebuilt_with_one_warning(remote, b, f": blob {x} is {size} bytes, the manifest says 6: refused without "
                                        "downloading it", key, a)
    assert os.listdir(os.path.join(b.root, ".forge", "tmp")) == []


def test_a_blob_that_never_ends_is_cut_off_at_its_declared_size(tmp_path):
    """The size the remote reports can lie (an object replaced mid-read, a server that streams): reading
    stops at the manifest's size. Here the empty file's blob is a link to /dev/zero (it reports 0 bytes)."""
    remote = Remote("file", tmp_path, {})
    a, b = workspaces(tmp_path, pipeline=ATTACKED)
    a.run("--remote", remote.url)
    key = json.loads(a.run("show", "run:one", "--json").stdout.splitlines()[0])["key"]
    empty = next(f for f in remote.entry(key)["files"] if f["path"] == "empty")["digest"]
    os.unlink(remote.path(f"cas/{empty[:2]}/{empty}"))
    os.symlink("/dev/zero", remote.path(f"cas/{empty[:2]}/{empty}"))
    a.runs()
    rebuilt_with_one_warning(remote, b, f": blob {empty} sent more than its declared 0 bytes: refused", key, a)


def test_a_planted_verdict_neither_fails_the_target_nor_is_cached(attack):
    remote, a, b, key = attack
    entry = remote.entry(key)
    remote.put_entry(key, {**entry, "verdict": "gate failed: perplexity 9999 > 50"})
    fingerprint = signing.fingerprint(signing.parse_public(entry["signature"]["key"]))
    rebuilt_with_one_warning(remote, b, f": its signature by {fingerprint} does not match its contents (tampered)",
                             key, a)
    assert all("verdict" not in json.load(open(p)) for p in _local_entries(b))


@pytest.mark.parametrize("how", ["removed", "null"])
def test_an_unsigned_entry_is_refused(attack, how):
    remote, a, b, key = attack
    entry = remote.entry(key)
    if how == "removed":
        del entry["signature"]
    else:
        entry["signature"] = None
    remote.put_entry(key, entry)
    rebuilt_with_one_warning(remote, b, " is not signed", key, a)


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_an_entry_signed_by_a_key_not_trusted_is_refused(kind, tmp_path, request):
    remote = Remote(kind, tmp_path, request.getfixturevalue("s3_env") if kind == "s3" else {})
    a, b = workspaces(tmp_path, trust=False)
    a.run("--remote", remote.url, env=remote.env)
    a.runs()
    fingerprint = signing.fingerprint(signing.load_or_make(os.path.join(a.root, ".forge")).public_key())
    proc = b.run("--remote", remote.url, env=remote.env)
    keys = {t: json.loads(a.run("show", t, "--json").stdout.splitlines()[0])["key"] for t in ("run:one", "run:two")}
    assert [line for line in proc.stdout.splitlines() if line.startswith("warning:")] == [
        f"warning: remote entry {keys[t]} for {t}: it is signed by {fingerprint}, a key this workspace does not "
        "trust ([forge] trusted_keys); building locally" for t in ("run:one", "run:two")]
    assert b.runs() == ["one", "two"]
    b.run("verify")


def _local_entries(project) -> list[str]:
    import glob

    return glob.glob(os.path.join(project.root, ".forge", "ac", "*", "*.json"))


def test_a_thousand_mutated_documents_never_crash_a_fetch(tmp_path):
    """A seeded mutator over what an honest workspace pushed (the entry mostly, else its provenance
    statement or its build record): a key dropped, a value of another type or out of range, an unknown
    field, a duplicated file, a truncated or flipped byte; entries re-signed with the trusted key half of
    the time and always when the statement or record changed (so the checks behind the signature are
    reached). Every fetch, in this process, either returns an entry whose tree digest is its files' or
    raises Untrusted: never another exception, and nothing is written outside the fetching stores."""
    import random

    from forgebuild.store.documents import Untrusted
    from forgebuild.store.remote import Remote as Client
    from forgebuild.store.remote import canonical_digest
    from forgebuild.store.local import Store

    remote = Remote("file", tmp_path, {})
    a, b = workspaces(tmp_path, pipeline=ATTACKED)
    a.run("--remote", remote.url)
    state = json.load(open(os.path.join(a.root, ".forge", "state", "targets", "run", "one.json")))
    key, mat, entry = state["key"], state["material"], remote.entry(state["key"])
    statement = json.loads(remote.read(f"cas/{entry['provenance'][:2]}/{entry['provenance']}"))
    record = json.loads(remote.read(f"records/{entry['record']}.json"))
    private = signing.load_or_make(os.path.join(a.root, ".forge"))
    rng = random.Random(11)
    before = sorted(os.listdir(tmp_path))
    outcomes = {"refused": 0, "fetched": 0}
    for i in range(1000):
        forged, rec = json.loads(json.dumps(entry)), json.loads(json.dumps(record))
        which = rng.choice(["entry", "entry", "entry", "statement", "record"])
        if which == "entry":
            _mutate(rng, forged)
        elif which == "statement":
            stmt = json.loads(json.dumps(statement))
            _mutate(rng, stmt)
            forged["provenance"] = remote.put_blob(json.dumps(stmt).encode())
        else:
            _mutate(rng, rec)
        remote.write(f"records/{entry['record']}.json", json.dumps(rec).encode())
        if which != "entry" or rng.random() < 0.5:
            digest = canonical_digest(rec) if which == "record" else entry["signature"]["record"]
            forged["signature"] = signing.sign(private, key, forged, digest)
        data = json.dumps(forged).encode()
        if rng.random() < 0.1:  # bytes damaged too
            cut = rng.randrange(len(data))
            data = data[:cut] if rng.random() < 0.5 else data[:cut] + bytes([rng.randrange(256)]) + data[cut + 1:]
        remote.write(f"ac/{key[:2]}/{key}.json", data)
        local = Store(str(tmp_path / "fetcher" / str(i % 7)))  # a few stores, reused: some blobs already there
        client = Client(remote.url, workspace_dir=os.path.join(a.root, ".forge"))
        try:
            got = client.fetch(key, "run:one", local, mat)
        except Untrusted:
            outcomes["refused"] += 1
            continue
        files = got["files"]  # `x` may be absent: false, as the schema says
        assert tree_digest((f["path"], f.get("x", False), f["digest"]) for f in files) == got["digest"]
        outcomes["fetched"] += 1
    assert outcomes["refused"] > 800 and outcomes["fetched"] > 0, outcomes  # 876 and 124 when written
    assert sorted(os.listdir(tmp_path)) == sorted({*before, "fetcher"})


VALUES = [None, 0, -1, 2**70, 1.5, True, "", "../../x", "a/../b", "/abs", "x" * 5000, "0" * 64, [], {}, [{}]]


def _mutate(rng, doc) -> None:
    """One mutation, in place, somewhere inside a JSON document."""
    node, field = _random_slot(rng, doc)
    action = rng.choice(["drop", "value", "extra", "duplicate"])
    if action == "drop" and isinstance(node, dict):
        node.pop(field, None)
    elif action == "extra" and isinstance(node, dict):
        node[rng.choice(["evil", "id", "x", "verdict"])] = rng.choice(VALUES)
    elif action == "duplicate" and isinstance(doc.get("files"), list) and doc["files"]:
        doc["files"].append(dict(rng.choice(doc["files"]), **rng.choice([{}, {"path": "x.txt/inner"}])))
    else:
        node[field] = rng.choice(VALUES)


def _random_slot(rng, doc):
    """A random (container, key or index) inside a JSON document: where the mutator strikes."""
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        field = rng.choice(keys)
        inner = node[field]
        if isinstance(inner, (dict, list)) and inner and rng.random() < 0.6:
            node = inner
            continue
        return node, field
