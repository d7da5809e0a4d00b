"""Engine: runs the stages planning found stale, and stores what they make.

The scheduler (``executor``) walks the plan, fetches or builds each stale key under its lock,
and commits the outputs to the store. Every process starts through the one launcher
(``context.run_logged``); a stage runs in its own Python (``worker``) or on a cluster
(``backends``: Ray, Slurm); ``guard`` checks that a stage left its inputs alone; ``preflight``
checks what a build needs before it starts; ``join`` runs one node of a multi-node stage.

May import: the base, planning (plans, keys), the store, and the rule registry
(``forgebuild.rules``: load a rule, read its hooks). The engine is rule-agnostic: what it needs
from a rule comes through the hooks of ``rules.RuleHooks``. Never the command line, and never a
rule module directly.
"""
