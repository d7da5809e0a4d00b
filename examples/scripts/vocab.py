"""A tiny vocabulary: special tokens, every character, then the most frequent words.

    python3 vocab.py --corpus DIR --size N --min-count K --out DIR

Reads DIR/train.txt and DIR/holdout.txt; writes OUT/vocab.txt (one token per
line, the line number is the id) and OUT/coverage.json (how much of the holdout
the word entries cover). Ties are broken alphabetically: deterministic.
"""
import argparse
import collections
import json
import os
import re

WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


def read_lines(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--min-count", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    train = read_lines(os.path.join(args.corpus, "train.txt"))
    holdout = read_lines(os.path.join(args.corpus, "holdout.txt"))
    chars = sorted({c for line in train for c in line})
    counts = collections.Counter(w for line in train for w in WORD.findall(line))
    ranked = sorted((kv for kv in counts.items() if kv[1] >= args.min_count), key=lambda kv: (-kv[1], kv[0]))
    room = max(0, args.size - len(SPECIALS) - len(chars))
    words = [w for w, _ in ranked if len(w) > 1][:room]  # single characters are already in
    tokens = SPECIALS + chars + words

    known = set(words) | set(chars)
    held_words = [w for line in holdout for w in WORD.findall(line)]
    covered = sum(1 for w in held_words if w in known)
    coverage = {
        "size": len(tokens),
        "specials": len(SPECIALS),
        "characters": len(chars),
        "words": len(words),
        "holdout_words": len(held_words),
        "holdout_covered": covered,
        "holdout_coverage": round(covered / len(held_words), 4) if held_words else 0.0,
    }
    with open(os.path.join(args.out, "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.writelines(t + "\n" for t in tokens)
    with open(os.path.join(args.out, "coverage.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(coverage, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{len(tokens)} tokens; holdout word coverage {coverage['holdout_coverage']:.1%}")


if __name__ == "__main__":
    main()
