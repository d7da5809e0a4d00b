"""The planner sees the remote: `status`, `explain`, `-n` and `lock` show a target whose signed entry the
configured remote holds as `remote` (not missing), keyed on through the remote's digests; the build then
fetches it (one GET an object on S3, the planner's read of an entry reused), and a fetch runs beside the
builds instead of in front of them."""
from __future__ import annotations

import json
import logging
import os
import re

import pytest
from test_remote import s3_env, workspaces  # noqa: F401 (s3_env: moto's S3 server on loopback)

CHAIN = """
[run.one]
cmd = "echo hello > {out}/x.txt; echo one >> runs.txt"

[run.two]
cmd = "cat {in.o}/x.txt > {out}/y.txt; echo more >> {out}/y.txt; echo two >> runs.txt"
inputs = { o = "run:one" }

[run.three]
cmd = "cat {in.o}/y.txt > {out}/z.txt; echo three >> runs.txt"
inputs = { o = "run:two" }
"""
TARGETS = ["run:one", "run:two", "run:three"]


def pushed_chain(tmp_path):
    """(a, b, url): `a` built the chain and pushed it to a shared folder; `b`, which trusts `a`, has nothing."""
    a, b = workspaces(tmp_path, pipeline=CHAIN)
    url = f"file://{tmp_path}/shared"
    assert a.build("--remote", url) == dict.fromkeys(TARGETS, "built")
    a.runs()
    return a, b, url


def states(proc) -> list[str]:
    return [line.split()[0] for line in proc.stdout.splitlines()]


def entry_path(tmp_path, project, target: str) -> str:
    key = json.loads(project.run("show", target, "--json").stdout.splitlines()[0])["key"]
    return f"{tmp_path}/shared/ac/{key[:2]}/{key}.json"


def test_status_explain_dry_run_and_lock_show_a_pushed_chain_as_remote(tmp_path):
    a, b, url = pushed_chain(tmp_path)
    assert b.run("status", "--remote", url).stdout.splitlines() == [
        f"remote  {t:<9}  available in {url}" for t in TARGETS]
    events = b.events("status", "--remote", url)
    assert [(e["target"], e["state"]) for e in events[:3]] == [(t, "remote") for t in TARGETS]
    a_status = {e["target"]: e for e in a.events("status")[:3]}
    assert all(e["key"] == a_status[e["target"]]["key"] and e["digest"] == a_status[e["target"]]["digest"]
               for e in events[:3])  # keyed on through the remote's digests: the keys `a` built under
    assert b.run("explain", "run:three", "--remote", url).stdout == "".join(
        f"{t}: remote\n  - available in {url}\n" for t in reversed(TARGETS))
    assert b.run("-n", "--remote", url).stdout.splitlines() == [
        *[f"would fetch {t}  (available in {url})" for t in TARGETS], "dry run: 0 to build, 3 to fetch, 0 fresh"]
    assert [t["action"] for t in b.events("-n", "--remote", url)[-1]["targets"]] == ["would-fetch"] * 3
    assert states(b.run("status")) == ["missing"] * 3  # no remote configured: the local answer
    # a lock written from the remote pins what `a` built, without fetching anything
    assert b.run("lock", "--remote", url).stdout == "wrote Forgefile.lock (3 targets, 3 from the remote, not fetched)\n"
    a.run("lock")
    locked = json.loads(b.read("Forgefile.lock"))["targets"]
    assert locked == json.loads(a.read("Forgefile.lock"))["targets"]
    assert not os.path.exists(os.path.join(b.root, ".forge", "cas"))  # nothing fetched yet
    # the build fetches them (builds nothing), and --frozen holds it to that lock
    summary = b.events("--frozen", "--remote", url)[-1]
    assert [(t["target"], t["action"], t["reason"]) for t in summary["targets"]] == [
        (t, "cached", f"fetched from {url}") for t in TARGETS]
    assert b.runs() == [] and b.read(".forge/out/run/three/z.txt") == "hello\nmore\n"
    assert states(b.run("status")) == ["fresh"] * 3
    b.run("verify")


def test_a_tampered_entry_is_not_remote_says_why_and_is_built_here(tmp_path):
    a, b, url = pushed_chain(tmp_path)
    path = entry_path(tmp_path, a, "run:one")
    entry = json.load(open(path))
    del entry["signature"]
    os.chmod(path, 0o644)
    with open(path, "w") as f:
        json.dump(entry, f)
    key = os.path.basename(path)[:-len(".json")]
    refused = f"not taken from {url}: remote entry {key} for run:one is not signed"
    assert b.run("status", "--remote", url).stdout.splitlines() == [
        f"missing run:one    never built; {refused}",
        "missing run:two    never built; dependency run:one is missing",
        "missing run:three  never built; dependency run:two is missing"]
    assert b.run("-n", "--remote", url).stdout.splitlines()[0] == f"would build run:one  (never built; {refused})"
    proc = b.run("lock", "--remote", url, expect=1)
    assert proc.stderr.splitlines()[0] == f"forgebuild: cannot lock run:one: it is missing (never built; {refused})"
    proc = b.run("--remote", url, "--json")
    warnings = [json.loads(line) for line in proc.stdout.splitlines() if '"warning"' in line]
    assert [w["message"] for w in warnings] == [f"remote entry {key} for run:one is not signed; building locally"]
    summary = json.loads(proc.stdout.splitlines()[-1])
    # run:one built here to the digest `a` pushed: its readers' entries on the remote are good
    assert [(t["target"], t["action"]) for t in summary["targets"]] == [
        ("run:one", "built"), ("run:two", "cached"), ("run:three", "cached")]
    assert b.runs() == ["one"]


