"""Helpers for the in-process unit tests (import `lab` as a fixture): a Forgefile loaded into a Plan, and a real build run by
`cli.main` in this process (no `python -m forgebuild` child: ~50 ms a build instead of ~1.2 s).

A build run here is registered with the suite's store check (tests/conftest.py, RAN_IN), so
every unit test that builds still ends with `forgebuild verify`'s judgement of its store."""
from __future__ import annotations

import contextlib
import io
import os
import textwrap

import pytest


class Lab:
    """A project folder: write files, load its Forgefile into a Plan, build in this process."""

    def __init__(self, root: str):
        self.root = root

    def write(self, rel: str, text: str) -> str:
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path

    def plan(self, forgefile: str | None = None):
        from forgebuild.planning import forgefile as ff

        if forgefile is not None:
            self.write("Forgefile.toml", forgefile)
        return ff.load(os.path.join(self.root, "Forgefile.toml"))

    def build(self, *args: str) -> tuple[int, str]:
        """`forgebuild ARGS` in this process: (exit code, what it printed: stdout, then stderr)."""
        import conftest
        from forgebuild import cli

        conftest.RAN_IN.append(self.root)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["-f", os.path.join(self.root, "Forgefile.toml"), *args])
        return code, out.getvalue() + err.getvalue()


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # displayed paths are relative to the current folder
    return Lab(str(tmp_path))
