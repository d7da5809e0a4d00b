"""Public text for the stand-in model: the first modules of this Python's standard library, the kind
of code every open model was pretrained on.

    python3 scripts/public_text.py --files 80 --max-chars 6000 --out OUT    # OUT/NAME.py.txt, one per module
"""
from __future__ import annotations

import argparse
import glob
import os
import sysconfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, required=True)
    parser.add_argument("--max-chars", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:args.files]:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()[:args.max_chars]
        with open(os.path.join(args.out, os.path.basename(path) + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
