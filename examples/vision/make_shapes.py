"""Write the vision example's data: pictures of one to three shapes of one colour and kind, and what
to ask about them. Seeded and deterministic: the same arguments write byte-identical files.

    python3 make_shapes.py --out data --images 600 --seed 0

    data/images/0000.png ...   32x32 RGB pictures on white: 1-3 shapes, one of 4 colours x 3 kinds
    data/captions.jsonl        {"image": "images/0000.png", "caption": "two red squares"}
    data/vqa.jsonl             three questions a picture: its colour, its count, its kind
    data/pairs.jsonl           each question's right answer (chosen) against a wrong one (rejected)
    data/words.jsonl           {"text": ...}: each caption, and each question with its answer (a
                               language model's corpus: text only, no picture)

Chance on the questions: a colour 1 in 4, a count and a kind 1 in 3 (0.31 over the three).
Image paths are relative to the JSON Lines files, as the `images` rule reads them.
"""
from __future__ import annotations

import argparse
import json
import os
import random

from PIL import Image, ImageDraw

SIZE = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (225, 200, 30)}
KINDS = ("square", "circle", "triangle")
COUNTS = ("one", "two", "three")
# the four 16x16 quarters: each shape takes one, so shapes never overlap and each is whole
QUARTERS = ((0, 0), (16, 0), (0, 16), (16, 16))
QUESTIONS = {"colour": "what colour are the shapes?", "count": "how many shapes are there?",
             "kind": "what kind of shape is it?"}


def draw(picture: ImageDraw.ImageDraw, kind: str, box: tuple, fill: tuple) -> None:
    x0, y0, x1, y1 = box
    if kind == "square":
        picture.rectangle(box, fill=fill)
    elif kind == "circle":
        picture.ellipse(box, fill=fill)
    else:
        picture.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def picture(rng: random.Random, colour: str, kind: str, count: int) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    canvas = ImageDraw.Draw(image)
    for qx, qy in rng.sample(QUARTERS, count):
        side = rng.randint(9, 13)
        x, y = qx + rng.randint(1, 15 - side), qy + rng.randint(1, 15 - side)
        draw(canvas, kind, (x, y, x + side, y + side), COLOURS[colour])
    return image


def caption(colour: str, kind: str, count: int) -> str:
    return f"{COUNTS[count - 1]} {colour} {kind}{'s' if count > 1 else ''}"


def answers(colour: str, kind: str, count: int) -> dict[str, str]:
    return {"colour": colour, "count": COUNTS[count - 1], "kind": kind}


def wrong(rng: random.Random, question: str, right: str) -> str:
    options = {"colour": list(COLOURS), "count": list(COUNTS), "kind": list(KINDS)}[question]
    return rng.choice([o for o in options if o != right])


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    captions, vqa, pairs, words = [], [], [], []
    for i in range(args.images):
        colour, kind, count = rng.choice(list(COLOURS)), rng.choice(KINDS), rng.randint(1, 3)
        rel = f"images/{i:04d}.png"
        picture(rng, colour, kind, count).save(os.path.join(args.out, rel), optimize=False)
        captions.append({"image": rel, "caption": caption(colour, kind, count)})
        words.append(caption(colour, kind, count))
        for question, right in answers(colour, kind, count).items():
            vqa.append({"image": rel, "question": QUESTIONS[question], "answer": right, "asks": question})
            pairs.append({"image": rel, "prompt": QUESTIONS[question], "chosen": right,
                          "rejected": wrong(rng, question, right)})
            words.append(f"{QUESTIONS[question]} {right}")
    write_jsonl(os.path.join(args.out, "captions.jsonl"), captions)
    write_jsonl(os.path.join(args.out, "vqa.jsonl"), vqa)
    write_jsonl(os.path.join(args.out, "pairs.jsonl"), pairs)
    write_jsonl(os.path.join(args.out, "words.jsonl"), [{"text": line} for line in words])
    print(f"wrote {args.images} pictures, {len(vqa)} questions and {len(pairs)} preference pairs to {args.out}")


if __name__ == "__main__":
    main()
