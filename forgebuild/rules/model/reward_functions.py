"""Rewards for the recipes that learn from a score (grpo, online-dpo).

A Forgefile names its rewards as a list; each entry is a string or a table:

    rewards = [
        "rewards.py:exact_answer",                       # a function in a file of the project, weight 1
        "model:rm",                                      # a reward-model target, weight 1
        "exact",                                         # a built-in, weight 1
        { code = "rewards.py:exact_answer", weight = 0.5 },
        { model = "model:rm", weight = 0.5 },
        { builtin = "exact", weight = 1.0 },
        { builtin = "format", pattern = "^\\\\s*-?\\\\d+", weight = 0.2 },
        { builtin = "length", target = 8, weight = 0.1 },
    ]

`format` needs a `pattern` and `length` a `target`, so as bare strings they are
errors that say which table to write instead.

This module is imported by the planner (the pydantic part): torch, transformers
and trl are never imported here. `load_rewards` turns validated entries into
what TRL's GRPOTrainer and OnlineDPOTrainer take as `reward_funcs`: a callable
per code reference and built-in (called as `f(prompts=..., completions=...,
**columns)`, returning one float or None per completion) and a folder path per
reward model (TRL loads it as AutoModelForSequenceClassification).
"""
from __future__ import annotations

import hashlib
import inspect
import numbers
import os
import re
import sys
import traceback
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from forgebuild import limits

BUILTINS = ("exact", "format", "length")
SHAPES = "write FILE.py:FUNCTION, model:NAME, or one of exact, format, length"
MODEL_TARGET = re.compile(r"^model:[A-Za-z0-9_][A-Za-z0-9_.-]*$")
TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Keyword arguments TRL passes besides the dataset's columns: not "columns" in messages.
TRAINER_KWARGS = ("completion_ids", "trainer_state", "log_extra", "log_metric", "environments")


class RewardError(Exception):
    """A reward could not be loaded, or failed while scoring; the message names the reference."""


def _error(message: str) -> PydanticCustomError:
    """A validation error whose text the Forgefile loader prints as it is."""
    # the text goes in as context: pydantic fills {message} and leaves braces in it alone
    return PydanticCustomError("reward", "{message}", {"message": message})


def _describe(value) -> str:
    kind = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f'string "{value}"'
    if isinstance(value, (int, float)):
        return f"{kind[type(value)]} {value}"
    return kind.get(type(value), type(value).__name__)


def split_code(reference: str) -> tuple[str, str] | None:
    """'dir/rewards.py:exact_answer' -> ('dir/rewards.py', 'exact_answer'); None when it is not that shape."""
    file, sep, function = reference.rpartition(":")
    if not sep or not file.endswith(".py") or len(file) <= 3 or not function.isidentifier():
        return None
    return file, function


def _from_string(text: str) -> dict:
    if text in BUILTINS:
        return {"builtin": text}
    if text.startswith("model:"):
        if MODEL_TARGET.match(text):
            return {"model": text}
    elif split_code(text):
        return {"code": text}
    from forgebuild.errors import did_you_mean  # only on the error path

    hint = did_you_mean(text, BUILTINS) if ":" not in text and ".py" not in text else ""
    raise _error(f"'{text}' is not a reward: {SHAPES}{hint}")


