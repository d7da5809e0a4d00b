"""The scratch protocol: the files through which a build process and the executor talk.

Each attempt at a build gets a fresh scratch folder (`Workspace.scratch`) holding the output folder
`out/`, the memo steps' folders `memo/`, and these messages beside them:

- context.json, executor -> worker: the BuildContext's fields; its path is the worker's argument.
- memos.txt, build -> executor: the key of each cached sub-step the build used, a line each (the
  cache entry lists them, so gc keeps them).
- handed.jsonl, build -> executor: each file of a sub-step's result as the rule got it, with its
  stat (guard.py checks after the stage that none changed).
- metrics.json, build -> executor: measurements for the build record; later writes update earlier keys.
- verdict.json, build -> executor: a failure that keeps the artifact (a failed gate).
- failure.json, worker -> executor: why the build failed (`Failure`). A launcher reads it too: its
  processes run the worker again, in the same folder.

A message is written whole or not at all (a temporary file renamed over its name), and a reader
takes a file that is missing or does not parse for no message. The two line files are appended by
every process of a build (a rule's pool workers too), one whole line a write.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from forgebuild.hashing import save_json

OUT, MEMO_DIR = "out", "memo"
CONTEXT, MEMOS, HANDED = "context.json", "memos.txt", "handed.jsonl"
METRICS, VERDICT, FAILURE = "metrics.json", "verdict.json", "failure.json"


@dataclass(frozen=True)
class Failure:
    """Why a build failed, for the executor to raise as the build's failure."""

    message: str
    bad_input: bool = False  # the stage found its input data bad: the build exits 2

    def __str__(self) -> str:
        """As the worker prints it, and a launcher repeats it."""
        return ("bad input: " if self.bad_input else "") + self.message


def _read(folder: str, name: str):
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_context(folder: str, fields: dict) -> str:
    """context.json; its path, for the worker's command line."""
    path = os.path.join(folder, CONTEXT)
    save_json(path, fields)
    return path


def read_context(path: str) -> dict:
    """The worker's one input: missing or torn, it cannot build, and says so."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_failure(folder: str, failure: Failure) -> None:
    save_json(os.path.join(folder, FAILURE), asdict(failure))


def read_failure(folder: str) -> Failure | None:
    found = _read(folder, FAILURE)
    try:
        return Failure(**found)
    except TypeError:  # no file, or not one of ours
        return None


def add_metrics(folder: str, values: dict) -> None:
    save_json(os.path.join(folder, METRICS), {**(read_metrics(folder) or {}), **values})


def read_metrics(folder: str) -> dict | None:
    found = _read(folder, METRICS)
    return found if isinstance(found, dict) else None


def write_verdict(folder: str, message: str) -> None:
    save_json(os.path.join(folder, VERDICT), message)


def read_verdict(folder: str) -> str | None:
    found = _read(folder, VERDICT)
    return found if isinstance(found, str) else None


def read_memos(folder: str) -> list[str] | None:
    try:
        with open(os.path.join(folder, MEMOS), encoding="utf-8") as f:
            return sorted(set(f.read().split()))
    except OSError:
        return None


def read_handed(folder: str) -> list[tuple]:
    """What `Lines.handed` wrote: (memo key, step name, result digest, file path, file digest, stat) per file."""
    try:
        with open(os.path.join(folder, HANDED), encoding="utf-8") as f:
            return [tuple(json.loads(line)) for line in f if line.strip()]
    except OSError:
        return []


class Lines:
    """A build's side of memos.txt and handed.jsonl: each file opened once per process (a rule's pool
    workers append too), line-buffered, so every write is one whole line."""

    def __init__(self, folder: str):
        self.folder, self.pid, self.files = folder, os.getpid(), {}

    def memo(self, key: str) -> None:
        self._file(MEMOS).write(key + "\n")

    def handed(self, key: str, name: str, digest: str, rel: str, file_digest: str, stat: list) -> None:
        self._file(HANDED).write(json.dumps([key, name, digest, rel, file_digest, stat]) + "\n")

    def _file(self, name: str):
        if self.pid != os.getpid():  # a forked pool worker: handles of its own
            self.pid, self.files = os.getpid(), {}
        if name not in self.files:
            self.files[name] = open(os.path.join(self.folder, name), "a", encoding="utf-8", buffering=1)
        return self.files[name]
