"""Writes the example's arithmetic datasets (committed under examples/data/arith; run again to
regenerate them exactly): supervised pairs, preference pairs with scores, and RL prompts."""
import json
import os
import random

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "arith")


def write(name, rows):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main():
    rng = random.Random(2026)
    pairs = [(rng.randint(0, 30), rng.randint(0, 30)) for _ in range(480)]
    prompt = "What is {}+{}?\nAnswer:"
    write("sft.jsonl", ({"question": prompt.format(a, b), "answer": f" {a + b}"} for a, b in pairs[:240]))
    pref = []
    for a, b in pairs[240:400]:
        off = rng.choice([-3, -2, -1, 1, 2, 3])
        # the score of a wrong answer falls with its distance from the right one (ODPO's offsets use it)
        pref.append({"prompt": prompt.format(a, b), "chosen": f" {a + b}", "rejected": f" {a + b + off}",
                     "score_chosen": 1.0, "score_rejected": round(1.0 - abs(off) / 4, 2)})
    write("pref.jsonl", pref)
    write("prompts.jsonl", ({"prompt": prompt.format(a, b), "answer": str(a + b)} for a, b in pairs[400:]))
    # the benchmark: questions no training set holds (the dataset rule could also decontaminate)
    seen = set(pairs)
    rng = random.Random(7)
    bench = []
    while len(bench) < 40:
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        if (a, b) not in seen:
            seen.add((a, b))
            bench.append({"prompt": prompt.format(a, b), "answer": str(a + b)})
    write("bench.jsonl", bench)


if __name__ == "__main__":
    main()
