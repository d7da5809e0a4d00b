"""The prompts a generation samples from: the rows of a dataset target or a record file, or a template's
combinations of variables. Torch-free: the planner validates templates with it.

    template = { text = "{a}+{b}=", vars = { a = { range = [0, 100] }, b = [1, 2, 3] }, sample = 200 }

A template's prompts are the combinations of its variables' values, in the order the variables and
their values are written (the last variable varies fastest), or a seeded sample of them. Each prompt
row keeps its variables as columns, so a verifier can check the answer from them.
"""
from __future__ import annotations

import json
import math
import os
import random
import string

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from forgebuild import limits

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool
ROLES = ("system", "user", "assistant", "tool")


class Range(BaseModel):
    """`{ range = [0, 100] }` or `{ range = [0, 100, 5] }`: integers as Python's range gives them (the stop excluded)."""
    model_config = ConfigDict(extra="forbid")
    range: list[StrictInt] = Field(min_length=2, max_length=3, description="[start, stop] or [start, stop, step]; "
                                                                             "stop is excluded, as in Python")

    def values(self) -> range:
        return range(*self.range)


class Template(BaseModel):
    """Prompts made from a text with `{name}` fields and the values of each name."""
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="the prompt, with {name} fields (Python's str.format)")
    vars: dict[str, list[Scalar] | Range] = Field(description=(
        "name -> a list of values, or { range = [start, stop, step] }; every combination is a prompt"))
    sample: int | None = Field(None, ge=1, le=limits.AMOUNT, description=(
        "this many combinations, drawn without replacement with the generation's seed; unset: all of them"))

    def values(self, name: str) -> list | range:
        found = self.vars[name]
        return found.values() if isinstance(found, Range) else found

    def count(self) -> int:
        return math.prod(len(self.values(name)) for name in self.vars)


def template_problems(template: Template, key: str = "template") -> list[tuple[str, str]]:
    """What no build could use: a field the text names without a variable, an empty variable, a sample
    larger than the combinations."""
    problems = []
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template.text) if name is not None]
    except ValueError as e:
        return [(f"{key}.text", f"not a format string: {e} (write a literal brace as {{{{ or }}}})")]
    for name in dict.fromkeys(fields):
        if not name.isidentifier():
            problems.append((f"{key}.text", f"field {{{name}}}: write a variable's name alone, e.g. {{a}}"))
        elif name not in template.vars:
            known = ", ".join(template.vars) or "none"
            problems.append((f"{key}.text", f"field {{{name}}} names no variable (vars: {known})"))
    for name in template.vars:
        if len(template.values(name)) == 0:
            problems.append((f"{key}.vars.{name}", "has no value"))
    if not problems and template.sample is not None and template.sample > template.count():
        problems.append((f"{key}.sample", f"sample = {template.sample} is more than the {template.count()} "
                                          f"combinations of the variables"))
    if not problems:  # a format spec the values cannot take ("{a:d}" with a string): said now, not mid-build
        first = {name: template.values(name)[0] for name in template.vars}
        try:
            template.text.format(**first)
        except (ValueError, TypeError) as e:
            problems.append((f"{key}.text", f"cannot be filled with {first}: {e}"))
    return problems


def template_rows(template: Template, seed: int) -> list[dict]:
    """{"prompt", "columns"} for each chosen combination, in combination order."""
    names = list(template.vars)
    sizes = [len(template.values(name)) for name in names]
    total = math.prod(sizes)
    if template.sample is None:
        chosen = range(total)
    else:  # indices, not combinations: a sample of 10**12 combinations never lists them
        chosen = sorted(random.Random(seed).sample(range(total), template.sample))
    rows = []
    for index in chosen:
        picked = {}
        for name, size in zip(reversed(names), reversed(sizes)):  # mixed radix, the last name fastest
            index, digit = divmod(index, size)
            picked[name] = template.values(name)[digit]
        columns = {name: picked[name] for name in names}
        try:
            rows.append({"prompt": template.text.format(**columns), "columns": columns})
        except (ValueError, TypeError) as e:  # a spec one value cannot take ("{a:d}" with a and "x")
            raise PromptError(f"template: the prompt of {columns} cannot be made: {e}") from None
    return rows


class PromptError(ValueError):
    """A prompt row no model can be asked: the message names the file, the line and the field."""


def prompt_problem(prompt) -> str | None:
    """Why a prompt value cannot be asked (None when it can): a non-empty string, or a non-empty list
    of messages with a known role and string content."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "is empty"
    if not isinstance(prompt, list) or not prompt:
        return "expected a string or a list of messages"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            return f"message {i} is not {{\"role\": {' | '.join(ROLES)}, \"content\": a string}}"
    return None


def record_rows(files: list[tuple[str, str]], prompt_field: str) -> list[dict]:
    """{"prompt", "columns"} of every record of the files, (label, path) each, in order."""
    from forgebuild.rules.rows import DataError, read_records

    rows = []
    for label, path in files:
        try:
            for line, record in read_records(path):
                if not isinstance(record, dict) or prompt_field not in record:
                    raise PromptError(f"{label}:{line}: no field '{prompt_field}'")
                problem = prompt_problem(record[prompt_field])
                if problem:
                    raise PromptError(f"{label}:{line}: field '{prompt_field}' {problem}")
                columns = {k: v for k, v in record.items() if k != prompt_field}
                rows.append({"prompt": record[prompt_field], "columns": columns})
        except DataError as e:
            raise PromptError(str(e).replace(path, label, 1)) from None
    return rows


def target_files(address: str, folder: str, split: str | None) -> list[tuple[str, str]]:
    """A dataset-shaped artifact's split files (all of them in name order, or one), as (label, path)."""
    meta = os.path.join(folder, "dataset.json")
    if not os.path.isfile(meta):
        raise PromptError(f"{address} is not a dataset artifact: it has no dataset.json")
    with open(meta, encoding="utf-8") as f:
        splits = json.load(f)["splits"]
    if split is not None and split not in splits:
        raise PromptError(f"{address} has no split '{split}' (splits: {', '.join(sorted(splits))})")
    names = [split] if split is not None else sorted(splits)
    return [(f"{address}/{splits[n]['path']}", os.path.join(folder, splits[n]["path"])) for n in names]
