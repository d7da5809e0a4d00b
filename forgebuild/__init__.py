"""forgebuild: make for language models.

Importing this package is cheap on purpose: the planning path (parse, validate,
hash, decide) never imports torch, transformers or trl.
"""
__version__ = "0.1.0"
