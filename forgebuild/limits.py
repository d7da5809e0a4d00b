"""Upper bounds of the integers that rules' params take, one per kind of quantity.

A bound here is not a tuning limit: it is where a number stops being a plausible setting and
becomes a typo (`1e10` for `1e4`, a stray digit) that would otherwise pass planning and fail
minutes or hours later inside torch, tokenizers or numpy, or allocate until the machine gives
up. Each is far above anything a real run uses; `tests/test_forgefile_errors.py` checks that
every integer param of every built-in rule has one (seeds excepted: any 64-bit value is a seed).
Standard library only: the planner imports this.
"""
from __future__ import annotations

# processes, threads, workers, CPUs or GPUs of one stage: the largest single machines have ~2k cores
THREADS = 4096
# machines in one multi-node launch: torchrun's node ranks; the largest training jobs use tens of thousands of GPUs
NODES = 65_536
# a length in tokens or words (seq_len, max_length, max_new_tokens, an n-gram): 1,048,576, beyond the
# longest contexts models train with; one attention score matrix at that length is 2^40 entries
TOKENS = 2**20
# sequences in one (micro-)batch, micro-batches per step, completions per prompt: 65,536
BATCH = 2**16
# optimizer steps, and steps between logs, evaluations and checkpoints: 10^9 steps is centuries of training
STEPS = 10**9
# a layer's width (hidden, MLP, LoRA rank): 131,072, past the widest published models (~50k)
WIDTH = 2**17
# layers, attention heads, experts: 1,024
DEPTH = 1024
# a vocabulary: 2^24, far above the largest published ones (~262k); its float32 embedding at width 64
# is already 4 GiB (1e29, a TOML float read as an integer, used to reach the tokenizers library)
VOCAB = 2**24
# counts of documents, rows, characters, bytes or tokens: 2^53, the largest integer a float64 holds
# exactly (stats.json and metrics are read by JSON parsers that use doubles)
AMOUNT = 2**53
# a wait in seconds (a resident worker's idle timeout): a week; a longer one is a worker nobody remembers
WAIT_SECONDS = 7 * 24 * 3600
# bootstrap resamples: a million already takes minutes per metric, and the interval stops moving long before
RESAMPLES = 10**6
