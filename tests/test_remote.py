"""The shared remote cache: s3 (moto's S3 server on 127.0.0.1) and a file:// folder shared by two
workspaces; verified fetches, tampering, unreachable remotes, concurrent pushes."""
from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ENV, Project

PIPELINE = """
[run.one]
cmd = "echo hello > {out}/x.txt; head -c 300000 /dev/zero > {out}/big.bin; echo one >> runs.txt"

[run.two]
cmd = "cat {in.o}/x.txt > {out}/y.txt; echo two >> runs.txt"
inputs = { o = "run:one" }
"""


def workspaces(tmp_path, n=2, pipeline=PIPELINE, trust=True) -> list[Project]:
    """n projects with their own signing keys, each trusting every other's (`trust`)."""
    from forgebuild.store import signing

    found = [Project(str(tmp_path / f"ws{i}")) for i in range(n)]
    keys = [signing.public_line(signing.load_or_make(os.path.join(p.root, ".forge"))) for p in found]
    trusting = f"trusted_keys = {json.dumps(keys)}\n" if trust else ""
    text = (pipeline.replace("[forge]\n", "[forge]\n" + trusting, 1) if "[forge]\n" in pipeline
            else f"[forge]\n{trusting}\n{pipeline}")
    for project in found:
        project.forgefile(text)
    return found


