"""forgebuild: make for language models.

The package is five layers, each a subpackage whose docstring says what it may import
(tests/test_layers.py holds every module to it):

- ``planning``: read the Forgefile, validate it against the rules, hash, decide what is stale and why.
- ``engine``: run the stages that are stale, one process per stage, and store what they make.
- ``store``: keep bytes (the local content-addressed store, the shared remote, the workspace).
- ``rules``: what a target kind means (``run``, the data rules, ``model`` with its recipes,
  ``eval`` with its harness); imported by planning for validation, built by the engine.
- ``cli``: the verbs on top; may import every layer.

Beside them, the base every layer may use: ``errors``, ``limits``, ``hashing``.

Importing this package is cheap on purpose: the planning path (parse, validate,
hash, decide) never imports torch, transformers or trl.
"""
__version__ = "0.1.0"
