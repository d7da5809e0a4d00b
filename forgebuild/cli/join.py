"""`forgebuild join`: node 0 of a multi-node build builds; any other node takes part in its multi-node
stages (engine/join.py)."""
from __future__ import annotations

import argparse

from forgebuild.cli.arguments import argument_parser
from forgebuild.cli.build import cmd_build


def cmd_join(args, session, report) -> int:
    from forgebuild.engine.join import cmd_join as run, node_rank

    build_defaults = vars(argument_parser().parse_args(["build"]))  # node 0 builds: the build verb's defaults
    args = argparse.Namespace(**{**build_defaults, **vars(args)})
    rank = node_rank(args.node_rank)
    if rank == 0:  # node 0 is the build itself: one command for every node of a Slurm job
        return cmd_build(args, session, report)
    return run(args, session, report, rank)
