"""The entry point: parse the arguments, load the project, run the verb, report errors (exit codes in
forgebuild/cli/__init__.py)."""
from __future__ import annotations

import os
import sys

import importlib

from forgebuild.cli.arguments import parse_args
from forgebuild.cli.session import Session
from forgebuild.errors import ForgefileError, ForgeError

# verb -> (module of forgebuild.cli, function): only the verb that runs is imported, so a no-op
# build imports no other verb's module (each costs ~0.3-1.5 ms of a ~60 ms no-op)
COMMANDS = {"build": ("build", "cmd_build"), "lock": ("build", "cmd_lock"), "verify": ("build", "cmd_verify"),
            "status": ("query", "cmd_status"), "explain": ("query", "cmd_explain"), "graph": ("query", "cmd_graph"),
            "path": ("query", "cmd_path"), "show": ("query", "cmd_show"), "log": ("query", "cmd_log"),
            "schema": ("query", "cmd_schema"), "diff": ("query", "cmd_diff"), "clean": ("tidy", "cmd_clean"),
            "gc": ("tidy", "cmd_gc"), "cache": ("cache", "cmd_cache"), "join": ("join", "cmd_join"),
            "keys": ("keys", "cmd_keys"), "init": ("init", "cmd_init"),
            "exp": ("exp", "cmd_exp"), "metrics": ("metrics", "cmd_metrics"), "mcp": ("mcp", "cmd_mcp"),
            "worker": ("worker", "cmd_worker")}


def command(verb: str):
    module, name = COMMANDS[verb]
    return getattr(importlib.import_module(f"forgebuild.cli.{module}"), name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from forgebuild.cli.reporter import make_reporter

    report = Summarised(make_reporter(args.json, args.verbose, args.quiet,
                                      building=args.verb == "build" and not getattr(args, "dry_run", False)))
    session = None
    try:
        session = Session(args, report) if args.verb not in ("schema", "init", "mcp") else None  # no Forgefile (mcp: each tool)
        if session is not None:  # its warning, if any, before the summary: JSON's last line stays the summary
            report.before_summary = session.close
        code = command(args.verb)(args, session, report)
        if args.json and not report.summarised:  # every verb's JSON ends with a summary object
            report({"event": "summary", "ok": code == 0})
        return code
    except BrokenPipeError:  # `forgebuild log | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ForgeError as e:
        report.close()
        _report_error(e, args, report)
        return e.exit_code
    except KeyboardInterrupt:
        report.close()
        print("forgebuild: interrupted", file=sys.stderr)
        return 130
    finally:
        if session is not None:
            session.close()
        report.close()


class Summarised:
    """Passes events on, noting whether a summary went out."""

    def __init__(self, reporter):
        self.reporter, self.summarised = reporter, False
        self.before_summary = None

    def __call__(self, event: dict) -> None:
        if event["event"] == "summary" and self.before_summary is not None:
            self.before_summary, run = None, self.before_summary
            run()
        self.summarised |= event["event"] == "summary"
        self.reporter(event)

    def close(self) -> None:
        self.reporter.close()


def _report_error(e: ForgeError, args, report) -> None:
    if isinstance(e, ForgefileError):
        text = "\n".join(str(p) for p in e.problems)
    else:
        text = f"forgebuild: {e}"
    print(text, file=sys.stderr)
    if args.json:
        problems = [p.__dict__ for p in getattr(e, "problems", [])]
        report({"event": "error", "exit_code": e.exit_code, "message": str(e), "problems": problems})
        report({"event": "summary", "ok": False, "error": str(e), "targets": []})
