"""Writes paired demo programs: legacy/NAME.tly in TALLY (an in-house report language) and modern/NAME.py, the
same procedure in Python, translated by fixed rules. Replace this step with your own paired files.

    python3 scripts/make_programs.py --seed 7 --count 2000 --out OUT      # OUT/legacy/*.tly, OUT/modern/*.py

Each procedure has one statement (a LET, a PRINT, or an IF or FOR around one) and a RETURN: a size the
tiny model of the preset learns to translate in a few hundred steps.

TALLY -> Python: PROC/ENDPROC -> def ...:, LET x = e -> x = e, IF c THEN/ELSE/ENDIF -> if c:/else:,
FOR i FROM a TO b/NEXT -> for i in range(a, b + 1):, PRINT e -> print(e), RETURN -> return,
= -> ==, <> -> !=, MOD -> %, AND/OR -> and/or; blocks indent by 2 in TALLY and 4 in Python.
"""
import argparse
import os
import random

VERBS = ["net", "gross", "total", "scale", "count", "check", "apply", "sum", "round", "split", "price", "rate"]
NAMES = ["a", "b", "n", "x", "qty", "price", "rate", "fee"]
LOCALS = ["total", "tmp", "res"]
OPS = ["+", "-", "*", "MOD"]
CMPS = [">", "<", ">=", "<=", "=", "<>"]
PY = {"MOD": "%", "=": "==", "<>": "!=", "AND": "and", "OR": "or"}


def expression(rng, names):
    left, right = rng.choice(names), rng.choice(names + [str(rng.randint(1, 9))])
    return [left, rng.choice(OPS), right]


def condition(rng, names):
    parts = [rng.choice(names), rng.choice(CMPS), str(rng.randint(0, 9))]
    if rng.random() < 0.25:
        parts += [rng.choice(["AND", "OR"]), rng.choice(names), rng.choice(CMPS), str(rng.randint(0, 9))]
    return parts


def modern(tokens):
    return " ".join(PY.get(t, t) for t in tokens)


def statement(rng, names, depth):
    """(TALLY lines, Python lines) of one statement at this depth, and the name it assigns, if any."""
    pad_t, pad_p = "  " * depth, "    " * depth
    kind = rng.choices(["let", "if", "for", "print"], [5, 2, 1, 1] if depth == 1 else [5, 0, 0, 1])[0]
    if kind == "let":
        target, expr = rng.choice(LOCALS + names), expression(rng, names)
        return [f"{pad_t}LET {target} = {' '.join(expr)}"], [f"{pad_p}{target} = {modern(expr)}"], target
    if kind == "print":
        expr = expression(rng, names)
        return [f"{pad_t}PRINT {' '.join(expr)}"], [f"{pad_p}print({modern(expr)})"], None
    if kind == "if":
        cond = condition(rng, names)
        t, p, _ = statement(rng, names, depth + 1)
        tally, python = [f"{pad_t}IF {' '.join(cond)} THEN", *t], [f"{pad_p}if {modern(cond)}:", *p]
        if rng.random() < 0.4:
            t, p, _ = statement(rng, names, depth + 1)
            tally, python = tally + [f"{pad_t}ELSE", *t], python + [f"{pad_p}else:", *p]
        return tally + [f"{pad_t}ENDIF"], python, None
    var, low, high = rng.choice(["i", "j", "k"]), str(rng.randint(0, 3)), rng.choice(names)
    t, p, _ = statement(rng, names + [var], depth + 1)
    return ([f"{pad_t}FOR {var} FROM {low} TO {high}", *t, f"{pad_t}NEXT"],
            [f"{pad_p}for {var} in range({low}, {high} + 1):", *p], None)


def program(rng):
    """(name, TALLY text, Python text) of one random procedure."""
    name = rng.choice(VERBS)
    params = rng.sample(NAMES, rng.randint(1, 2))
    tally, python, names = [f"PROC {name}({', '.join(params)})"], [f"def {name}({', '.join(params)}):"], list(params)
    t, p, assigned = statement(rng, names, 1)
    tally, python = tally + t, python + p
    if assigned and assigned not in names:
        names.append(assigned)
    result = rng.choice(names)
    return name, "\n".join(tally + [f"  RETURN {result}", "ENDPROC"]) + "\n", \
        "\n".join(python + [f"    return {result}"]) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True, help="a folder: legacy/NAME.tly and modern/NAME.py")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    programs = [program(rng) for _ in range(args.count)]
    for folder in ("legacy", "modern"):
        os.makedirs(os.path.join(args.out, folder), exist_ok=True)
    for i, (name, tally, python) in enumerate(programs):
        stem = f"{i:05d}_{name}"
        with open(os.path.join(args.out, "legacy", stem + ".tly"), "w", encoding="utf-8") as f:
            f.write(tally)
        with open(os.path.join(args.out, "modern", stem + ".py"), "w", encoding="utf-8") as f:
            f.write(python)


if __name__ == "__main__":
    main()
