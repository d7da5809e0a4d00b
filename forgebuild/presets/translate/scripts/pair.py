"""Pairs each legacy program with its modern translation into prompt/completion rows for SFT.

    python3 scripts/pair.py --legacy DIR --modern DIR --out pairs.jsonl

legacy/NAME.<any extension> pairs with modern/NAME.py; a file without its partner stops the build (exit 2),
naming it. The prompt is the legacy program under a `# TALLY` header, ending with a `# Python` header line the
model continues from; the completion is the Python program.
"""
import argparse
import json
import os
import sys


def stems(folder, suffix=None):
    """{stem: file name} of the files in a folder (only those ending in `suffix` when given)."""
    found = {}
    for name in sorted(os.listdir(folder)):
        if suffix is None or name.endswith(suffix):
            found[os.path.splitext(name)[0]] = name
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legacy", required=True)
    parser.add_argument("--modern", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    legacy, modern = stems(args.legacy), stems(args.modern, ".py")
    alone = sorted(set(legacy) ^ set(modern))
    if alone:
        side = "legacy" if alone[0] in legacy else "modern"
        sys.exit(f"pair.py: {side}/{(legacy if side == 'legacy' else modern)[alone[0]]} has no partner "
                 f"({len(alone)} unpaired files)")
    with open(args.out, "w", encoding="utf-8") as out:
        for stem in sorted(legacy):
            with open(os.path.join(args.legacy, legacy[stem]), encoding="utf-8") as f:
                source = f.read()
            with open(os.path.join(args.modern, modern[stem]), encoding="utf-8") as f:
                target = f.read()
            out.write(json.dumps({"prompt": f"# TALLY\n{source}# Python\n", "completion": target, "name": stem}) + "\n")


if __name__ == "__main__":
    main()
