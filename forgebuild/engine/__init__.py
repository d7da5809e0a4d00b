"""Engine: runs the stages planning found stale, and stores what they make.

The scheduler (``executor``) walks the plan, fetches or builds each stale key under its lock, and
commits the outputs to the store. Every process starts through the one launcher
(``launcher.run_logged``: its own process group, killed with forgebuild); a stage runs in its own
Python (``worker``, holding a ``context.BuildContext``) or on a cluster (``backends``: Ray, Slurm).
A build process and its parent talk only through the files of ``scratch`` (typed messages);
``guard`` checks that a stage left its inputs alone; ``preflight`` checks what a build needs before
it starts; ``join`` runs one node of a multi-node stage.

May import: the base, planning (plans, keys), the store, and the rule registry
(``forgebuild.rules``: load a rule, read its hooks). The engine is rule-agnostic: what it needs
from a rule comes through the hooks of ``rules.RuleHooks``. Never the command line, and never a
rule module directly.
"""
