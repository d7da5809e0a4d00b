"""A markdown summary of the corpus statistics and the vocabulary.

    python3 report.py --stats FILE --vocab DIR --title TEXT --out FILE
"""
import argparse
import json
import os


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stats", required=True)
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--title", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    with open(args.stats, encoding="utf-8") as f:
        stats = json.load(f)
    with open(os.path.join(args.vocab, "coverage.json"), encoding="utf-8") as f:
        cov = json.load(f)
    with open(os.path.join(args.vocab, "vocab.txt"), encoding="utf-8") as f:
        tokens = f.read().splitlines()

    lines = [
        f"# {args.title}",
        "",
        "## Corpus",
        "",
        "| measure | value |",
        "|---|---|",
        f"| sentences | {stats['sentences']} |",
        f"| words | {stats['words']} |",
        f"| distinct words | {stats['distinct_words']} |",
        f"| characters | {stats['characters']} |",
        f"| words per sentence | {stats['words_per_sentence']} |",
        "",
        "Most frequent words: " + ", ".join(f"`{w}` ({n})" for w, n in stats["top_words"]) + ".",
        "",
        "## Vocabulary",
        "",
        f"{cov['size']} tokens: {cov['specials']} special, {cov['characters']} characters, {cov['words']} words.",
        f"The word entries cover {cov['holdout_covered']} of {cov['holdout_words']} holdout words "
        f"({cov['holdout_coverage']:.1%}).",
        "",
        "First word entries: " + ", ".join(f"`{t}`" for t in tokens[cov["specials"] + cov["characters"]:][:10]) + ".",
        "",
    ]
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
