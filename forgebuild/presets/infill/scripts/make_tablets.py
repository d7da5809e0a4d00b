"""Demo tablets: transcriptions of an invented clay-tablet archive (a language no public model saw),
and a benchmark of damaged spans, each a name the same tablet names again further on.

    python3 scripts/make_tablets.py --seed 7 --count 4000 --out OUT       # OUT/tablets.jsonl, {"text": ...}
    python3 scripts/make_tablets.py --seed 2026 --count 200 --bench bench  # damaged names, with their answers

Replace the tablets with your own transcriptions (one document per tablet) and the benchmark with
spans you cut from tablets the model never trains on: the Forgefile says where.
"""
from __future__ import annotations

import argparse
import json
import os
import random

# the archive's vocabulary is fixed (seed 0): --seed only draws the tablets
_LEXICON = random.Random(0)
_SYLLABLES = ["ka", "ku", "sha", "ne", "ri", "bal", "tum", "il", "dan", "mer", "zu", "ash", "nin", "gal", "ub", "esh"]
NAMES = sorted({"".join(_LEXICON.sample(_SYLLABLES, _LEXICON.choice((2, 3)))).capitalize() for _ in range(80)})[:60]
# each good is counted in its own unit
UNIT_OF = {"barley": "measures", "dates": "baskets", "wool": "fleeces", "oil": "jars", "copper": "ingots",
           "reeds": "bundles", "sheep": "heads", "silver": "shekels"}
GODS = ["Enki", "Nanna", "Utu", "Inanna"]

# each template names its first party again further on; {A} is the party a damaged span hides
TEMPLATES = [
    "Received: {good}, {n} {unit}. From: {A}. To: {B}. {B} has received them. Seal of {A}.",
    "To {B} speak: thus says {A}. The {good}, {n} {unit}, is ready for {C}. Send it. Seal of {A}.",
    "Oath of {A}, by {god}: {B} owes {good}, {n} {unit}. Witness: {C}. Seal of {A}.",
    "Month of {god}. Sale by {A}: {good}, {n} {unit}, to {B}. Witness: {C}. Seal of {A}.",
]


def tablet(rng: random.Random) -> tuple[str, str, str]:
    """One tablet in three parts: the text before the first party's first mention, its name, the rest
    (which names it again in the seal)."""
    a, b, c = rng.sample(NAMES, 3)
    good = rng.choice(sorted(UNIT_OF))
    fields = {"A": a, "B": b, "C": c, "n": rng.randint(2, 60), "unit": UNIT_OF[good], "good": good,
              "god": rng.choice(GODS)}
    before, after = rng.choice(TEMPLATES).split("{A}", 1)
    return before.format(**fields), a, after.format(**fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", help="a folder: tablets.jsonl")
    parser.add_argument("--bench", help="a folder: damaged.jsonl and blind.jsonl, {prompt, answer}")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "tablets.jsonl"), "w", encoding="utf-8") as f:
            for _ in range(args.count):
                f.write(json.dumps({"text": "".join(tablet(rng))}) + "\n")
    if args.bench:
        os.makedirs(args.bench, exist_ok=True)
        with open(os.path.join(args.bench, "damaged.jsonl"), "w", encoding="utf-8") as damaged, \
                open(os.path.join(args.bench, "blind.jsonl"), "w", encoding="utf-8") as blind:
            for _ in range(args.count):
                before, name, rest = tablet(rng)
                # suffix-prefix-middle order (fim_format = "spm"): the name continues the prefix. The cut leaves
                # the space with the name, as the tokenizer does (" Kusha"): the prefix ends on a word
                damaged.write(json.dumps({"prompt": f"<|fim_prefix|><|fim_suffix|>{rest}<|fim_middle|>"
                                                    f"{before.rstrip(' ')}", "answer": name}) + "\n")
                # the control: the same gap with the rest of the tablet withheld
                blind.write(json.dumps({"prompt": f"<|fim_prefix|><|fim_suffix|><|fim_middle|>{before.rstrip(' ')}",
                                        "answer": name}) + "\n")

if __name__ == "__main__":
    main()