class Reward(BaseModel):
    """One reward: exactly one of `code`, `model` or `builtin`, and its weight."""
    model_config = ConfigDict(extra="forbid")
    code: str | None = Field(None, description=(
        "FILE.py:FUNCTION, a function in a Python file of the project (relative to the Forgefile), "
        "called as f(prompts=..., completions=..., **columns) and returning one number per completion"))
    model: str | None = Field(None, description="model:NAME, a reward-model target (a sequence classifier)")
    builtin: Literal["exact", "format", "length"] | None = Field(None, description=(
        "exact: partial credit against the row's `answer`; format: 1 when `pattern` matches; "
        "length: closeness to `target` characters"))
    weight: float = Field(1.0, allow_inf_nan=False, description="this reward's weight in the weighted sum")
    pattern: str | None = Field(None, description='builtin = "format": the regular expression (re.search)')
    target: int | None = Field(None, ge=1, le=limits.AMOUNT, description='builtin = "length": the wanted length in characters')

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        if isinstance(value, str):
            return _from_string(value)
        if isinstance(value, (dict, Reward)):
            return value
        raise _error(f"expected a string or a table, got {_describe(value)}")

    @field_validator("weight", mode="before")
    @classmethod
    def _weight_number(cls, value):
        if isinstance(value, bool):
            raise _error(f"expected a number, got {_describe(value)}")
        return value

    @field_validator("code")
    @classmethod
    def _code_shape(cls, value):
        if value is not None and not split_code(value):
            raise _error(f"'{value}' is not a code reference: write FILE.py:FUNCTION, e.g. 'rewards.py:score'")
        return value

    @field_validator("model")
    @classmethod
    def _model_shape(cls, value):
        if value is not None and not MODEL_TARGET.match(value):
            hint = f" (did you mean 'model:{value}'?)" if TARGET_NAME.match(value) else ""
            raise _error(f"'{value}' is not a reward-model target: write model:NAME{hint}")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as e:
                raise _error(f"pattern '{value}' is not a valid regular expression: {e}") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k in ("code", "model", "builtin") if getattr(self, k) is not None]
        if not given:
            raise _error("a reward needs one of code, model or builtin, e.g. { code = \"rewards.py:score\" }")
        if len(given) > 1:
            both = " and ".join(given) if len(given) == 2 else "code, model and builtin"
            raise _error(f"a reward takes one of code, model or builtin, not {both}")
        if self.pattern is not None and self.builtin != "format":
            raise _error('pattern only applies to builtin = "format"')
        if self.target is not None and self.builtin != "length":
            raise _error('target only applies to builtin = "length"')
        if self.builtin == "format" and self.pattern is None:
            raise _error('builtin "format" needs a pattern: write { builtin = "format", pattern = "REGEX" }')
        if self.builtin == "length" and self.target is None:
            raise _error('builtin "length" needs a target: write { builtin = "length", target = CHARACTERS }')
        return self

    @property
    def kind(self) -> str:
        """'code', 'model' or 'builtin'."""
        return "code" if self.code else "model" if self.model else "builtin"

    @property
    def name(self) -> str:
        """The reference as written: 'rewards.py:exact_answer', 'model:rm', 'exact'."""
        return self.code or self.model or self.builtin

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        table = handler(core_schema)
        text = {"type": "string", "description": f"a reward with weight 1: {SHAPES}"}
        return {"anyOf": [text, table]}


def parse_reward(value) -> Reward:
    """A Forgefile entry (string or table) as a Reward; raises pydantic.ValidationError when it is wrong."""
    return Reward.model_validate(value)


def reward_problems(rewards: list[Reward], key: str = "rewards") -> list[tuple[str, str]]:
    """Problems of the list as a whole, as (key path, message): each entry was checked when it validated."""
    if not rewards:
        return [(key, f'no rewards: give at least one, e.g. {key} = ["rewards.py:score"]')]
    problems = []
    seen: dict[str, int] = {}
    for i, reward in enumerate(rewards):
        same = reward.model_dump(exclude={"weight"})
        identity = repr(sorted(same.items()))
        if identity in seen:
            problems.append((f"{key}.{i}", f"the same reward as {key}[{seen[identity]}]; "
                                           f"write it once with the weights added"))
        else:
            seen[identity] = i
    if all(r.weight == 0 for r in rewards):
        problems.append((key, "every reward has weight 0: there would be nothing to learn from"))
    return problems


def reward_inputs(rewards: list[Reward], key: str = "rewards") -> dict[str, str]:
    """The files and targets the rewards read: {'rewards.0': 'rewards.py', 'rewards.1': 'model:rm'}."""
    found = {}
    for i, reward in enumerate(rewards):
        if reward.code:
            found[f"{key}.{i}"] = split_code(reward.code)[0]
        elif reward.model:
            found[f"{key}.{i}"] = reward.model
    return found


def reward_file_problems(rewards: list[Reward], files: dict[str, list], key: str = "rewards") -> list[tuple]:
    """Each code reward's function looked up in its file, which is parsed, never imported (the
    planning path imports no user code): `check_inputs` of the recipes that take rewards."""
    problems = []
    for i, reward in enumerate(rewards):
        if reward.code and files.get(f"{key}.{i}"):
            message = code_problem(reward.code, files[f"{key}.{i}"][0][1])
            if message:
                problems.append((f"{key}.{i}", message))
    return problems


