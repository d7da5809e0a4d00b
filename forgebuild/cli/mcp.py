"""`forgebuild mcp`: the verbs as Model Context Protocol tools, served to an agent on stdio.

Each tool runs the real command line, `python -m forgebuild VERB --json -f FORGEFILE ...`, as a child
process (an argv list, never a shell string) and returns its JSON Lines as one object. A child, not a
call in this process: a build imports torch, may run for an hour, may crash, and a cancelled call must
stop it; the server outlives all of that. Cancelling a call kills its child, and the child's stages die
with it (engine/launcher sets their death signal). A Forgefile that does not load is each tool's error,
not the server's: the server starts without loading it.

A build reports progress as MCP notifications, one per event of the build (see `Progress`).
"""
from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, Field

from forgebuild.errors import UsageError

try:  # the SDK is an extra: without it, `forgebuild mcp` says how to install it (exit 2), not a traceback
    import anyio
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError as e:
    from forgebuild.engine.preflight import install_command

    raise UsageError(f"not installed: {e.name} (for forgebuild mcp); run: {install_command(['agents'])}") from None


def _not_an_option(word: str) -> str:
    if word.startswith("-"):
        raise ValueError(f"{word!r} starts with '-': a target, record id or lock file never does")
    return word


Word = Annotated[str, Field(min_length=1), AfterValidator(_not_an_option)]


@dataclass(frozen=True)
class Arg:
    """One argument of a tool and how it goes on the verb's command line."""

    name: str
    type: Any
    default: Any = inspect.Parameter.empty  # empty: required
    flag: str | None = None  # None: positional words (targets, A and B)
    help: str = ""


ADDRESSES = "target addresses: KIND:NAME, a matrix cell KIND:NAME[k=v,...], or a bare NAME"
TARGETS = Arg("targets", list[Word], [], help=f"{ADDRESSES}; none: every target ([forge] default for build)")
SOME_TARGETS = Arg("targets", Annotated[list[Word], Field(min_length=1)], help=ADDRESSES)
SEARCH = Arg("target", Word, help="a search target's address")
SIDE = "a build record id, TARGET@N (N-th last build, from `log`), or a lock file"
A, B = Arg("a", Word, help=SIDE), Arg("b", Word, help=f"the other side: {SIDE}")
KEEP_GOING = Arg("keep_going", bool, False, "--keep-going", "after a failure, go on with independent targets")
JOBS = Arg("jobs", Annotated[int, Field(ge=1)] | None, None, "--jobs", "stages to run in parallel")
FORCE = Arg("force", bool, False, "--force", "rebuild the targets and their dependencies, ignoring the cache")
DRY_RUN = Arg("dry_run", bool, False, "--dry-run", "say what would be built; build nothing")
LIMIT = Arg("limit", Annotated[int, Field(ge=1)], 50, "--limit", "at most this many entries, the newest")
STATES = Arg("states", bool, False, "--states", "decide each target's state: fresh, stale or missing")
FORMAT = Arg("format", Literal["text", "dot", "mermaid"], "text", "--format", "the drawing in the result's text")


class Verb(NamedTuple):
    words: tuple[str, ...]  # the verb on the command line
    args: tuple[Arg, ...]
    description: str


# tool -> the verb it runs: adding a verb is one line (the result is always the verb's --json events)
TOOLS = {
    "build": Verb(("build",), (TARGETS, KEEP_GOING, JOBS, FORCE, DRY_RUN),
                  "Bring targets up to date (each is built, or reused from the cache). Reports progress. "
                  "summary.targets: one per target of the closure, with action built/cached/failed/skipped; "
                  "a failed event has the log's tail."),
    "status": Verb(("status",), (TARGETS,), "Each target of the closure: fresh, stale or missing, and why."),
    "explain": Verb(("explain",), (SOME_TARGETS,), "Why targets would rebuild: every reason, down the closure."),
    "show": Verb(("show",), (SOME_TARGETS,), "The build record (provenance, metrics) of each target's last build."),
    "path": Verb(("path",), (SOME_TARGETS,), "summary.paths: the artifact folder of each fresh target."),
    "diff": Verb(("diff",), (A, B), "What differs between two builds, and why, down the dependency closure."),
    "metrics_diff": Verb(("metrics", "diff"), (A, B), "The metrics of two builds or lock files, side by side."),
    "log": Verb(("log",), (TARGETS, LIMIT), "Build history, oldest first."),
    "graph": Verb(("graph",), (TARGETS, STATES, FORMAT), "The dependency graph: nodes, edges and a drawing."),
    "exp": Verb(("exp",), (TARGETS,), "The cells of sweeps and searches: params, metrics, status, time."),
    "search_history": Verb(("exp",), (SEARCH,), "A search's trials: the params of each, who proposed it and why, "
                           "the objective's value with its interval, its status, and the best; to propose from."),
}
SCHEMA = "The JSON Schema of the Forgefile: every key of [forge] and of every installed rule."


