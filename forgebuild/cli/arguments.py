"""The command line's arguments: the verbs, their flags, and `build` as the verb when none is given."""
from __future__ import annotations

import argparse

from forgebuild import __version__

VERBS = ("build", "status", "explain", "graph", "path", "show", "log", "clean", "gc", "schema", "lock", "verify",
         "diff", "cache", "join", "keys", "init", "exp", "metrics", "mcp", "worker")
TAKES_VALUE = {"-f", "--file", "-j", "--jobs", "--format", "--limit", "--grace", "--remote", "--lock", "--executor",
               "--node-rank", "--wait", "--worker-files", "--workers"}


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgebuild", description="make for language models")
    parser.add_argument("--version", action="version", version=f"forgebuild {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    common = _common_flags()

    def verb(name: str, help: str, targets: str | None = None) -> argparse.ArgumentParser:
        """A verb with the common flags and, when `targets` (its nargs), TARGET arguments."""
        found = sub.add_parser(name, parents=[common], help=help)
        if targets:
            found.add_argument("targets", nargs=targets, metavar="TARGET")
        return found

    _build_flags(verb("build", "build targets (the default verb)", "*"))
    verb("status", "every target: fresh / stale / missing, and why", "*")
    verb("explain", "why a target would rebuild", "+")
    g = verb("graph", "the target graph", "*")
    g.add_argument("--format", choices=("text", "dot", "mermaid"), default="text")
    g.add_argument("--states", action="store_true", help="mark each target fresh / stale / missing")
    verb("path", "where a target's artifact is", "+")
    verb("show", "a target's build record (provenance)", "+")
    verb("log", "build history", "*").add_argument("--limit", type=int, default=50,
                                                   help="at most this many entries (default 50)")
    verb("clean", "remove materialised outputs and scratch; keep the cache").add_argument(
        "--cache", action="store_true", help="also empty the local cache")
    gc = verb("gc", "drop cache entries no current target uses")
    gc.add_argument("-n", "--dry-run", action="store_true", help="say what would be removed")
    gc.add_argument("--grace", type=float, default=3600.0,
                    help="keep objects written less than this many seconds ago (default 3600): they may belong to a running build")
    verb("schema", "JSON Schema of the Forgefile")
    ini = verb("init", "write a preset's Forgefile (and its scripts) into a folder")
    ini.add_argument("preset", nargs="?", metavar="PRESET", help="which preset (default: learn); see --list")
    ini.add_argument("dir", nargs="?", metavar="DIR", help="where to write it (default: the current folder)")
    ini.add_argument("--list", action="store_true", help="print each preset's name and what it is")
    verb("lock", "write Forgefile.lock: every target's key, digest, toolchain", "*").add_argument(
        "--lock", default=None, metavar="FILE", help="where (default: Forgefile.lock beside the Forgefile)")
    verb("verify", "re-hash the cache, or rebuild and compare digests", "*").add_argument(
        "--rebuild", action="store_true", help="rebuild the closure ignoring caches and compare digests")
    df = verb("diff", "what differs between two builds, and why")
    df.add_argument("a", metavar="A", help="a build record id, TARGET@N (from `log`), or a lock file")
    df.add_argument("b", metavar="B", help="the same, for the other side")
    df.add_argument("--format", choices=("text", "markdown"), default="text")
    ca = verb("cache", "the shared remote cache: push or pull targets")
    ca.add_argument("action", choices=("push", "pull"))
    ca.add_argument("targets", nargs="*", metavar="TARGET")
    verb("keys", "make (once) and show this workspace's signing key for the remote")
    verb("exp", "the cells of a sweep or search: params, metrics with intervals, status, time", "*")
    mt = verb("metrics", "compare the metrics of two builds or lock files")
    mt.add_argument("action", choices=("diff",))
    mt.add_argument("a", metavar="A", help="a build record id, TARGET@N (from `log`), or a lock file")
    mt.add_argument("b", metavar="B", help="the same, for the other side")
    mt.add_argument("--format", choices=("text", "markdown"), default="text")
    verb("worker", "the warm workers of this project: list them (status) or stop them (stop)").add_argument(
        "action", choices=("status", "stop"))
    verb("mcp", "serve the verbs to agents: a Model Context Protocol server on stdio")
    _join_flags(verb("join", "on another node: take part in the multi-node stages of a build", "*"))
    return parser


def _common_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-f", "--file", default=None, help="the Forgefile (default: ./Forgefile.toml)")
    common.add_argument("--json", action="store_true", help="JSON Lines on stdout, a summary object last")
    common.add_argument("-v", "--verbose", action="store_true", help="say more")
    common.add_argument("-q", "--quiet", action="store_true", help="only failures and the summary")
    common.add_argument("--remote", default=None, metavar="URL",
                        help="a shared cache (fsspec URL); also FORGE_REMOTE or [forge] remote")
    common.add_argument("--no-push", action="store_true", help="read from the remote, never write to it")
    common.add_argument("--require-remote", action="store_true",
                        help="fail (exit 2) instead of going on locally when the remote cannot be reached")
    return common


def _build_flags(b: argparse.ArgumentParser) -> None:
    b.add_argument("-j", "--jobs", type=int, default=None, help="stages to run in parallel")
    b.add_argument("-n", "--dry-run", action="store_true", help="say what would be built, build nothing")
    b.add_argument("-k", "--keep-going", action="store_true", help="after a failure, go on with independent targets")
    b.add_argument("-B", "--force", action="store_true", help="rebuild the targets and their dependencies")
    b.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="where stages run: here, as Ray tasks (RAY_ADDRESS or a local cluster), or as Slurm jobs "
                        "(submitit)")
    b.add_argument("--worker-files", choices=("shared", "remote"), default=None,
                   help="how Ray workers see the project: through a shared filesystem (shared, the default), or as "
                        "their own copy, exchanging artifacts through the remote cache (remote); also [forge] "
                        "worker_files")
    b.add_argument("--workers", choices=("cold", "run", "resident"), default=None,
                   help="how local stages' processes start: a fresh interpreter each (cold), forked from a warm worker "
                        "that imported the ML stack once for this run (run, the default) or one that outlives it "
                        "(resident); also [forge] workers")
    b.add_argument("--frozen", action="store_true",
                   help="fail (exit 1) when any target's key differs from Forgefile.lock, naming what changed")
    b.add_argument("--lock", default=None, metavar="FILE", help="the lock file (default: Forgefile.lock beside the Forgefile)")


def _join_flags(jn: argparse.ArgumentParser) -> None:
    jn.add_argument("--node-rank", type=int, default=None,
                    help="this node's rank (default: NODE_RANK or SLURM_NODEID); rank 0 builds")
    jn.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                    help="give up after waiting this long for a stage to join (default: wait for node 0)")
    jn.add_argument("-k", "--keep-going", action="store_true", help="after a failed stage, wait for the next")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`forgebuild [flags] [TARGET...]` means `forgebuild build ...`: insert the verb if absent."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in TAKES_VALUE:
            i += 2
            continue
        if token.startswith("-"):
            if token in ("-h", "--help", "--version"):
                break
            i += 1
            continue
        # the verb goes first, so `forgebuild -f F status` works like `forgebuild status -f F`
        argv = [token, *argv[:i], *argv[i + 1:]] if token in VERBS else ["build", *argv]
        break
    else:
        argv = ["build", *argv]
    args = argument_parser().parse_args(argv)
    if args.verb is None:
        args = argument_parser().parse_args(["build", *argv])
    return args