def code_problem(reference: str, path: str) -> str | None:
    """Why FILE.py:FUNCTION names nothing: the file does not parse, or binds no such name at its
    top level. None when it does, or when the file may bind names a parser cannot see
    (`from x import *`, `globals()[...] = ...`)."""
    import ast

    file, function = split_code(reference)
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=file)
    except SyntaxError as e:
        return f"{file} does not parse: {e.msg} (line {e.lineno})"
    except (OSError, ValueError) as e:  # unreadable, or a NUL byte: the import would fail the same way
        return f"{file} cannot be read: {e}"
    names = _top_level_names(tree)
    if names is None or function in names:
        return None
    from forgebuild.errors import did_you_mean

    return f"{file} has no function '{function}'{did_you_mean(function, sorted(names))}"


def _top_level_names(tree) -> set[str] | None:
    """Names a module binds when it runs: defs, classes, assignments and imports, also inside
    top-level if / try / with / for blocks. None when it binds names dynamically."""
    import ast

    names: set[str] = set()
    scopes = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

    def visit(node) -> bool:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(child.name)  # its body is another scope
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                if any(alias.name == "*" for alias in child.names):
                    return False
                names.update((alias.asname or alias.name).split(".")[0] for alias in child.names)
            elif isinstance(child, ast.Name):
                if isinstance(child.ctx, ast.Store):
                    names.add(child.id)
                elif child.id in ("globals", "setattr", "exec"):
                    return False
            elif not isinstance(child, scopes) and not visit(child):
                return False
        return True

    return names if visit(tree) else None


# ------------------------------------------------------------------ scoring