def test_an_unreachable_remote_is_one_warning_and_the_local_answer(tmp_path, s3_env):
    a, b = workspaces(tmp_path, pipeline=CHAIN)
    a.run()
    env = {**s3_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}
    proc = b.run("status", "--remote", "s3://team-cache/gone", env=env)
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 and lines[0].startswith("warning: remote s3://team-cache/gone cannot be reached (")
    assert lines[1:] == ["missing run:one    never built",
                         "missing run:two    never built; dependency run:one is missing",
                         "missing run:three  never built; dependency run:two is missing"]
    # all fresh locally: the remote is never asked (it would warn again), nor made
    assert a.run("status", "--remote", "s3://team-cache/gone", env=env).stdout.splitlines() == [
        f"fresh   {t:<9}  up to date" for t in TARGETS]
    assert "warning" not in a.run("--remote", "s3://team-cache/gone", env=env).stdout


class RequestLog(logging.Handler):
    """The requests moto's server (in this process) answers: (method, path, status)."""

    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) [^"]*" (\d+)')

    def __init__(self):
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, str, str]] = []

    def emit(self, record) -> None:
        m = self.LINE.search(record.getMessage())
        if m:
            self.seen.append(m.groups())


@pytest.fixture
def requests_seen():
    log = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(log)
    yield log
    werkzeug.removeHandler(log)
    werkzeug.setLevel(level)


def test_an_s3_fetch_reads_each_object_with_one_get(tmp_path, s3_env, requests_seen):
    a, b = workspaces(tmp_path, pipeline=CHAIN)
    url = f"s3://team-cache/{tmp_path.name}"
    a.run("--remote", url, env=s3_env)
    objects = set()  # what b must read: each entry, its record, its blobs and its statement
    for target in TARGETS:
        record = json.loads(a.run("show", target, "--json").stdout.splitlines()[0])
        entry = json.load(open(os.path.join(a.root, ".forge", "ac", record["key"][:2], f"{record['key']}.json")))
        objects |= {f"ac/{record['key'][:2]}/{record['key']}.json", f"records/{entry['record']}.json",
                    *(f"cas/{d[:2]}/{d}" for d in [entry["provenance"], *(f["digest"] for f in entry["files"])])}
    assert len(objects) == 3 + 3 + 3 + 2  # y.txt and z.txt are one blob: the fetches of two targets read it once
    requests_seen.seen.clear()
    assert b.build("--remote", url, env=s3_env) == dict.fromkeys(TARGETS, "cached")
    prefix = f"/team-cache/{tmp_path.name}/"
    seen = [(m, p[len(prefix):], code) for m, p, code in requests_seen.seen]
    # one ranged GET an object (206), the entries read once though both the planner and the fetch use them;
    # no HEAD, no listing, nothing written
    assert sorted(seen) == sorted(("GET", o, "206") for o in objects)
    assert b.runs() == []


FETCH_BESIDE_A_BUILD = """
[run.one]
cmd = "echo hello > {{out}}/x.txt; echo one >> runs.txt"
{maker}
"""
# The local build that must run while run:one is being fetched: it hands the fetch the build record it is
# waiting for (the remote's record is a named pipe: its read blocks until a writer opens it).
MAKER = """
[run.maker]
cmd = "timeout 30 sh -c 'cat {record} > {fifo}'; echo made > {{out}}/m; echo maker >> runs.txt"
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_fetch_runs_beside_a_build(tmp_path, jobs):
    """run:one comes first in build order and is on the remote, but its fetch cannot finish before run:maker,
    a local build, has run: a fetch that held the scheduler (or the only build slot) would wait forever."""
    a, b = workspaces(tmp_path, pipeline=FETCH_BESIDE_A_BUILD.format(maker=""))
    url = f"file://{tmp_path}/shared"
    a.run("--remote", url)
    a.runs()
    record_id = json.loads(a.run("show", "run:one", "--json").stdout.splitlines()[0])["id"]
    fifo = f"{tmp_path}/shared/records/{record_id}.json"
    saved = f"{tmp_path}/record.json"
    os.rename(fifo, saved)
    os.mkfifo(fifo)
    b.forgefile(a.read("Forgefile.toml") + MAKER.format(record=saved, fifo=fifo))
    events = b.events("-j", jobs, "--remote", url, timeout=60)
    order = [(e["event"], e.get("target")) for e in events if e["event"] in ("start", "built", "cached")]
    assert ("cached", "run:one") in order and ("built", "run:maker") in order
    assert order.index(("start", "run:maker")) < order.index(("cached", "run:one"))
    assert [e["reason"] for e in events if e["event"] == "cached"] == [f"fetched from {url}"]
    assert b.runs() == ["maker"]


TOKENIZER = """
[corpus.c]
sources = ["docs/*.txt"]

[tokenizer.t]
corpus = "corpus:c"
vocab_size = 300
"""
HIDE_TOKENIZERS = "import sys\nsys.modules['tokenizers'] = None  # find_spec() answers None, import fails\n"


def test_a_target_the_remote_holds_needs_no_package_to_be_fetched(tmp_path):
    # preflight stops a build whose stage imports a missing package (exit 2); a fetch imports nothing
    a, b = workspaces(tmp_path, pipeline=TOKENIZER)
    for project in (a, b):
        project.write("docs/a.txt", "the quick brown fox jumps over the lazy dog\n" * 40)
    url = f"file://{tmp_path}/shared"
    assert a.build("--remote", url) == {"corpus:c": "built", "tokenizer:t": "built"}
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(HIDE_TOKENIZERS)
    hidden = {"PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    assert b.run("-n", "--remote", url, env=hidden).stdout.splitlines()[-1] == "dry run: 0 to build, 2 to fetch, 0 fresh"
    assert b.build("--remote", url, env=hidden) == {"corpus:c": "cached", "tokenizer:t": "cached"}
    b.run("verify")
