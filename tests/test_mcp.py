"""`forgebuild mcp`, driven by the MCP SDK's own client over stdio, the way an agent's host starts it."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time

import anyio
from conftest import ENV, RAN_IN
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

PIPELINE = """
[run.words]
cmd = "echo hello big world > {out}/words.txt"

[run.count]
cmd = "wc -w < {in.words}/words.txt | tr -d ' ' > {out}/count.txt"
inputs = { words = "run:words" }

[run.cell]
cmd = ["python3", "-c", "import sys; open(sys.argv[1] + '/n.txt', 'w').write(sys.argv[2])", "{out}", "{params.n}"]
params = { n = 0 }
matrix = { "params.n" = [1, 2] }
"""
TOOLS = {"build", "status", "explain", "show", "path", "diff", "metrics_diff", "log", "graph", "exp",
         "search_history", "schema"}


@contextlib.asynccontextmanager
async def serve(root: str):
    """A session with `python -m forgebuild mcp -f ROOT/Forgefile.toml`, started from another folder."""
    RAN_IN.append(root)  # the store its builds wrote is checked at the test's teardown
    server = StdioServerParameters(command=sys.executable, env=ENV, cwd=os.path.dirname(root),
                                   args=["-m", "forgebuild", "mcp", "-f", os.path.join(root, "Forgefile.toml")])
    with open(os.devnull, "w") as quiet:
        async with stdio_client(server, errlog=quiet) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session


def call(session: ClientSession, tool: str, **arguments):
    return session.call_tool(tool, arguments)


def test_an_agent_lists_the_tools_builds_and_reads_what_it_built(project):
    project.forgefile(PIPELINE)

    async def agent():
        async with serve(project.root) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert set(tools) == TOOLS
            assert all(t.input_schema["type"] == "object" and t.description for t in tools.values())
            assert tools["build"].input_schema["properties"]["jobs"]["anyOf"][0] == {"minimum": 1, "type": "integer"}

            status = (await call(session, "status", targets=["run:count"])).structured_content
            assert status["ok"] and status["exit_code"] == 0
            assert {e["target"]: e["state"] for e in status["events"]} == {"run:words": "missing",
                                                                            "run:count": "missing"}
            unbuilt = (await call(session, "path", targets=["run:words"])).structured_content
            assert (unbuilt["ok"], unbuilt["exit_code"], unbuilt["messages"]) == (False, 1, [
                "forgebuild: run:words is missing (never built); build it with `forgebuild run:words`"])
            progress = []

            async def heard(done, total, message):
                progress.append((done, total, message))

            built = await session.call_tool("build", {"targets": ["run:count"]}, progress_callback=heard)
            assert not built.is_error
            result = built.structured_content
            assert result["ok"] and [(t["target"], t["action"]) for t in result["summary"]["targets"]] == [
                ("run:words", "built"), ("run:count", "built")]
            # one notification per start and per settled stage, rising to the two stages planned
            assert [(total, message) for _, total, message in progress] == [
                (2, "build run:words (never built)"), (2, "built run:words"),
                (2, "build run:count (never built)"), (2, "built run:count")]
            assert [done for done, *_ in progress] == [0.5, 1, 1.5, 2]

            paths = (await call(session, "path", targets=["run:count"])).structured_content["summary"]["paths"]
            with open(os.path.join(paths["run:count"], "count.txt")) as f:
                assert f.read() == "3\n"
            record = (await call(session, "show", targets=["count"])).structured_content["events"][0]
            assert record["event"] == "record" and record["target"] == "run:count"
            again = (await call(session, "build", targets=["run:count"])).structured_content["summary"]["targets"]
            assert {t["action"] for t in again} == {"cached"}
            cell = "run:cell[n=2]"  # a matrix cell's address goes through as one argument
            built = (await call(session, "build", targets=[cell])).structured_content["summary"]["targets"]
            assert [(t["target"], t["action"]) for t in built] == [(cell, "built")]
            paths = (await call(session, "path", targets=[cell])).structured_content["summary"]["paths"]
            with open(os.path.join(paths[cell], "n.txt")) as f:
                assert f.read() == "2"
            project.forgefile(PIPELINE.replace("hello big world", "hello world"))
            assert (await call(session, "build", targets=["run:count"])).structured_content["ok"]
            diff = (await call(session, "diff", a="run:count@2", b="run:count@1")).structured_content["events"]
            assert diff[0]["dependencies"][0]["target"] == "run:words" and diff[0]["outputs"]["changed"] == ["count.txt"]
            metrics = (await call(session, "metrics_diff", a="run:count@2", b="run:count@1")).structured_content
            assert [(e["target"], e["metric"]) for e in metrics["events"]] == [("run:count", "build_seconds")]
            schema = await session.read_resource("forgebuild://schema")
            assert json.loads(schema.contents[0].text) == (await call(session, "schema")).structured_content

    anyio.run(agent)


def test_forgefile_error_is_a_tool_error_and_the_server_goes_on(project):
    project.forgefile('[run.words]\ncmd = "echo hi > {out}/w.txt"\ncomand = "x"\n')

    async def agent():
        async with serve(project.root) as session:  # it starts although the Forgefile does not load
            bad = await call(session, "status")
            assert bad.is_error
            assert bad.content[0].text == ("Error executing tool status: Forgefile.toml:3: error: run:words: "
                                           "key 'comand': unknown key (did you mean 'cmd'?)")
            refused = await call(session, "build", targets=["--force"])
            assert refused.is_error and "'--force' starts with '-'" in refused.content[0].text
            project.forgefile('[run.words]\ncmd = "echo hi > {out}/w.txt; exit 3"\n')
            failed = (await call(session, "build")).structured_content  # a failed stage is a result, not an error
            assert (failed["ok"], failed["exit_code"]) == (False, 1)
            assert [(e["event"], e["reason"]) for e in failed["events"]][-1] == ("failed", "command exited with code 3")
            project.forgefile('[run.words]\ncmd = "kill -9 $PPID"\n')  # the build process itself dies
            crashed = await call(session, "build")
            assert crashed.is_error and crashed.content[0].text.startswith("Error executing tool build: forgebuild build exited -9")
            assert (await call(session, "schema")).structured_content["title"] == "Forgefile"

    anyio.run(agent)


def test_a_cancelled_build_stops_its_stages(project):
    project.forgefile('[run.slow]\ncmd = "echo $$ > pid.txt; exec sleep 60"\n')

    async def agent():
        async with serve(project.root) as session:
            async with anyio.create_task_group() as group:
                group.start_soon(call, session, "build")
                stage = await started(project.root)
                group.cancel_scope.cancel()  # the client gives up: MCP's notifications/cancelled
            assert await gone(stage)
            assert (await call(session, "status")).structured_content["events"][0]["state"] == "missing"

    clock = time.time()
    anyio.run(agent)
    assert time.time() - clock < 30  # not the 60 s of the stage


def test_a_server_stopped_by_its_host_stops_its_builds(project):
    project.forgefile('[run.slow]\ncmd = "echo $$ > pid.txt; exec sleep 60"\n')

    async def agent():
        with anyio.CancelScope() as scope:
            async with serve(project.root) as session, anyio.create_task_group() as group:
                group.start_soon(call, session, "build")
                stage = await started(project.root)
                os.kill(parent(parent(stage)), signal.SIGTERM)  # the stage's forgebuild's parent: the server
                assert await gone(stage)
                scope.cancel()

    anyio.run(agent)


async def started(root: str) -> int:
    """The pid of the stage that wrote ROOT/pid.txt, once it has."""
    path = os.path.join(root, "pid.txt")
    for _ in range(400):
        if os.path.exists(path) and open(path).read().strip():
            return int(open(path).read())
        await anyio.sleep(0.05)
    raise AssertionError("the stage never started")


async def gone(pid: int) -> bool:
    """Whether the process ends within 10 s (if not, it is killed: a failed test leaves nothing running)."""
    for _ in range(200):
        if not alive(pid):
            return True
        await anyio.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return False


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running, not only a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_without_the_sdk_it_says_how_to_install_it(project, tmp_path):
    from forgebuild.engine.preflight import install_command

    (tmp_path / "trap" / "mcp").mkdir(parents=True)  # an `mcp` that fails to import as a missing one does
    (tmp_path / "trap" / "mcp" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n")
    proc = project.run("mcp", expect=2, env={"PYTHONPATH": str(tmp_path / "trap")})
    assert proc.stderr == f"forgebuild: not installed: mcp (for forgebuild mcp); run: {install_command(['agents'])}\n"


SEARCH = """
[run.train]
cmd = ["python3", "-c", "import sys; open(sys.argv[1] + '/w.txt', 'w').write(sys.argv[2])", "{out}", "{params.lr}"]
params = { lr = 0.1 }
matrix = { "params.lr" = [0.1, 0.01] }

