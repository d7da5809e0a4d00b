"""Rewards of the QSL benchmark: GRPO trains on them (model:rl) and eval:quant scores the held-out tasks
with the same functions. Each is called with the prompts, the completions and the task's `answer` (the
value the program must compute) and returns one number per completion. A program reads the request's
fields by name: `pnl qty=3 entry=10 exit=12` binds qty, entry and exit. The rejection-sampling rounds
verify their programs with `computes` too (curate:round1, curate:round2). Editing this file retrains
model:rl, re-scores eval:quant and re-judges the rounds' cached programs."""
import re

OPS = {"ADD": lambda a, b: a + b, "SUB": lambda a, b: a - b, "MUL": lambda a, b: a * b, "DIV": lambda a, b: a / b}
FIELD = re.compile(r"(\w+)=(-?\d+)")


def run(program, fields):
    """The value a QSL program leaves on the stack (exactly one), or None when it does not run: an unknown
    word, an operator without two operands, a division by zero, or more than one value left."""
    stack = []
    for word in program.split():
        if word in OPS:
            if len(stack) < 2 or (word == "DIV" and stack[-1] == 0):
                return None
            right, left = stack.pop(), stack.pop()
            stack.append(OPS[word](left, right))
        elif word in fields:
            stack.append(fields[word])
        elif word.isdigit():
            stack.append(int(word))
        else:
            return None
    return stack[0] if len(stack) == 1 else None


def _values(prompts, completions):
    """What each completion's first line computes with its prompt's fields (None: it does not run)."""
    return [run(completion.strip().split("\n")[0], {k: int(v) for k, v in FIELD.findall(prompt)})
            for prompt, completion in zip(prompts, completions)]


def computes(prompts, completions, answer, **kwargs):
    """1 when the program runs and leaves the expected value, else 0: any program that computes it is right."""
    return [float(value is not None and abs(value - float(expected)) <= 1e-9 * max(1.0, abs(float(expected))))
            for value, expected in zip(_values(prompts, completions), answer)]


def runs(prompts, completions, **kwargs):
    """1 when the program runs at all: partial credit, so a group of wrong answers still has a better one."""
    return [float(value is not None) for value in _values(prompts, completions)]