@dataclass
class Project:
    """The Forgefile the tools work on, and the flags every verb gets."""

    forgefile: str
    flags: list[str]

    def argv(self, words) -> list[str]:
        return [sys.executable, "-m", "forgebuild", *words]

    @property
    def cwd(self) -> str | None:  # the agent's relative paths (a lock file to diff) are the project's
        folder = os.path.dirname(self.forgefile)
        return folder if os.path.isdir(folder) else None

    async def run(self, words: list[str], progress: Progress | None = None) -> dict:
        """The verb's result: its events, its summary, its exit code; its error event as a tool error."""
        events: list[dict] = []
        stray: list[str] = []  # a line that is no event (a library printing on stdout) must not end a build
        with tempfile.TemporaryFile() as err:
            async with await anyio.open_process(self.argv([*words, "--json", "-f", self.forgefile, *self.flags]),
                                                stdin=subprocess.DEVNULL, stderr=err, cwd=self.cwd) as child:
                pending = b""
                async for chunk in child.stdout:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        event = event_of(line)
                        if event is None:
                            stray.append(line.decode(errors="replace"))
                            continue
                        events.append(event)
                        if progress:
                            await progress.tell(event)
                code = await child.wait()
            err.seek(0)
            messages = [*stray, *err.read().decode(errors="replace").splitlines()]
        return result(words, code, events, [m for m in messages if m.strip()])

    async def schema(self) -> str:
        done = await anyio.run_process(self.argv(["schema"]), check=False)
        if done.returncode:
            raise ToolError(f"forgebuild schema exited {done.returncode}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()


def event_of(line: bytes) -> dict | None:
    try:
        found = json.loads(line)
    except ValueError:
        return None
    return found if isinstance(found, dict) and "event" in found else None


def result(words, code: int, events: list[dict], messages: list[str]) -> dict:
    errors = [e for e in events if e["event"] == "error"]
    if errors:
        raise ToolError(errors[0]["message"])
    if not events or events[-1]["event"] != "summary":  # a crash or a usage error: no JSON came
        tail = "\n".join(messages[-20:])
        raise ToolError(f"forgebuild {' '.join(words)} exited {code} without a result:\n{tail}")
    summary = events.pop()
    found = {"ok": code == 0 and summary["ok"], "exit_code": code, "events": events, "summary": summary}
    return {**found, "messages": messages} if messages else found  # `path` says there why a target has none


class Progress:
    """A build's events as MCP progress: `progress` counts the settled stages, `total` the stages planned (the
    closure, from a dry run, and what a search adds to it as it proposes trials), and while r stages run,
    progress has r/(r+1) more, so that a start moves it on too: MCP asks every notification to raise it (a
    stage settling adds 1 and ends at most one running, which takes less than 1 away)."""

    SETTLED = ("built", "cached", "failed", "skipped")

    def __init__(self, ctx: Context, planned: list[str]):
        self.ctx, self.stages, self.settled, self.running, self.sent = ctx, set(planned), set(), set(), 0.0

    async def tell(self, event: dict) -> None:
        kind, target = event["event"], event.get("target", "")
        if kind == "start":
            self.running.add(target)
            message = f"build {target} ({event['reason']})"
        elif kind in self.SETTLED:
            self.settled.add(target)
            self.running.discard(target)
            message = f"{kind} {target}" + (f": {event['reason']}" if kind in ("failed", "skipped") else "")
        elif kind == "summary":  # a no-op build settles everything at once
            self.settled |= self.stages
            message = "up to date"
        else:
            return
        self.stages |= self.settled | self.running
        running = len(self.running)
        progress = len(self.settled) + running / (running + 1)
        if progress > self.sent:  # not so when a search's trial, built, is read from the cache again
            self.sent = progress
            await self.ctx.report_progress(progress, len(self.stages), message)


def tool_function(project: Project, name: str, verb: Verb):
    """An async function whose signature is the verb's arguments: the SDK reads it (pydantic) for the
    tool's input schema and validates each call's arguments against it."""

    async def call(ctx: Context, **values) -> dict[str, Any]:
        words = [*verb.words, *command_words(verb.args, values)]
        if verb.words != ("build",) or values["dry_run"]:
            return await project.run(words)
        planned = await project.run([*words, "--dry-run"])  # how many stages: the progress's total
        return await project.run(words, Progress(ctx, [t["target"] for t in planned["summary"]["targets"]]))

    parameters = [inspect.Parameter(a.name, inspect.Parameter.KEYWORD_ONLY, default=a.default,
                                    annotation=Annotated[a.type, Field(description=a.help)]) for a in verb.args]
    parameters.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    call.__signature__ = inspect.Signature(parameters, return_annotation=dict[str, Any])
    call.__annotations__ = {"ctx": Context, "return": dict[str, Any]}  # how the SDK finds where the context goes
    call.__name__ = name
    return call


def command_words(args: tuple[Arg, ...], values: dict) -> list[str]:
    words: list[str] = []
    for arg in args:
        value = values[arg.name]
        if arg.flag is None:
            words += value if isinstance(value, list) else [value]
        elif value is True:
            words.append(arg.flag)
        elif value is not None and value is not False:
            words += [arg.flag, str(value)]
    return words


def make_server(project: Project) -> MCPServer:
    server = MCPServer("forgebuild", log_level="WARNING", instructions=(
        f"forgebuild builds the targets of {project.forgefile}. Each tool runs one of its verbs and returns the "
        "verb's JSON events: ok, exit_code, events and the summary. Read exp or search_history, propose params, "
        "build, then read show or the eval report."))
    for name, verb in TOOLS.items():
        server.add_tool(tool_function(project, name, verb), name=name, description=verb.description)

    async def schema() -> dict[str, Any]:
        return json.loads(await project.schema())

    server.add_tool(schema, name="schema", description=SCHEMA)
    server.resource("forgebuild://schema", name="forgefile-schema", description=SCHEMA,
                    mime_type="application/json")(project.schema)
    return server


def cmd_mcp(args, session, report) -> int:
    flags = [*(["--remote", args.remote] if args.remote else []), *(["--no-push"] if args.no_push else []),
             *(["--require-remote"] if args.require_remote else [])]
    # a host stops its server with SIGTERM (the SDK's client, 2 s after closing stdin): as Ctrl-C does, it
    # cancels the calls in flight, which kills their builds; the default would leave them running
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    make_server(Project(os.path.abspath(args.file or "Forgefile.toml"), flags)).run("stdio")
    return 0
