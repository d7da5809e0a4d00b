"""Runs one rule's build() in a child process: `python -m forgebuild.engine.worker CONTEXT.json`.

Heavy libraries (torch, transformers, trl) are imported here, never in the
planner. A failure goes to the scratch folder beside the context (scratch.Failure)
for the parent to show; a traceback goes to the stage's log.
"""
from __future__ import annotations

import os
import sys
import time
import traceback

# `python -m` puts the working directory, the project folder, first on sys.path: its own pydantic.py
# or torch.py would shadow the library. The executor starts workers in safe-path mode
# (launcher.SAFE_PATH); Python 3.10 has none, so the entry goes here, before anything else is imported.
if sys.path and sys.path[0] and os.path.realpath(sys.path[0]) == os.path.realpath(os.getcwd()):
    del sys.path[0]

from forgebuild.engine.context import BuildContext  # noqa: E402
from forgebuild.engine.scratch import Failure, write_failure  # noqa: E402
from forgebuild.errors import Delegated, RuleFailed  # noqa: E402
from forgebuild.rules import load_rule, parse_params  # noqa: E402


def main(context_file: str) -> int:
    os.environ.setdefault("FORGE_STAGE_STARTED", str(time.time()))  # recipes measure their time before the first step
    os.environ["FORGE_CONTEXT_FILE"] = os.path.abspath(context_file)  # a launcher (torchrun) runs this file again
    ctx = BuildContext.load(context_file)
    try:
        rule = load_rule(ctx.kind)
        ctx.params = parse_params(rule, ctx.raw_params)
        os.chdir(ctx.project_dir)
        rule.build(ctx)
        finish_distributed()
    except Delegated:  # torchrun ran the build in its own processes, and it succeeded
        return 0
    except RuleFailed as e:
        failure = Failure(e.message, bad_input=e.exit_code == 2)
    except BaseException as e:  # the rule's own bug: keep the traceback for the log
        traceback.print_exc()
        failure = Failure(f"build raised {type(e).__name__}: {e}")
    else:
        return 0
    write_failure(ctx.scratch_dir, failure)
    print(f"forgebuild: {ctx.target}: {failure}", file=sys.stderr)
    return 1


def finish_distributed() -> None:
    """Under torchrun: wait for every rank (rank 0 is still writing the artifact), then take the
    process group down; a rank that exits with it alive aborts ("terminate called ...")."""
    if "LOCAL_RANK" not in os.environ:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
