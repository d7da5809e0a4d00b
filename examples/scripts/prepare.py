"""Normalise raw text files into one sentence per line and split off a holdout set.

    python3 prepare.py --out DIR --seed N [--holdout 0.1] [--min-chars 20] [--lowercase true] FILE...

Writes DIR/train.txt and DIR/holdout.txt. Deterministic: the same files, options
and seed give byte-identical outputs (the holdout is drawn with random.Random(seed)).
"""
import argparse
import os
import random
import re
import unicodedata

# Typographic characters mapped to plain ASCII before anything else.
PLAIN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                       "\u2013": "-", "\u2014": "-", "\u2026": "..."})
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
UNDERLINE = re.compile(r"^[=\-~*#]{3,}$")


def boolean(text: str) -> bool:
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError("expected true or false")
    return text == "true"


def paragraphs(text: str):
    """Blocks of text separated by blank lines; underlined headings are dropped."""
    block = []
    for line in text.splitlines():
        line = line.strip()
        if UNDERLINE.match(line):
            block = block[:-1]  # the heading above the underline
            continue
        if line:
            block.append(line)
        elif block:
            yield " ".join(block)
            block = []
    if block:
        yield " ".join(block)


def normalise(text: str, lowercase: bool) -> str:
    text = unicodedata.normalize("NFKC", text).translate(PLAIN)
    text = re.sub(r"\s+", " ", text).strip()
    return text.lower() if lowercase else text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--min-chars", type=int, default=20)
    ap.add_argument("--lowercase", type=boolean, default=True)
    args = ap.parse_args()

    seen, sentences = set(), []
    for path in sorted(args.files):  # sorted: the order on the command line must not matter
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for block in paragraphs(text):
            for sentence in SENTENCE_END.split(block):
                sentence = normalise(sentence, args.lowercase)
                if len(sentence) >= args.min_chars and sentence not in seen:  # exact dedup
                    seen.add(sentence)
                    sentences.append(sentence)

    order = list(range(len(sentences)))
    random.Random(args.seed).shuffle(order)
    n_holdout = round(len(sentences) * args.holdout)
    held = set(order[:n_holdout])
    train = [s for i, s in enumerate(sentences) if i not in held]
    holdout = [s for i, s in enumerate(sentences) if i in held]

    for name, lines in (("train.txt", train), ("holdout.txt", holdout)):
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(line + "\n" for line in lines)
    print(f"{len(sentences)} sentences from {len(args.files)} files: {len(train)} train, {len(holdout)} holdout")


if __name__ == "__main__":
    main()
