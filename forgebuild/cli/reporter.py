"""One event stream, two views: human lines on the console, JSON Lines with --json.

Events are dicts with an "event" field: start, waiting, built, cached, failed,
skipped (building); status, explain, graph, record, log (the inspecting verbs);
error; and, last on every verb, a summary. Reporters are called from builder
threads, so each one serialises its own output. A reader that goes away
(`forgebuild --json | head -1`) silences the stream but never stops a build.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time


def _written(stream, text: str):
    """Write and flush; on a closed pipe, point the stream at /dev/null so later writes cost nothing."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    return stream


class JsonReporter:
    """stdout becomes JSON Lines, one event per line; the last line is the summary."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        with self.lock:
            self.stream = _written(self.stream, json.dumps(event, ensure_ascii=False) + "\n")

    def close(self) -> None:
        pass


class ConsoleReporter:
    """Plain lines, one per thing that happened; quiet shows only failures and the summary."""

    def __init__(self, stream=None, verbose=False, quiet=False):
        self.stream = stream or sys.stdout
        self.verbose, self.quiet = verbose, quiet
        self.lock = threading.Lock()
        self.started = time.time()

    def __call__(self, event: dict) -> None:
        with self.lock:
            for line in self.lines(event):
                self.write(line)

    def write(self, line: str) -> None:
        self.stream = _written(self.stream, line + "\n")

    def lines(self, e: dict) -> list[str]:
        kind, target = e["event"], e.get("target", "")
        if kind == "summary":
            return [summary_line(e, time.time() - self.started)]
        if kind == "failed":
            out = [f"FAILED  {target}: {e['reason']}"]
            tail = e.get("log_tail", "")
            out += [f"  | {line}" for line in tail.splitlines()]
            if e.get("log"):
                out.append(f"  (full log: {e['log']})")
            return out
        if kind == "warning":  # shown even with -q: something did not go as configured
            return [f"warning: {e['message']}"]
        if self.quiet:
            return []
        if kind == "start":
            return [f"build   {target}  ({e['reason']})"]
        if kind == "built":
            return [f"built   {target}  {e['seconds']:.2f}s"]
        if kind == "cached":
            # a fetch from the remote is news on every run; a local hit only with -v
            if e.get("reason", "").startswith("fetched from "):
                return [f"fetched {target}  ({e['reason']})"]
            return [f"cached  {target}"] if self.verbose else []
        if kind == "skipped":
            return [f"skipped {target}  ({e['reason']})"]
        if kind == "waiting":
            return [f"waiting {target}  ({e['reason']})"]
        return []

    def close(self) -> None:
        pass


class RichReporter(ConsoleReporter):
    """On a terminal: the same lines, coloured, under a spinner naming what is running."""

    STYLE = {"build": "cyan", "built": "green", "cached": "dim", "skipped": "yellow", "FAILED": "bold red",
             "waiting": "magenta"}

    def __init__(self, verbose=False, quiet=False):
        super().__init__(sys.stdout, verbose, quiet)
        self.console = self.status = None
        self.running: list[str] = []
        self.done = 0

    def _start(self) -> None:
        """rich costs ~80 ms of imports: a no-op build, which only prints its summary, never pays it."""
        from rich.console import Console
        from rich.markup import escape

        self.escape = escape
        self.console = Console(highlight=False, emoji=False)  # "run:b:" is not an emoji code
        self.status = self.console.status("starting", spinner="dots")
        self.status.start()

    def __call__(self, event: dict) -> None:
        if event["event"] == "summary":
            self.close()  # the spinner goes before the last line is printed
            return super().__call__(event)
        with self.lock:
            if self.console is None:
                self._start()
            target = event.get("target")
            if event["event"] == "start":
                self.running.append(target)
            elif event["event"] in ("built", "failed", "cached", "skipped") and target:
                self.done += 1
                if target in self.running:
                    self.running.remove(target)
            for line in self.lines(event):
                self.write(line)
            running = ", ".join(self.running) or "checking"
            if self.status is not None:
                self.status.update(f"{running}  [dim]({self.done} done)[/dim]")

    def write(self, line: str) -> None:
        if self.console is None:
            return super().write(line)
        word = line.split(" ", 1)[0]
        style = self.STYLE.get(word)
        text = self.escape(line)
        self.console.print(f"[{style}]{text}[/{style}]" if style else text)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def summary_line(e: dict, seconds: float) -> str:
    counts: dict[str, int] = {}
    for t in e.get("targets", []):
        counts[t.get("action", t.get("state"))] = counts.get(t.get("action", t.get("state")), 0) + 1
    if e.get("dry_run"):
        would = counts.get("would-build", 0)
        fetch = f"{counts['would-fetch']} to fetch, " if counts.get("would-fetch") else ""
        return f"dry run: {would} to build, {fetch}{counts.get('cached', 0)} fresh"
    if "message" in e:  # a verb's own one-line result (cache push / pull, lock, verify)
        return e["message"]
    fetched = sum(1 for t in e.get("targets", []) if str(t.get("reason", "")).startswith("fetched from "))
    if fetched:
        counts["fetched"] = fetched
        counts["cached"] -= fetched
        if not counts["cached"]:
            del counts["cached"]
    if counts and set(counts) == {"cached"}:
        return f"nothing to do: {counts['cached']} target{'s' if counts['cached'] != 1 else ''} up to date ({seconds:.2f}s)"
    parts = [f"{counts[a]} {a}" for a in ("built", "fetched", "cached", "failed", "skipped") if counts.get(a)]
    verdict = "ok" if e.get("ok") else "FAILED"
    return f"{verdict}: {', '.join(parts) or 'no targets'} ({seconds:.2f}s)"


def make_reporter(json_mode: bool, verbose=False, quiet=False, building=True):
    if json_mode:
        return JsonReporter()
    if building and sys.stdout.isatty() and not quiet:
        return RichReporter(verbose, quiet)
    return ConsoleReporter(verbose=verbose, quiet=quiet)