def completion_text(completion) -> str:
    """The text of one completion: a string, or chat messages (the last message's content)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content")
    elif isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        last = completion[-1]
        content = last.get("content") if isinstance(last, dict) else last
    else:
        return str(completion)
    if content is None:
        return ""
    if isinstance(content, (list, tuple)):  # content parts: [{"type": "text", "text": "..."}]
        return "".join(p.get("text") or "" if isinstance(p, dict) else str(p) for p in content)
    return str(content)


NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\.\d+(?![\w])")
_WRAPPING = "*_`'\""
_TRAILING = ".,;:!?"


def normal_answer(text: str) -> str:
    """Whitespace collapsed, surrounding * _ ` ' " and trailing . , ; : ! ? removed, casefolded."""
    text = " ".join(text.split())
    previous = None
    while text != previous:
        previous = text
        text = text.strip(_WRAPPING).rstrip(_TRAILING).strip()
    return text.casefold()


def answer_number(text: str) -> float | None:
    if not NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def exact_score(completion: str, answer) -> float | None:
    """Partial credit for matching `answer` (see `ExactReward`); None when there is no answer."""
    if isinstance(answer, (list, tuple)):  # several acceptable answers: the best score
        scores = [s for s in (exact_score(completion, a) for a in answer) if s is not None]
        return max(scores) if scores else None
    if answer is None or isinstance(answer, bool):
        return None
    wanted = normal_answer(str(answer))
    if not wanted:
        return None
    value = answer_number(wanted)
    lines = [line for line in completion.splitlines() if line.strip()]
    heads = {normal_answer(lines[0]), normal_answer(completion.split()[0])} if lines else set()
    if wanted in heads or (value is not None and value in {answer_number(h) for h in heads}):
        return 1.0
    if value is not None:
        if any(float(m.group().replace(",", "")) == value for m in NUMBER.finditer(completion)):
            return 0.5
        return 0.1 if any(c.isdigit() for c in completion) else 0.0
    words = r"\s+".join(re.escape(w) for w in wanted.split())
    if re.search(rf"(?<!\w){words}(?!\w)", completion.casefold()):
        return 0.5
    return 0.0


def format_score(completion: str, pattern: re.Pattern) -> float:
    """1.0 when `pattern` is found anywhere in the completion (re.search), else 0.0."""
    return 1.0 if pattern.search(completion) else 0.0


def length_score(completion: str, target: int) -> float:
    """1 - |characters - target| / max(target, characters), clipped to [0, 1]."""
    n = len(completion)
    return min(1.0, max(0.0, 1.0 - abs(n - target) / max(target, n)))


def _columns(kwargs: dict) -> list[str]:
    return sorted(k for k in kwargs if k not in TRAINER_KWARGS)


class ExactReward:
    """builtin "exact": each completion against its row's `answer` column, with partial credit.

    - 1.0: the completion's first non-empty line, or its first whitespace-separated token, equals the
      answer once both are normalised (whitespace collapsed, case ignored, surrounding * _ ` ' " and
      trailing . , ; : ! ? removed; numbers compare by value, so "42.0" and "1,000" match 42 and 1000);
    - 0.5: otherwise, the answer appears inside the completion as a whole word or phrase (a numeric
      answer: as one of the numbers in it, by value: "x = 42" yes, "420" and "4.2" no);
    - 0.1: otherwise, the answer is numeric and the completion contains a digit;
    - 0.0: otherwise.

    A list of answers scores the best of them; a row whose answer is None or empty gets None
    (TRL leaves it out). GRPO needs rewards that differ within a group, hence the partial credit.
    """

    def __init__(self, name: str = "exact"):
        self.__name__ = name

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        if "answer" not in kwargs:
            columns = ", ".join(_columns(kwargs)) or "none"
            raise RewardError(f"reward {self.__name__}: the data has no 'answer' column to compare completions "
                              f"with (columns: {columns})")
        return [exact_score(completion_text(c), a) for c, a in zip(completions, kwargs["answer"], strict=True)]


class FormatReward:
    """builtin "format": 1.0 when re.search(pattern, completion) finds a match, else 0.0."""

    def __init__(self, pattern: str, name: str = "format"):
        self.__name__ = name
        self.pattern = re.compile(pattern)

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        return [format_score(completion_text(c), self.pattern) for c in completions]


class LengthReward:
    """builtin "length": 1 - |characters - target| / max(target, characters), clipped to [0, 1]."""

    def __init__(self, target: int, name: str = "length"):
        self.__name__ = name
        self.target = target

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        return [length_score(completion_text(c), self.target) for c in completions]


# ------------------------------------------------------------------ code references

def _log_to_stderr(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")


def _raised(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1].lower() in "aeiou" else f"a {kind}"


def _load_module(reference: str, path: str, file: str, log: Callable[[str], None]):
    if not os.path.isfile(path):
        raise RewardError(f"reward {reference}: file {file} not found")
    real = os.path.realpath(path)
    with open(real, "rb") as f:  # keyed by place and content: an edited file loads afresh
        digest = hashlib.sha1(real.encode() + b"\0" + f.read()).hexdigest()
    name = "forgebuild_reward_" + digest[:16]
    if name in sys.modules:
        return sys.modules[name]
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, real)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(real)
    if folder not in sys.path:  # helpers beside the file import, after the libraries: a torch.py or
        sys.path.append(folder)  # datasets/ there must not shadow them in the worker (issue 11)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        del sys.modules[name]
        message = f"reward {reference}: {file} raised {_raised(e)}"
        log(f"{message}\n{traceback.format_exc()}")
        raise RewardError(message) from e
    return module


def _function(reference: str, module, file: str, function: str):
    if not hasattr(module, function):
        from forgebuild.errors import did_you_mean

        callables = [k for k, v in vars(module).items() if callable(v) and not k.startswith("__")]
        hint = did_you_mean(function, callables)
        raise RewardError(f"reward {reference}: {file} has no function '{function}'{hint}")
    found = getattr(module, function)
    if not callable(found):
        raise RewardError(f"reward {reference}: '{function}' is {_a(type(found).__name__)}, not a function")
    return found


class CodeReward:
    """A function from the project, checked: its failures and wrong returns become RewardErrors.

    TRL calls it as f(prompts=..., completions=..., **columns); a function without **kwargs gets
    only the arguments it names. It returns one number (or None: no reward) per completion.
    """

    def __init__(self, reference: str, func: Callable, log: Callable[[str], None] | None = None):
        self.__name__ = reference
        self.reference = reference
        self.func = func
        self.log = log or _log_to_stderr
        try:
            parameters = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):
            parameters = None
        if parameters is None or any(p.kind is p.VAR_KEYWORD for p in parameters):
            self.accepts = None  # everything
        else:
            self.accepts = {p.name: p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def arguments(self, prompts, completions, kwargs) -> dict:
        """The keyword arguments the function takes, of those given; a missing one is a RewardError naming it."""
        given = {"prompts": prompts, "completions": completions, **kwargs}
        if self.accepts is None:
            return given
        missing = [n for n, p in self.accepts.items() if p.default is p.empty and n not in given]
        if missing:
            columns = ", ".join(_columns(kwargs)) or "none"
            raise RewardError(f"reward {self.reference} takes {', '.join(repr(m) for m in missing)}, which the data "
                              f"does not have (columns: {columns})")
        return {k: v for k, v in given.items() if k in self.accepts}

    def _failed(self, e: Exception) -> RewardError:
        message = f"reward {self.reference} raised {_raised(e)}"
        self.log(f"{message}\n{traceback.format_exc()}")
        return RewardError(message)

    def _checked(self, result, count: int) -> list[float | None]:
        if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):  # numpy array, tensor
            result = result.tolist()
        if not isinstance(result, (list, tuple)):
            shown = "None" if result is None else _a(type(result).__name__)
            raise RewardError(f"reward {self.reference} returned {shown}, not a list of numbers "
                              f"(one per completion)")
        if len(result) != count:
            raise RewardError(f"reward {self.reference} returned {len(result)} "
                              f"reward{'s' * (len(result) != 1)} for {count} completion{'s' * (count != 1)}")
        scores = []
        for i, value in enumerate(result):
            if value is None:
                scores.append(None)
            elif isinstance(value, numbers.Real):
                scores.append(float(value))
            else:
                raise RewardError(f"reward {self.reference} returned {value!r} ({_a(type(value).__name__)}) at "
                                  f"position {i}; a reward is a number, or None for no reward")
        return scores

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        arguments = self.arguments(prompts, completions, kwargs)
        try:
            result = self.func(**arguments)
        except Exception as e:
            raise self._failed(e) from e
        return self._checked(result, len(completions))

    def __reduce__(self):
        # the function's module is not importable by name: a copy loads the file again
        module = sys.modules.get(getattr(self.func, "__module__", ""), None)
        path = getattr(module, "__file__", None)
        if path is None:
            return type(self), (self.reference, self.func, self.log)
        return _reload, (self.reference, path, self.func.__name__, self.log, type(self))


class AsyncCodeReward(CodeReward):
    """An `async def` reward function: TRL awaits this one alongside its other async rewards."""

    async def __call__(self, prompts=None, completions=None, **kwargs) -> list[float | None]:
        arguments = self.arguments(prompts, completions, kwargs)
        try:
            result = await self.func(**arguments)
        except Exception as e:
            raise self._failed(e) from e
        return self._checked(result, len(completions))


def _reload(reference, path, function, log, kind):
    file = os.path.basename(path)
    module = _load_module(reference, path, file, log)
    return kind(reference, _function(reference, module, file, function), log)


def load_code(reference: str, project_dir: str, log: Callable[[str], None] | None = None) -> CodeReward:
    """The checked callable for 'FILE.py:FUNCTION', the file relative to `project_dir`."""
    log = log or _log_to_stderr
    file, function = split_code(reference)
    module = _load_module(reference, os.path.join(project_dir, file), file, log)
    found = _function(reference, module, file, function)
    kind = AsyncCodeReward if inspect.iscoroutinefunction(found) or inspect.iscoroutinefunction(
        getattr(found, "__call__", None)) else CodeReward
    return kind(reference, found, log)


def load_rewards(rewards, project_dir: str, model_paths: dict[str, str] | None = None,
                 log: Callable[[str], None] | None = None) -> tuple[list, list[float], list[str]]:
    """(reward_funcs, reward_weights, names) for GRPOTrainer / OnlineDPOTrainer.

    `rewards` are Rewards (or Forgefile entries, parsed here); `model_paths` maps a reward-model
    target ('model:rm') to its built folder, which is what goes into reward_funcs for it. A name
    written twice (two format rewards) gets '#2', '#3' so that TRL's logging keys stay apart.
    """
    model_paths = model_paths or {}
    funcs, weights, names = [], [], []
    for entry in rewards:
        reward = entry if isinstance(entry, Reward) else parse_reward(entry)
        name = reward.name
        if name in names:
            n = 2
            while f"{name}#{n}" in names:
                n += 1
            name = f"{name}#{n}"
        if reward.code:
            func = load_code(reward.code, project_dir, log)
            func.__name__ = name
        elif reward.model:
            if reward.model not in model_paths:
                raise RewardError(f"reward {reward.model}: no built model for {reward.model}")
            func = model_paths[reward.model]
        elif reward.builtin == "exact":
            func = ExactReward(name)
        elif reward.builtin == "format":
            func = FormatReward(reward.pattern, name)
        else:
            func = LengthReward(reward.target, name)
        funcs.append(func)
        weights.append(float(reward.weight))
        names.append(name)
    return funcs, weights, names