[run.fit]
cmd = ["python3", "-c", "import json, sys; json.dump({'loss': abs(float(sys.argv[1]) - 0.02)}, open(sys.argv[2] + '/metrics.json', 'w'))", "{params.lr}", "{out}"]
params = { lr = 0.1 }

[search.lr]
target = "run:fit"
objective = { target = "run:fit", metric = "loss", goal = "min" }
space = { "params.lr" = { loguniform = [0.001, 1.0] } }
budget = 3
"""


def test_an_agent_reads_a_sweep_and_a_search_through_exp(project):
    project.forgefile(SEARCH)

    async def agent():
        async with serve(project.root) as session:
            progress = []

            async def heard(done, total, message):
                progress.append((done, total))

            built = await session.call_tool("build", {"targets": ["run:train", "search:lr"]}, progress_callback=heard)
            assert built.structured_content["ok"]
            # the total grows as the search proposes trials: 2 cells and search:lr planned, then 3 trials
            assert [d for d, _ in progress] == sorted({d for d, _ in progress}) and progress[-1] == (6, 6)
            assert all(d <= total for d, total in progress) and progress[0][1] < 6
            cells = (await call(session, "exp", targets=["run:train"])).structured_content["events"]
            assert [(c["target"], c["values"], c["state"]) for c in cells] == [
                ("run:train[lr=0.1]", {"params.lr": 0.1}, "fresh"), ("run:train[lr=0.01]", {"params.lr": 0.01}, "fresh")]
            trials = (await call(session, "search_history", target="search:lr")).structured_content["events"]
            assert len(trials) == 3 and {t["by"] for t in trials} == {"tpe"}
            losses = [t["metrics"]["loss"]["value"] for t in trials]
            assert [t["best"] for t in trials] == [v == min(losses) for v in losses]
            assert losses == [abs(t["values"]["params.lr"] - 0.02) for t in trials]

    anyio.run(agent)
