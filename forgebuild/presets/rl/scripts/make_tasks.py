"""Writes the demo data of a firm's private benchmark for QSL, its in-house quant language: a stack
language over named market fields, where `exit entry SUB qty MUL` pushes exit and entry, subtracts
(exit - entry), pushes qty and multiplies: the profit of a trade.

    python3 scripts/make_tasks.py --seed 7 --count 2000 --part tasks --out OUT
    python3 scripts/make_tasks.py --seed 7 --count 500 --part library --out OUT

tasks: OUT/tasks.jsonl, one task a line: {"prompt", "completion", "answer"}: the request with its field
values, a reference QSL program and the value the program must compute (what rewards.py checks: any
program that computes it is right, `qty exit entry SUB MUL` too).
library: OUT/libNNNN.qsl, the firm's QSL code base, a few programs a file (the base is pretrained on it).
Replace both with your own: your tasks, your code.
"""
import argparse
import json
import os
import random

# Each task: the fields its request gives, a reference program, and the value it computes.
TASKS = {
    "notional": (("qty", "px"), "qty px MUL", lambda f: f["qty"] * f["px"]),
    "spread": (("bid", "ask"), "ask bid SUB", lambda f: f["ask"] - f["bid"]),
    "mid": (("bid", "ask"), "bid ask ADD 2 DIV", lambda f: (f["bid"] + f["ask"]) / 2),
    "pnl": (("qty", "entry", "exit"), "exit entry SUB qty MUL", lambda f: (f["exit"] - f["entry"]) * f["qty"]),
    "cost": (("qty", "px", "fee"), "fee qty px MUL ADD", lambda f: f["fee"] + f["qty"] * f["px"]),
    "return": (("entry", "exit"), "exit entry SUB entry DIV", lambda f: (f["exit"] - f["entry"]) / f["entry"]),
    "vwap": (("qty", "px", "qty2", "px2"), "qty px MUL qty2 px2 MUL ADD qty qty2 ADD DIV",
             lambda f: (f["qty"] * f["px"] + f["qty2"] * f["px2"]) / (f["qty"] + f["qty2"])),
    "fee_bps": (("px", "qty", "bps"), "px qty MUL bps MUL 10000 DIV", lambda f: f["px"] * f["qty"] * f["bps"] / 10000),
}


def task(rng):
    """(kind, request, reference program, value) of one random task."""
    kind = rng.choice(sorted(TASKS))
    names, reference, value = TASKS[kind]
    fields = {name: rng.randint(1, 99) for name in names}
    if "ask" in fields:
        fields["ask"] = fields["bid"] + rng.randint(1, 9)
    request = kind + " " + " ".join(f"{name}={fields[name]}" for name in names)
    return kind, request, reference, value(fields)


def write_tasks(rng, count, out):
    with open(os.path.join(out, "tasks.jsonl"), "w", encoding="utf-8") as f:
        for _ in range(count):
            _, request, reference, value = task(rng)
            f.write(json.dumps({"prompt": f"{request}\nqsl:", "completion": f" {reference}", "answer": repr(value)}) + "\n")


def write_library(rng, count, out):
    """`count` files of a few programs each."""
    for i in range(count):
        with open(os.path.join(out, f"lib{i:04d}.qsl"), "w", encoding="utf-8") as f:
            f.write("".join(task(rng)[2] + "\n" for _ in range(rng.randint(2, 5))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--part", choices=["tasks", "library"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    (write_tasks if args.part == "tasks" else write_library)(rng, args.count, args.out)


if __name__ == "__main__":
    main()
