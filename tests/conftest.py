"""Shared fixtures: a throw-away project folder and a way to run the real CLI on it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
RAN_IN: list[str] = []  # project folders forgebuild ran in during the current test (checked at its teardown)
DAMAGED: set[str] = set()  # folders a `corrupts_cache` test damaged on purpose: never checked again


class Project:
    """A folder with a Forgefile; `run` invokes `python -m forgebuild` there, in a real process."""

    def __init__(self, root):
        self.root = root

    def write(self, rel: str, text: str, mode: int | None = None) -> str:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        if mode is not None:
            os.chmod(path, mode)
        return path

    def forgefile(self, text: str) -> str:
        return self.write("Forgefile.toml", text)

    def read(self, rel: str) -> str:
        with open(os.path.join(self.root, rel), encoding="utf-8") as f:
            return f.read()

    def run(self, *args, expect: int | None = 0, env=None, timeout=120) -> subprocess.CompletedProcess:
        RAN_IN.append(self.root)
        proc = subprocess.run([sys.executable, "-m", "forgebuild", *args], cwd=self.root, capture_output=True,
                              text=True, env={**ENV, **(env or {})}, timeout=timeout)
        if expect is not None:
            assert proc.returncode == expect, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def events(self, *args, expect: int | None = 0, env=None, timeout=120) -> list[dict]:
        proc = self.run(*args, "--json", expect=expect, env=env, timeout=timeout)
        return [json.loads(line) for line in proc.stdout.splitlines()]

    def build(self, *args, expect: int | None = 0, env=None, timeout=120) -> dict[str, str]:
        """Build; return {target: action} from the summary, the contract CI and agents read."""
        summary = self.events(*args, expect=expect, env=env, timeout=timeout)[-1]
        assert summary["event"] == "summary"
        return {t["target"]: t["action"] for t in summary["targets"]}

    def runs(self) -> list[str]:
        """Names appended to runs.txt by the commands that actually executed (evidence beside the engine's word)."""
        path = os.path.join(self.root, "runs.txt")
        if not os.path.exists(path):
            return []
        lines = self.read("runs.txt").split()
        os.unlink(path)
        return lines


def install_rule_plugin(site, dist: str, rules: dict[str, tuple[str, str]]) -> None:
    """Rule plugins as pip would leave them in `site` (a folder on PYTHONPATH): each kind's module
    ({kind: (module, source)}) and one distribution `dist` whose entry points name them."""
    for module, source in rules.values():
        (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    points = "".join(f"{kind} = {module}\n" for kind, (module, _) in rules.items())
    (info / "entry_points.txt").write_text(f"[forgebuild.rules]\n{points}")


@pytest.fixture
def project(tmp_path):
    return Project(str(tmp_path))


def pytest_configure(config):
    config.addinivalue_line("markers", "corrupts_cache: the test damages a workspace's store on purpose; the "
                                       "store check at its teardown is skipped")


@pytest.fixture(autouse=True)
def store_stays_sound(request):
    """After every test, every store it built in is checked as `forgebuild verify` would (in-process, ~1 ms
    per MB): a build that changed a stored byte fails the test that ran it."""
    start = len(RAN_IN)
    yield
    roots = [r for r in dict.fromkeys(RAN_IN[start:]) if r not in DAMAGED]
    del RAN_IN[start:]
    if request.node.get_closest_marker("corrupts_cache"):
        DAMAGED.update(roots)
        return
    import tinylab

    problems = [line for root in roots for line in tinylab.store_problems(os.path.join(root, ".forge"))]
    assert not problems, "a build changed the store:\n" + "\n".join(problems)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny llama pretrained by forgebuild on standard-library text (about 10 s, once per session):
    the artifact folder's path. Recipe tests import it with `tinylab.imported_base(path)`."""
    import tinylab

    root = str(tmp_path_factory.mktemp("tiny-base"))
    lab = Project(root)
    tinylab.write_stdlib_text(root)
    lab.forgefile(tinylab.BASE_FORGEFILE)
    lab.run("model:base", timeout=300)
    return lab.run("path", "model:base").stdout.strip()


TRIPWIRE = "import os, sys\nsys.stderr.write('tripwire: {name} imported\\n')\nos._exit(97)\n"


@pytest.fixture(scope="session")
def no_torch_env(tmp_path_factory):
    """An environment in which importing torch, transformers, trl, peft or datasets exits 97: what the
    planning path (parse, validate, hash, decide) runs under in the tests that say it never imports them."""
    trap = tmp_path_factory.mktemp("tripwire")
    for name in ("torch", "transformers", "trl", "peft", "datasets"):
        os.makedirs(trap / name)
        (trap / name / "__init__.py").write_text(TRIPWIRE.format(name=name))
    return {"PYTHONPATH": f"{trap}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="session")
def extensions(tmp_path_factory):
    """DeepSpeed compiles a small op (about 25 s here) once per TORCH_EXTENSIONS_DIR, by default one per
    workspace: every DeepSpeed test shares one, so only the first of the session pays for it."""
    return {"TORCH_EXTENSIONS_DIR": str(tmp_path_factory.mktemp("torch-extensions"))}


@pytest.fixture
def recipe_project(project, tiny_base):
    """A project with the tiny base as `model:base` and the arithmetic datasets written."""
    import tinylab

    tinylab.write_arith_data(project.root)
    project.preamble = tinylab.imported_base(tiny_base) + tinylab.DATASETS
    return project
