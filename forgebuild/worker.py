"""Runs one rule's build() in a child process: `python -m forgebuild.worker CONTEXT.json`.

Heavy libraries (torch, transformers, trl) are imported here, never in the
planner. A failure's one-line message goes to failure.txt beside the context
for the parent to show; a traceback goes to the stage's log.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

from .context import BuildContext
from .errors import RuleFailed
from .rules import load_rule, parse_params


def main(context_file: str) -> int:
    os.environ["FORGE_STAGE_STARTED"] = str(time.time())  # recipes measure their time before the first step
    with open(context_file, encoding="utf-8") as f:
        ctx = BuildContext.from_json(f.read())
    failure_file = os.path.join(os.path.dirname(context_file), "failure.txt")
    try:
        rule = load_rule(ctx.kind)
        ctx.params = parse_params(rule, ctx.raw_params)
        os.chdir(ctx.project_dir)
        rule.build(ctx)
    except RuleFailed as e:
        message = ("bad input: " if e.exit_code == 2 else "") + e.message
    except BaseException as e:  # the rule's own bug: keep the traceback for the log
        traceback.print_exc()
        message = f"build raised {type(e).__name__}: {e}"
    else:
        return 0
    with open(failure_file, "w", encoding="utf-8") as f:
        f.write(message)
    print(f"forgebuild: {ctx.target}: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
