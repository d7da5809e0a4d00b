"""Planning: what to build and why, decided without running anything.

Parse and validate the Forgefile (``forgefile``), resolve its references and inputs into a plan
(``plan``), order it (``graph``), hash every target's inputs into an action key and decide what is
stale (``keys``), with the reason from one structured diff of two key materials (``change``: the
same ``Change`` objects explain, ``lock --frozen`` and ``diff`` word), and describe the Forgefile's
schema (``schema``). The plan is cached in ``.forge/plan.json``, so a no-op run imports only
``plan`` and ``keys`` of this layer (``change`` once something changed).

May import: the base (``errors``, ``limits``, ``hashing``), the store (``store``), and the rule
registry with the rules' validation modules (``rules``, at module level only: Params, inputs,
checks). Never the engine, the command line, a rule's build-only modules, or the ML stack
(torch, transformers, trl and the rest).
"""
