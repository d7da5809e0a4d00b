"""The shared remote cache on a real S3-protocol server: a large artifact, and many small targets.

moto's ThreadedMotoServer runs in this process on a free loopback port (a real
HTTP S3 endpoint: s3fs and botocore talk to it as to AWS); everything that
transfers runs in a child process, forgebuild and the direct s3fs side alike,
so neither shares an interpreter (or a GIL) with the server. The server's CPU
time during each transfer (this process's CPU: its main thread only waits) and
the requests it served (counted from its request log) are printed beside each
figure.

Part 1, one large artifact: a `run` target whose command writes --files files
totalling --size-mb MB (default 16 x 64 MB = 1 GiB) from /dev/urandom
(incompressible), built once locally with no remote. Then, alternating the
order of the sides each round (A/B, then B/A), median of --repeats:

  push  forgebuild     `forgebuild cache push --remote s3://...` wall time, into
                       a fresh prefix each round (so every blob is sent)
        Remote.push    the same through forgebuild.store.remote.Remote in a child
                       process, timed inside it: the transfer without start-up,
                       planning and s3fs's import
        s3fs put       S3FileSystem().put(blobs, keys): the same local files to
                       the same object names in one call (s3fs's own parallelism),
                       timed inside a child; "script" is that child's wall time
  pull  forgebuild     `forgebuild cache pull --remote ...` in a second workspace
                       with no .forge: fetch, verify every digest, materialise
        Remote.fetch   the same in a child, into an empty store, timed inside it;
                       then the verification's own share: file_digest of every
                       fetched blob again (page cache hot)
        s3fs get       S3FileSystem().get(keys, files) of the same objects

Goal: forgebuild / direct <= 1.5 in time, for push and for pull (the verdict is
on the walls: `forgebuild cache ...` against a script doing the s3fs call; the
in-process ratio is printed too). MB = 10^6 bytes.

Part 2, --targets tiny `run` targets (default 100, a chain, each `printf` into
its own output), built once with --remote (write-through), then:

  status               `forgebuild status` in that workspace: local work only
  push, all there      `forgebuild cache push` when the remote has everything:
                       the time to find that N targets are already remote
  build --remote       `forgebuild --remote` in a fresh workspace: every target
                       decided, fetched and materialised, nothing run
  cache pull           `forgebuild cache pull` in a fresh workspace
  Remote.fetch x N     the N fetches in one child, one after another (as the
                       executor fetched before issue 16: in its scheduler
                       thread), timed inside it
  Remote.fetch x N, lane   the same N fetches, FETCHES at a time sharing one
                       pool of blob downloads (as the executor fetches now)
  floors               one HEAD round trip; the same objects (entries, blobs,
                       records) read one by one with s3fs cat_file, and in one
                       concurrent S3FileSystem().get call

Run: python benchmarks/bench_remote.py [--size-mb 1024] [--files 16] [--repeats 3]
     [--targets 100] [--shape chain|fan] [-j N] [--latency-ms MS] [--skip-large] [--skip-many]
--latency-ms delays every answer of the server (each in its own thread, as a
network round trip would): on loopback moto answers in ~1 ms, so without it
requests made at once gain little over requests made one after another.
About 2.5 minutes with the defaults, 1.5 minutes at --size-mb 128 (part 2 is
~45 s of either), on the reference machine (2 cores). It needs moto[server] and
s3fs (tests/test_remote.py uses them too), about 4x --size-mb of disk (two
workspaces, the direct download, moto's spooled objects) and RAM: this process
(moto) peaked at 3.3 GB with the defaults and 5.5 GB with --files 4 (256 MiB
objects, multipart uploads, which moto reassembles in memory); a child holds about
twice the bytes it has in flight (s3fs put of 16 x 64 MiB at once: 2.1 GB;
forgebuild's 8 threads: 1.1 GB). Peak RSS of the children is read with GNU time
when /usr/bin/time exists.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

from _common import ENV, FORGE, header, scratch_dir, summary_of, table, verdict

GOAL_RATIO = 1.5
BUCKET = "forge-bench"
TARGET = "run:artifact"

# The child that does one S3 operation and times it from the inside. Its first argument
# says what, the second is JSON. It prints one JSON object.
SIDE = r'''
import json, os, sys, time
op, arg = sys.argv[1], json.loads(sys.argv[2])
res = {}
if op in ("push_api", "fetch_api", "fetch_lane"):
    from forgebuild.store.remote import Remote
    from forgebuild.store.local import Store
    from forgebuild.hashing import file_digest
    local = Store(arg["store"])
    remote = Remote(arg["url"], require=True, workspace_dir=arg.get("workspace"))  # FORGE_SIGNING_KEY: the team's key
    t = time.perf_counter(); remote.store; res["setup"] = time.perf_counter() - t  # imports s3fs, resolves the URL
    t = time.perf_counter()
    if op == "push_api":
        res["bytes"] = sum(remote.push(k, local.get_action(k), local) for k in arg["keys"])
        res["seconds"] = time.perf_counter() - t
    elif op == "fetch_lane":  # as the executor fetches: FETCHES targets at once, one shared pool of blob downloads
        from concurrent.futures import ThreadPoolExecutor
        from forgebuild.engine.executor import FETCHES
        with ThreadPoolExecutor(FETCHES) as lane:
            got = list(lane.map(lambda k: remote.fetch(k, arg["mats"][k][0], local, arg["mats"][k][1]), arg["keys"]))
        res["seconds"] = time.perf_counter() - t
    else:
        got = [remote.fetch(k, arg["mats"][k][0], local, arg["mats"][k][1]) for k in arg["keys"]]
        res["seconds"] = time.perf_counter() - t
    if op != "push_api":
        res["fetched"] = sum(e is not None for e in got)
        digests = {f["digest"] for e in got if e for f in e["files"]}
        t = time.perf_counter()
        for d in digests:
            assert file_digest(local.blob_path(d)) == d
        res["rehash"] = time.perf_counter() - t
        res["bytes"] = sum(os.path.getsize(local.blob_path(d)) for d in digests)
else:
    import s3fs
    t = time.perf_counter(); fs = s3fs.S3FileSystem(); res["setup"] = time.perf_counter() - t
    t = time.perf_counter()
    if op == "mkbucket":
        fs.mkdir(arg["bucket"])
    elif op == "put":
        fs.put([a for a, _ in arg["pairs"]], [b for _, b in arg["pairs"]])
    elif op == "get":
        fs.get([a for a, _ in arg["pairs"]], [b for _, b in arg["pairs"]])
        res["bytes"] = sum(os.path.getsize(b) for _, b in arg["pairs"])
    elif op == "rm":
        if fs.exists(arg["prefix"]):
            fs.rm(arg["prefix"], recursive=True)
    elif op == "find":
        res["paths"] = fs.find(arg["prefix"])
    elif op == "cat_seq":
        res["bytes"] = sum(len(fs.cat_file(p)) for p in arg["paths"])
    elif op == "head_seq":
        times = []
        for p in arg["paths"]:
            s = time.perf_counter(); fs.info(p, refresh=True); times.append(time.perf_counter() - s)
        res["head_median"] = sorted(times)[len(times) // 2]
    res["seconds"] = time.perf_counter() - t
print(json.dumps(res))
'''


# ------------------------------------------------------------------ the S3 server

class RequestLog(logging.Handler):
    """Counts the requests moto's werkzeug server logs, by kind (none is printed)."""

    # 4xx lines are coloured, 206 (a ranged GET: a read through open()) twice: bold and magenta
    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) [^"]*" (\d+)')

    def __init__(self):
        super().__init__(logging.INFO)
        self.counts: Counter = Counter()

    def emit(self, record) -> None:
        m = self.LINE.search(record.getMessage())
        if m:
            method, path, code = m.groups()
            kind = "LIST" if method == "GET" and ("list-type" in path or "prefix=" in path) else method
            self.counts[kind] += 1
            if code == "404":
                self.counts["404"] += 1

    def take(self) -> Counter:
        counts, self.counts = self.counts, Counter()
        return counts


def team_key() -> str:
    """One signing key for every workspace of the run (FORGE_SIGNING_KEY, as a CI secret would be): each
    trusts its own key, so every pull verifies a signature, as between two workspaces that trust each other."""
    from forgebuild.store import signing

    folder = tempfile.mkdtemp(prefix="forge-bench-key-")
    os.environ.pop("FORGE_SIGNING_KEY", None)
    signing.load_or_make(folder)
    return signing.private_path(folder)


class Server:
    def __init__(self, latency_ms: float = 0.0):
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = RequestLog()
        werkzeug = logging.getLogger("werkzeug")
        werkzeug.setLevel(logging.INFO)
        werkzeug.propagate = False
        werkzeug.addHandler(self.log)  # werkzeug adds its own stderr handler only when there is none
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        if latency_ms:  # each request answered after this delay, in its own thread: a round trip to a real S3
            app = self.server._server.app
            self.server._server.app = lambda environ, respond: (time.sleep(latency_ms / 1000), app(environ, respond))[1]
        self.env = {**ENV, "OMP_NUM_THREADS": "1", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "FORGE_SIGNING_KEY": team_key(),
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        self.endpoint = self.env["AWS_ENDPOINT_URL"]

    def stop(self) -> None:
        self.server.stop()


# ------------------------------------------------------------------ children

class Child:
    """One finished child: wall seconds, its peak RSS, the server's CPU and requests meanwhile."""

    def __init__(self, wall, stdout, rss_mb, server_cpu, requests):
        self.wall, self.stdout, self.rss_mb, self.server_cpu, self.requests = wall, stdout, rss_mb, server_cpu, requests

    @property
    def data(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])


# The child's peak RSS, from GNU time (1 ms). Not os.wait4's ru_maxrss: Linux starts a child's
# high-water mark at its parent's RSS at exec, and this process (moto, holding the objects) is the
# largest one here (~570 MB after the 128 MB part), so every child would read as at least that.
GNU_TIME = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None


def run_child(argv, cwd: str, server: Server) -> Child:
    """Run a child to its end: wall seconds, peak RSS, the server's CPU and requests meanwhile."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss.name, *argv] if GNU_TIME else list(argv)
        server.log.take()
        cpu = time.process_time()  # this process = the moto server's threads (the main thread waits)
        start = time.perf_counter()
        proc = subprocess.run(wrapped, cwd=cwd, env=server.env, stdout=out, stderr=err)
        wall = time.perf_counter() - start
        server_cpu = time.process_time() - cpu
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        lines = rss.read().split()
        rss_mb = int(lines[-1]) / 1024 if GNU_TIME and lines and lines[-1].isdigit() else float("nan")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode} in {cwd}\n"
                           f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}")
    return Child(wall, stdout, rss_mb, server_cpu, server.log.take())


def side(server: Server, folder: str, op: str, **arg) -> Child:
    return run_child([sys.executable, os.path.join(folder, "side.py"), op, json.dumps(arg)], folder, server)


def forge(server: Server, cwd: str, *args: str) -> tuple[Child, dict]:
    child = run_child([*FORGE, *args, "--json"], cwd, server)
    return child, summary_of(child.stdout)


# ------------------------------------------------------------------ workspaces

def write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def workspace(folder: str, name: str, forgefile: str) -> str:
    root = os.path.join(folder, name)
    write(os.path.join(root, "Forgefile.toml"), forgefile)
    return root


def reset(root: str) -> None:
    """Remove a workspace's .forge (its artifacts are read-only folders)."""
    dot = os.path.join(root, ".forge")
    for dirpath, dirnames, _ in os.walk(dot):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    shutil.rmtree(dot, ignore_errors=True)


def materials(root: str) -> dict:
    """{key: [target, material]} of a workspace's last builds: what a fetch checks a statement against."""
    found = {}
    for path in glob.glob(os.path.join(root, ".forge", "state", "targets", "*", "*.json")):
        with open(path) as f:
            state = json.load(f)
        kind, name = path.split(os.sep)[-2], os.path.basename(path)[:-len(".json")]
        found[state["key"]] = [f"{kind}:{name}", state["material"]]
    return found


def action_keys(root: str) -> list[str]:
    entries = glob.glob(os.path.join(root, ".forge", "ac", "*", "*.json"))
    return sorted(os.path.basename(p)[:-len(".json")] for p in entries)


def artifact_forgefile(files: int, file_bytes: int) -> str:
    # head -c from /dev/urandom: incompressible, so neither side gains from compression anywhere
    return (f'[run.artifact]\ncmd = "for i in $(seq -w 1 {files}); do '
            f'head -c {file_bytes} /dev/urandom > {{out}}/part-$i.bin; done"\n')


def many_forgefile(n: int, shape: str) -> str:
    blocks = []
    for i in range(n):
        block = f'[run.t{i:04d}]\ncmd = "printf t{i:04d} > {{out}}/o"\n'
        if i:
            block += f'inputs = {{ up = "run:t{(i - 1) if shape == "chain" else 0:04d}" }}\n'
        blocks.append(block)
    return "\n".join(blocks)


# ------------------------------------------------------------------ reporting helpers

def med(values) -> float:
    return statistics.median(values)


def requests_text(counts: Counter) -> str:
    kinds = ("HEAD", "GET", "LIST", "PUT", "POST", "DELETE", "404")
    return " ".join(f"{k}:{counts[k]}" for k in kinds if counts.get(k)) or "-"


def request_total(counts: Counter) -> int:
    return sum(v for k, v in counts.items() if k != "404")


def mbs(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 1e6 / seconds:.0f}"


# ------------------------------------------------------------------ part 1: one large artifact

def large(server: Server, folder: str, size_mb: int, files: int, repeats: int) -> dict:
    file_bytes = size_mb * 2**20 // files
    total = file_bytes * files
    forgefile = artifact_forgefile(files, file_bytes)
    a = workspace(folder, "large-a", forgefile)
    b = workspace(folder, "large-b", forgefile)
    child, summary = forge(server, a)
    if [t.get("action") for t in summary["targets"]] != ["built"]:
        raise RuntimeError(f"artifact build: {summary}")
    print(f"  artifact: {files} x {file_bytes / 2**20:.0f} MiB = {total / 1e6:.0f} MB, built locally in "
          f"{child.wall:.1f} s", flush=True)
    (key,) = action_keys(a)
    with open(glob.glob(os.path.join(a, ".forge", "ac", "*", f"{key}.json"))[0]) as f:
        entry = json.load(f)
    blobs = sorted({f["digest"] for f in entry["files"]})
    store_a = os.path.join(a, ".forge")
    local_blob = lambda root, d: os.path.join(root, "cas", d[:2], d)  # noqa: E731
    remote_blob = lambda prefix, d: f"{BUCKET}/{prefix}/cas/{d[:2]}/{d}"  # noqa: E731

    push = {"cli": [], "api": [], "direct": [], "script": []}
    for r in range(repeats):
        order = ["forge", "direct"] if r % 2 == 0 else ["direct", "forge"]
        for who in order:
            if who == "forge":
                prefix = f"push-cli-{r}"
                child, summary = forge(server, a, "cache", "push", "--remote", f"s3://{BUCKET}/{prefix}")
                if not total <= summary.get("bytes", 0) < total + 2**20:  # + the provenance statement (a blob too)
                    raise RuntimeError(f"cache push sent {summary.get('bytes')} bytes for {total}")
                push["cli"].append(child)
                side(server, folder, "rm", prefix=f"{BUCKET}/{prefix}")
                prefix = f"push-api-{r}"
                child = side(server, folder, "push_api", store=store_a, url=f"s3://{BUCKET}/{prefix}", keys=[key])
                push["api"].append(child)
                side(server, folder, "rm", prefix=f"{BUCKET}/{prefix}")
            else:
                prefix = f"push-direct-{r}"
                pairs = [[local_blob(store_a, d), remote_blob(prefix, d)] for d in blobs]
                child = side(server, folder, "put", pairs=pairs)
                push["direct"].append(child)
                side(server, folder, "rm", prefix=f"{BUCKET}/{prefix}")
        print(f"  push round {r + 1}: forgebuild {push['cli'][-1].wall:.2f} s, Remote.push "
              f"{push['api'][-1].data['seconds']:.2f} s, s3fs put {push['direct'][-1].data['seconds']:.2f} s "
              f"(script {push['direct'][-1].wall:.2f} s)", flush=True)

    # The remote every pull reads from: one push, not timed.
    forge(server, a, "cache", "push", "--remote", f"s3://{BUCKET}/pull")
    pull = {"cli": [], "api": [], "direct": []}
    down = os.path.join(folder, "large-direct")
    api_store = os.path.join(folder, "large-api-store")
    for r in range(repeats):
        order = ["forge", "direct"] if r % 2 == 0 else ["direct", "forge"]
        for who in order:
            if who == "forge":
                reset(b)
                child, summary = forge(server, b, "cache", "pull", "--remote", f"s3://{BUCKET}/pull")
                if summary.get("pulled") != 1:
                    raise RuntimeError(f"cache pull: {summary}")
                pull["cli"].append(child)
                reset(b)
                shutil.rmtree(api_store, ignore_errors=True)
                os.makedirs(api_store)
                child = side(server, folder, "fetch_api", store=api_store, url=f"s3://{BUCKET}/pull", keys=[key],
                             mats=materials(a))
                if child.data["fetched"] != 1 or child.data["bytes"] != total:
                    raise RuntimeError(f"Remote.fetch: {child.data}")
                pull["api"].append(child)
                shutil.rmtree(api_store, ignore_errors=True)
            else:
                shutil.rmtree(down, ignore_errors=True)
                os.makedirs(down)
                pairs = [[remote_blob("pull", d), os.path.join(down, d)] for d in blobs]
                child = side(server, folder, "get", pairs=pairs)
                if child.data["bytes"] != total:
                    raise RuntimeError(f"s3fs get: {child.data}")
                pull["direct"].append(child)
                shutil.rmtree(down, ignore_errors=True)
        print(f"  pull round {r + 1}: forgebuild {pull['cli'][-1].wall:.2f} s, Remote.fetch "
              f"{pull['api'][-1].data['seconds']:.2f} s, s3fs get {pull['direct'][-1].data['seconds']:.2f} s "
              f"(script {pull['direct'][-1].wall:.2f} s)", flush=True)
    side(server, folder, "rm", prefix=f"{BUCKET}/pull")
    return {"total": total, "files": files, "file_bytes": file_bytes, "push": push, "pull": pull}


def print_large(res: dict) -> None:
    total = res["total"]
    print()
    print(f"One artifact of {res['files']} x {res['file_bytes'] / 2**20:.0f} MiB = {total / 1e6:.0f} MB "
          f"(median of {len(res['push']['cli'])}; MB/s = 10^6 bytes/s)")
    rows = []

    def row(what, who, children, inner: bool):
        times = [c.data["seconds"] if inner else c.wall for c in children]
        m = med(times)
        rows.append([what, who, f"{m:.2f}", f"{min(times):.2f}-{max(times):.2f}", mbs(total, m),
                     f"{med(c.server_cpu for c in children):.1f}", f"{max(c.rss_mb for c in children):.0f}",
                     requests_text(children[0].requests)])
        return m

    p = res["push"]
    push_cli = row("push", "forgebuild cache push (wall)", p["cli"], False)
    push_api = row("push", "Remote.push (in-process)", p["api"], True)
    push_dir = row("push", "s3fs put (in-process)", p["direct"], True)
    push_scr = row("push", "s3fs put script (wall)", p["direct"], False)
    q = res["pull"]
    pull_cli = row("pull", "forgebuild cache pull (wall)", q["cli"], False)
    pull_api = row("pull", "Remote.fetch (in-process)", q["api"], True)
    pull_dir = row("pull", "s3fs get (in-process)", q["direct"], True)
    pull_scr = row("pull", "s3fs get script (wall)", q["direct"], False)
    print(table(rows, ["", "side", "median s", "range s", "MB/s", "moto CPU s", "peak RSS MB", "requests (1st round)"]))
    print()
    for what, cli, script, api, direct, api_children in (
            ("push", push_cli, push_scr, push_api, push_dir, p["api"]),
            ("pull", pull_cli, pull_scr, pull_api, pull_dir, q["api"])):
        api_wall = med(c.wall for c in api_children)
        print(f"{what}: forgebuild / s3fs script (walls) = {cli / script:.2f}x -> {verdict(cli / script, GOAL_RATIO)} "
              f"(goal <= {GOAL_RATIO}x);  in-process {api / direct:.2f}x -> {verdict(api / direct, GOAL_RATIO)}")
        print(f"      CLI wall - Remote.{'push' if what == 'push' else 'fetch'} = {cli - api:.2f} s, of which "
              f"{cli - api_wall:.2f} s is the CLI's own (its wall - the Remote child's wall {api_wall:.2f} s)")
    setup = med(c.data["setup"] for c in p["api"] + q["api"])
    rehash = med(c.data["rehash"] for c in q["api"])
    print(f"Remote's first use (import s3fs, resolve the URL): {setup:.2f} s;  "
          f"verification re-hash of {total / 1e6:.0f} MB (page cache, one thread): {rehash:.2f} s "
          f"= {rehash / pull_api * 100:.0f}% of Remote.fetch ({total / 1e9 / rehash:.1f} GB/s)")


# ------------------------------------------------------------------ part 2: many small targets

def many(server: Server, folder: str, n: int, shape: str, repeats: int, jobs: list[str]) -> dict:
    forgefile = many_forgefile(n, shape)
    url = f"s3://{BUCKET}/many"
    local = workspace(folder, "many-local", forgefile)
    c = workspace(folder, "many-c", forgefile)
    d = workspace(folder, "many-d", forgefile)
    e = workspace(folder, "many-e", forgefile)
    res: dict = {"n": n}

    def expect(summary, action, reason=None):
        got = Counter(t.get("action") for t in summary["targets"])
        if got != {action: n}:
            raise RuntimeError(f"expected {n} {action}, got {dict(got)}")
        if reason and not all(t.get("reason", "").startswith(reason) for t in summary["targets"]):
            raise RuntimeError(f"expected every reason to start with {reason!r}")

    child, summary = forge(server, local, *jobs)
    expect(summary, "built")
    res["local build"] = [child]
    child, summary = forge(server, c, "--remote", url, *jobs)
    expect(summary, "built")
    res["build + write-through"] = [child]
    print(f"  {n} targets ({shape}): local first build {res['local build'][0].wall:.2f} s, "
          f"with --remote (write-through) {child.wall:.2f} s", flush=True)

    res["status"], res["push, all there"], res["build --remote"], res["cache pull"], res["fetch"] = [], [], [], [], []
    res["fetch lane"] = []
    for r in range(repeats):
        child, summary = forge(server, c, "status")
        res["status"].append(child)
        child, summary = forge(server, c, "cache", "push", "--remote", url)
        if summary.get("bytes") != 0 or summary.get("pushed") != n:
            raise RuntimeError(f"push with everything remote: {summary}")
        res["push, all there"].append(child)
        reset(d)
        child, summary = forge(server, d, "--remote", url, *jobs)
        expect(summary, "cached", f"fetched from {url}")
        res["build --remote"].append(child)
        reset(e)
        child, summary = forge(server, e, "cache", "pull", "--remote", url)
        if summary.get("pulled") != n:
            raise RuntimeError(f"cache pull: {summary}")
        res["cache pull"].append(child)
        store = os.path.join(folder, "many-api-store")
        shutil.rmtree(store, ignore_errors=True)
        os.makedirs(store)
        child = side(server, folder, "fetch_api", store=store, url=url, keys=action_keys(c), mats=materials(c))
        if child.data["fetched"] != n:
            raise RuntimeError(f"Remote.fetch: {child.data}")
        res["fetch"].append(child)
        shutil.rmtree(store)
        os.makedirs(store)
        child = side(server, folder, "fetch_lane", store=store, url=url, keys=action_keys(c), mats=materials(c))
        if child.data["fetched"] != n:
            raise RuntimeError(f"Remote.fetch, lane: {child.data}")
        res["fetch lane"].append(child)
        print(f"  round {r + 1}: status {res['status'][-1].wall:.2f} s, push (all there) "
              f"{res['push, all there'][-1].wall:.2f} s, build --remote {res['build --remote'][-1].wall:.2f} s, "
              f"cache pull {res['cache pull'][-1].wall:.2f} s, Remote.fetch x{n} {child.data['seconds']:.2f} s",
              flush=True)
    _, summary = forge(server, d)
    expect(summary, "cached", "up to date")  # the fetched workspace is a normal one now

    paths = side(server, folder, "find", prefix=f"{BUCKET}/many").data["paths"]
    res["objects"] = len(paths)
    res["head"] = [side(server, folder, "head_seq", paths=paths[:50]) for _ in range(repeats)]
    res["cat_seq"] = [side(server, folder, "cat_seq", paths=paths) for _ in range(repeats)]
    down = os.path.join(folder, "many-direct")
    res["get_all"] = []
    for _ in range(repeats):
        shutil.rmtree(down, ignore_errors=True)
        os.makedirs(down)
        pairs = [[p, os.path.join(down, f"{i:05d}")] for i, p in enumerate(paths)]
        res["get_all"].append(side(server, folder, "get", pairs=pairs))
    shutil.rmtree(down, ignore_errors=True)
    side(server, folder, "rm", prefix=f"{BUCKET}/many")
    return res


def print_many(res: dict, shape: str) -> None:
    n = res["n"]
    print()
    print(f"{n} tiny targets ({shape}) already on the remote ({res['objects']} objects: entries, blobs, records); "
          f"median of {len(res['status'])}")
    rows = []
    for label, key, inner in (("local first build, no remote (1 run)", "local build", False),
                              ("first build with --remote: write-through (1 run)", "build + write-through", False),
                              ("status (local decide only)", "status", False),
                              ("cache push, everything already remote", "push, all there", False),
                              ("fresh workspace: build --remote (fetch all)", "build --remote", False),
                              ("fresh workspace: cache pull", "cache pull", False),
                              (f"Remote.fetch x{n}, one at a time (in-process)", "fetch", True),
                              (f"Remote.fetch x{n}, 8 at a time, one blob pool (in-process)", "fetch lane", True)):
        children = res[key]
        m = med(c.data["seconds"] if inner else c.wall for c in children)
        reqs = children[0].requests
        rows.append([label, f"{m:.2f}", f"{m / n * 1000:.1f}", f"{request_total(reqs) / n:.1f}",
                     f"{med(c.server_cpu for c in children):.2f}", requests_text(reqs)])
    head = med(c.data["head_median"] for c in res["head"]) * 1000
    cat = med(c.data["seconds"] for c in res["cat_seq"])
    get_all = med(c.data["seconds"] for c in res["get_all"])
    objects = res["objects"]
    rows.append(["floor: 1 HEAD round trip (s3fs info)", f"{head / 1000:.4f}", "-", "1", "-", "-"])
    rows.append([f"floor: {objects} objects, s3fs cat_file one by one", f"{cat:.2f}", f"{cat / n * 1000:.1f}",
                 f"{objects / n:.1f}", f"{med(c.server_cpu for c in res['cat_seq']):.2f}",
                 requests_text(res["cat_seq"][0].requests)])
    rows.append([f"floor: {objects} objects, one s3fs get call", f"{get_all:.2f}", f"{get_all / n * 1000:.1f}",
                 "-", f"{med(c.server_cpu for c in res['get_all']):.2f}", requests_text(res["get_all"][0].requests)])
    print(table(rows, ["figure", "median s", "per target ms", "requests/target", "moto CPU s", "requests (1st run)"]))
    status = med(c.wall for c in res["status"])
    push = med(c.wall for c in res["push, all there"])
    one_by_one = med(c.data["seconds"] for c in res["fetch"])
    lane = med(c.data["seconds"] for c in res["fetch lane"])
    print(f"fetching {n} targets: one at a time {one_by_one:.2f} s, in the executor's lane {lane:.2f} s "
          f"({one_by_one / lane:.1f}x)")
    print(f"finding that {n} targets are already remote (cache push - status): {push - status:.2f} s, "
          f"{(push - status) / n * 1000:.1f} ms per target")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="the artifact's size in MiB (default 1024)")
    ap.add_argument("--files", type=int, default=16, help="files in the artifact (default 16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--shape", choices=("chain", "fan"), default="chain")
    ap.add_argument("-j", "--jobs", type=int, default=None, help="pass -j to the builds of part 2")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="delay every request by this much (moto answers on loopback in ~1 ms; S3 in 10-30)")
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--skip-many", action="store_true")
    args = ap.parse_args()
    jobs = ["-j", str(args.jobs)] if args.jobs else []
    os.environ["OMP_NUM_THREADS"] = "1"
    header("bench_remote: the shared remote cache against s3fs on moto's S3 server")
    with scratch_dir("forge-bench-remote-") as folder:
        write(os.path.join(folder, "side.py"), SIDE)
        server = Server(args.latency_ms)
        try:
            import moto
            import s3fs

            print(f"server:     moto {moto.__version__} ThreadedMotoServer at {server.endpoint} (in this process); "
                  f"s3fs {s3fs.__version__}; load average {os.getloadavg()[0]:.2f}; "
                  f"{args.latency_ms:g} ms added to each request")
            side(server, folder, "mkbucket", bucket=BUCKET)
            large_res = None if args.skip_large else large(server, folder, args.size_mb, args.files, args.repeats)
            many_res = None if args.skip_many else many(server, folder, args.targets, args.shape, args.repeats, jobs)
        finally:
            server.stop()
        if large_res:
            print_large(large_res)
        if many_res:
            print_many(many_res, args.shape)
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nthis process (moto's server) peak RSS: {self_rss:.0f} MB;  load average at the end "
              f"{os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
