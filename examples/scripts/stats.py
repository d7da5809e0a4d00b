"""Word statistics of a prepared corpus, as JSON.

    python3 stats.py --corpus DIR --top N --out FILE

Reads DIR/train.txt (one sentence per line) and writes counts and the N most
frequent words (ties broken alphabetically, so the output is deterministic).
"""
import argparse
import collections
import json
import os
import re

WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with open(os.path.join(args.corpus, "train.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    counts = collections.Counter(w for line in lines for w in WORD.findall(line))
    words = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: args.top]
    stats = {
        "sentences": len(lines),
        "characters": sum(len(line) for line in lines),
        "words": words,
        "distinct_words": len(counts),
        "words_per_sentence": round(words / len(lines), 2) if lines else 0.0,
        "top_words": [[word, n] for word, n in top],
    }
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{words} words, {len(counts)} distinct")


if __name__ == "__main__":
    main()
