"""Synthetic data (issue 15): what the `generate` and `curate` rules are made of.

Part of the rules layer (see forgebuild/rules/__init__.py): these modules may import the base,
planning's `plan` and other rule modules, never the engine, the store or the command line. The
torch-free ones (`prompts`, `verifiers`, `shapes`, ...) may be imported while a Forgefile is
validated; the build-only ones (`sampling`, `vllm_engine`, `reward_scores`) import torch or vLLM at
the top and are imported only inside a build.
"""