@pytest.fixture(scope="module")
def s3_env():
    """moto's S3-protocol server on a free loopback port; s3fs finds it through the standard
    AWS_ENDPOINT_URL variable (credentials the same way: nothing in the Forgefile)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    # moto's state is per process: a second module's server (test_remote_attacks) finds the bucket there
    subprocess.run([sys.executable, "-c",
                    "import s3fs; fs = s3fs.S3FileSystem(); fs.exists('team-cache') or fs.mkdir('team-cache')"],
                   env={**ENV, **env}, check=True)
    yield env
    server.stop()


def test_s3_remote_read_through_and_write_through(tmp_path, s3_env):
    a, b = workspaces(tmp_path)
    remote = ["--remote", "s3://team-cache/forge"]
    assert a.build(*remote, env=s3_env) == {"run:one": "built", "run:two": "built"}
    assert a.runs() == ["one", "two"]
    events = b.events(*remote, env=s3_env)
    assert [e["event"] for e in events] == ["cached", "cached", "summary"]
    assert all(e["reason"] == "fetched from s3://team-cache/forge" for e in events[:2])
    assert b.runs() == []  # nothing ran in the second workspace
    assert b.read(".forge/out/run/two/y.txt") == "hello\n"
    assert b.run("show", "run:one", "--json").stdout  # the build record came along
    # a second push sends nothing: every blob is there
    assert "(0.0 MB sent)" in a.run("cache", "push", *remote, env=s3_env).stdout


def test_shared_folder_between_workspaces_and_pull(tmp_path):
    a, b = workspaces(tmp_path)
    shared = f"file://{tmp_path}/shared"
    a.run("--remote", shared)
    assert b.run("cache", "pull", "--remote", shared).stdout.strip() == f"pulled 2 targets from {shared}"
    assert b.build() == {"run:one": "cached", "run:two": "cached"} and b.runs() == []


def test_a_tampered_remote_blob_is_reported_and_rebuilt(tmp_path):
    a, b = workspaces(tmp_path)
    shared = tmp_path / "shared"
    a.run("--remote", f"file://{shared}")
    blob = next(p for p in glob.glob(f"{shared}/cas/*/*") if os.path.getsize(p) < 100)  # x.txt's blob
    os.chmod(blob, 0o644)
    with open(blob, "w") as f:  # the declared size (6 bytes), other bytes: the digest check catches it
        f.write("hellO\n")
    proc = b.run("--remote", f"file://{shared}")
    digest = os.path.basename(blob)
    assert f"blob {digest} does not match its digest" in proc.stdout and "building locally" in proc.stdout
    assert b.read(".forge/out/run/two/y.txt") == "hello\n"  # built here, from the real input
    # run:one rebuilt here gives the digest the remote's entry names: run:two's own entry is good
    assert b.runs() == ["one"]


def test_an_unreachable_remote_degrades_to_local_with_one_warning(tmp_path, s3_env):
    (a,) = workspaces(tmp_path, 1)
    env = {**s3_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    proc = a.run("--remote", "s3://team-cache/forge", env=env, timeout=120)
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "remote s3://team-cache/forge cannot be reached" in warnings[0]
    assert a.runs() == ["one", "two"]
    a.run("clean", "--cache")
    proc = a.run("--remote", "s3://team-cache/forge", "--require-remote", env=env, expect=2, timeout=120)
    assert "forgebuild: remote s3://team-cache/forge cannot be reached" in proc.stderr


def test_two_workspaces_pushing_one_key_at_once_leave_one_whole_entry(tmp_path):
    a, b, c = workspaces(tmp_path, 3)
    shared = f"file://{tmp_path}/shared"
    procs = [subprocess.Popen([sys.executable, "-m", "forgebuild", "--remote", shared, "--json"], cwd=p.root,
                              env=ENV, stdout=subprocess.PIPE, text=True) for p in (a, b)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    entries = glob.glob(f"{tmp_path}/shared/ac/*/*.json")
    assert len(entries) == 2
    for path in entries:
        entry = json.load(open(path))
        for f in entry["files"]:
            assert os.path.getsize(f"{tmp_path}/shared/cas/{f['digest'][:2]}/{f['digest']}") == f["size"]
    assert glob.glob(f"{tmp_path}/shared/tmp/*") == []  # nothing half-written left visible
    assert c.build("--remote", shared) == {"run:one": "cached", "run:two": "cached"} and c.runs() == []


def test_credentials_never_in_the_forgefile(project):
    project.forgefile('[forge]\nremote = "s3://key:secret@bucket/cache"\n' + PIPELINE)
    proc = project.run(expect=2)
    assert "key 'remote': Value error, holds credentials" in proc.stderr or "holds credentials" in proc.stderr


def test_a_remote_entry_is_reused_only_when_its_provenance_vouches_for_it(tmp_path):
    from forgebuild.store import signing
    from forgebuild.hashing import file_digest

    a, b = workspaces(tmp_path)
    shared = tmp_path / "shared"
    a.run("--remote", f"file://{shared}")
    key = json.loads(a.run("show", "run:one", "--json").stdout.splitlines()[0])["key"]
    entry_path = shared / "ac" / key[:2] / f"{key}.json"
    entry = json.loads(entry_path.read_text())
    statement = json.loads((shared / "cas" / entry["provenance"][:2] / entry["provenance"]).read_text())
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"][0] == {"name": "run:one", "digest": {"blake3": entry["digest"]}}
    assert statement["predicate"]["buildDefinition"]["internalParameters"]["action_key"] == key
    # a statement that vouches for other materials: stored validly, under its own digest
    statement["predicate"]["buildDefinition"]["resolvedDependencies"] = [
        {"name": "evil.sh", "digest": {"blake3": "0" * 64}, "annotations": {"key": "x", "kind": "file"}}]
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(statement))
    digest = file_digest(str(forged))
    (shared / "cas" / digest[:2]).mkdir(exist_ok=True)
    (shared / "cas" / digest[:2] / digest).write_bytes(forged.read_bytes())
    entry["provenance"] = digest
    # signed by a trusted key (a bug in that workspace, or its stolen key): the statement is still checked
    entry["signature"] = signing.sign(signing.load_or_make(os.path.join(a.root, ".forge")), key, entry,
                                      entry["signature"]["record"])
    os.chmod(entry_path, 0o644)
    entry_path.write_text(json.dumps(entry))
    proc = b.run("--remote", f"file://{shared}")
    assert f"remote entry {key} for run:one: its provenance lists other materials than this build's inputs" in proc.stdout
    assert b.runs() == ["one"]


def test_a_fetch_killed_midway_leaves_nothing_half_visible_and_the_next_run_completes(tmp_path):
    import signal
    import time

    from forgebuild.hashing import file_digest

    # a 256 MB output: the fetch takes long enough to be killed in the middle
    a, b = workspaces(tmp_path, pipeline=PIPELINE.replace("head -c 300000 /dev/zero", "head -c 268435456 /dev/urandom"))
    shared = f"file://{tmp_path}/shared"
    a.run("--remote", shared, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", "--remote", shared], cwd=b.root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not glob.glob(f"{b.root}/.forge/tmp/fetch-*"):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # run:one's entry is not there: it does not look fetched. run:two's fetch runs beside it (the planner saw
    # both on the remote) and may have finished: then its entry names only blobs that arrived whole.
    one = json.loads(a.run("show", "run:one", "--json").stdout.splitlines()[0])["key"]
    entries = glob.glob(f"{b.root}/.forge/ac/*/*.json")
    assert not any(os.path.basename(e) == f"{one}.json" for e in entries)
    for path in entries:
        with open(path, encoding="utf-8") as f:
            named = [item["digest"] for item in json.load(f)["files"]]
        assert all(os.path.exists(f"{b.root}/.forge/cas/{d[:2]}/{d}") for d in named)
    for blob in glob.glob(f"{b.root}/.forge/cas/*/*"):  # whatever arrived is whole
        assert file_digest(blob) == os.path.basename(blob)
    assert b.build("--remote", shared) == {"run:one": "cached", "run:two": "cached"} and b.runs() == []
    assert len(b.read(".forge/out/run/one/x.txt")) == 6


def test_keys_makes_one_key_shows_it_and_it_never_leaves_the_workspace(tmp_path):
    from forgebuild.store import signing

    (a,) = workspaces(tmp_path, 1, trust=False)
    shown = a.run("keys").stdout.splitlines()
    assert shown[1] == "# private key: .forge/keys/signing.key (stays on this machine: never pushed, never cached)"
    private = os.path.join(a.root, ".forge", "keys", "signing.key")
    assert shown[0] == signing.public_line(signing.load_or_make(os.path.join(a.root, ".forge")))
    assert os.stat(private).st_mode & 0o777 == 0o600
    a.run("--remote", f"file://{tmp_path}/shared")
    a.run("clean", "--cache")
    assert a.events("keys")[-1] == {"event": "summary", "ok": True, "public_key": shown[0],
                                    "private_key": ".forge/keys/signing.key"}  # the same key, kept
    pem = open(private, "rb").read()
    for folder in (tmp_path / "shared", os.path.join(a.root, ".forge", "cas")):
        for path in glob.glob(f"{folder}/**/*", recursive=True):
            assert not os.path.isfile(path) or pem not in open(path, "rb").read()


def test_trusted_keys_that_are_not_keys_are_input_errors(tmp_path):
    (a,) = workspaces(tmp_path, 1, trust=False)
    a.forgefile('[forge]\ntrusted_keys = ["ssh-ed25519 AAAAnot-base64"]\n' + PIPELINE)
    proc = a.run(expect=2)
    assert proc.stderr == ("Forgefile.toml:2: error: [forge]: key 'trusted_keys': value error, not a valid ssh-ed25519 "
                           "public key (Invalid format)\n")
    a.forgefile('[forge]\ntrusted_keys = ["keys/bob.pub"]\n' + PIPELINE)
    assert a.run("--remote", f"file://{tmp_path}/shared", expect=2).stderr == (
        "forgebuild: Forgefile.toml: [forge] trusted_keys: keys/bob.pub: cannot be read (No such file or directory)\n")
    a.write("keys/bob.pub", "ssh-rsa AAAAB3NzaC1yc2E bob\n")
    assert a.run("--remote", f"file://{tmp_path}/shared", expect=2).stderr == (
        "forgebuild: Forgefile.toml: [forge] trusted_keys: keys/bob.pub: not an ssh-ed25519 public key (expected "
        "`ssh-ed25519 AAAA...`, as `forgebuild keys` shows)\n")


def test_two_workspaces_share_a_training_chain_and_a_tampered_entry_is_rebuilt_here(tmp_path):
    """corpus -> tokenizer -> pretrain -> sft, built once: a second workspace that trusts the first trains
    nothing; a third, after the sft's remote entry lost its signature, trains the sft only, with one warning."""
    import tinylab

    chain = tinylab.BASE_FORGEFILE + tinylab.DATASETS + """
[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = 32
train = { lr = 1e-3, steps = 4, batch_size = 8 }
threads = 1
"""
    projects = workspaces(tmp_path, 3, pipeline=chain)
    for p in projects:
        tinylab.write_stdlib_text(p.root)
        tinylab.write_arith_data(p.root)
    a, b, c = projects
    shared = f"file://{tmp_path}/shared"
    targets = ["corpus:stdlib", "tokenizer:bpe", "model:base", "dataset:sft", "model:sft"]
    assert actions(a.run("--remote", shared, "model:sft", timeout=600)) == {t: "built" for t in targets}
    events = b.events("--remote", shared, "model:sft")
    assert {e["event"] for e in events} == {"cached", "summary"}  # no start, no built: zero training steps
    assert all(e["reason"] == f"fetched from {shared}" for e in events if e["event"] == "cached")
    sft = json.loads(a.run("show", "model:sft", "--json").stdout.splitlines()[0])["key"]
    entry_path = tmp_path / "shared" / "ac" / sft[:2] / f"{sft}.json"
    entry = json.loads(entry_path.read_text())
    del entry["signature"]
    os.chmod(entry_path, 0o644)
    entry_path.write_text(json.dumps(entry))
    proc = c.run("--remote", shared, "model:sft", timeout=600)
    assert [line for line in proc.stdout.splitlines() if line.startswith("warning:")] == [
        f"warning: remote entry {sft} for model:sft is not signed; building locally"]
    assert actions(proc) == {**{t: "fetched" for t in targets}, "model:sft": "built"}
    for p in (b, c):
        p.run("verify", "model:sft")


def actions(proc) -> dict[str, str]:
    """{target: built | fetched} from a build's human lines (`built   model:sft  3.1s`)."""
    return {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines()
            if line.split()[:1] in (["built"], ["fetched"])}


def test_a_corrupt_local_build_record_is_one_line_not_a_traceback(tmp_path):
    (a,) = workspaces(tmp_path, 1, trust=False)
    a.run()
    record = json.loads(a.run("show", "run:one", "--json").stdout.splitlines()[0])["id"]
    path = os.path.join(a.root, ".forge", "records", f"{record}.json")
    os.chmod(path, 0o644)
    with open(path, "w") as f:
        f.write('{"id": ')
    assert a.run("show", "run:one", expect=2).stderr == f"forgebuild: {path}: corrupt build record (not JSON)\n"
