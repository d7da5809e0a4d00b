"""The `curate` rule's verifiers: what a Forgefile's `verify` entries mean, and running them.

    verify = [
      { kind = "answer", field = "answer", match = "numeric", tolerance = 0 },
      { kind = "regex", pattern = "^\\d+$", full = true },
      "verifiers.py:balanced",                                  # a code verifier, like a reward reference
      { kind = "code", function = "verifiers.py:close", threshold = 0.5, name = "close" },
      { kind = "length", max_chars = 40 },
      { kind = "dedup", against = ["prompts", "samples"], scope = "prompt" },
      { kind = "json", schema = { type = "object" } },          # or schema_file = "s.json"
      { kind = "python", tests = "tests", timeout = 5 },        # NOT a sandbox: see docs/rules/curate.md
      { kind = "reward_model", model = "model:rm", threshold = 0.0 },
    ]

Every verifier runs over every sample and gives, per sample, whether it passed, a number (code and
reward_model only) and, when it failed, a reason starting with the verifier's name. Torch-free: the
planner validates these entries; the reward model is scored by the build-only `reward_scores`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from forgebuild import limits
from forgebuild.errors import did_you_mean
from forgebuild.rules.model.reward_functions import (MODEL_TARGET, answer_number, completion_text, exact_score,
                                                     normal_answer, split_code)

# The keys each kind takes besides `kind` and `name`.
KINDS = {
    "answer": ("field", "match", "tolerance"),
    "regex": ("pattern", "full"),
    "code": ("function", "threshold"),
    "length": ("min_chars", "max_chars", "min_words", "max_words"),
    "dedup": ("against", "scope"),
    "json": ("schema", "schema_file"),
    "python": ("tests", "timeout"),
    "reward_model": ("model", "threshold"),
}
SCORED = ("code", "reward_model")  # the kinds that give a number besides pass or fail
SHOWN = 60  # characters of a completion quoted in a reason


def _error(message: str) -> PydanticCustomError:
    return PydanticCustomError("verifier", "{message}", {"message": message})


def _from_string(text: str) -> dict:
    if split_code(text):
        return {"kind": "code", "function": text}
    if text in ("answer", "dedup", "python"):  # the kinds that need no setting
        return {"kind": text}
    raise _error(f"'{text}' is not a verifier: write FILE.py:FUNCTION or a table {{ kind = ... }}; "
                 f"kinds: {', '.join(KINDS)}{did_you_mean(text, KINDS) if ':' not in text else ''}")


def _default(key: str, value) -> bool:
    found = Verifier.model_fields.get("schema_" if key == "schema" else key)
    return found is not None and value == found.get_default(call_default_factory=True)


class Verifier(BaseModel):
    """One entry of `verify`: a kind and that kind's settings (see the module docstring)."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kind: Literal[tuple(KINDS)] = Field(description="answer, regex, code, length, dedup, json, python or reward_model")
    name: str | None = Field(None, min_length=1, description="what stats, reasons and `score` call it (default: the "
                                                             "kind, or a code verifier's function name)")
    field: str = Field("answer", min_length=1, description="answer: the column holding the reference answer")
    match: Literal["exact", "numeric"] = Field("exact", description="answer: exact (as the GRPO reward `exact` scores "
                                                                   "1.0) or numeric (the leading number, by value)")
    tolerance: float = Field(0.0, ge=0, allow_inf_nan=False, description="answer, numeric: the largest difference accepted")
    pattern: str | None = Field(None, description="regex: the regular expression")
    full: bool = Field(False, description="regex: the whole completion must match (re.fullmatch), not a part (re.search)")
    function: str | None = Field(None, description="code: FILE.py:FUNCTION, called as f(prompts=, completions=, "
                                                   "**columns), one bool, number or reason string per sample")
    threshold: float = Field(0.5, allow_inf_nan=False, description="code, reward_model: a number passes when >= this")
    min_chars: int | None = Field(None, ge=0, le=limits.AMOUNT, description="length: fewest characters")
    max_chars: int | None = Field(None, ge=0, le=limits.AMOUNT, description="length: most characters")
    min_words: int | None = Field(None, ge=0, le=limits.AMOUNT, description="length: fewest words")
    max_words: int | None = Field(None, ge=0, le=limits.AMOUNT, description="length: most words")
    against: list[Literal["prompts", "samples"]] = Field(
        default_factory=lambda: ["prompts", "samples"],
        description="dedup: reject a completion equal to its prompt, and/or to an earlier sample")
    scope: Literal["prompt", "all"] = Field("prompt", description="dedup: compare within one prompt's samples, or all")
    schema_: dict | None = Field(None, alias="schema", description="json: the JSON schema the completion must satisfy")
    schema_file: str | None = Field(None, description="json: a JSON schema file of the project")
    tests: str = Field("tests", min_length=1, description="python: the column whose code runs after the completion")
    timeout: float = Field(5.0, gt=0, le=3600, description="python: seconds a run may take")
    model: str | None = Field(None, description="reward_model: model:NAME, a target built with recipe \"reward\"")

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value):
        if isinstance(value, str):
            return _from_string(value)
        if not isinstance(value, dict):
            raise _error(f"expected a string or a table, got {type(value).__name__}")
        kind = value.get("kind")
        if kind is None:
            raise _error(f"no kind: write one of {', '.join(KINDS)}")
        if kind not in KINDS:
            raise _error(f"unknown verifier kind '{kind}'{did_you_mean(str(kind), KINDS)}; kinds: {', '.join(KINDS)}")
        # a default is no setting: a table validated again arrives with every field filled in
        wrong = [k for k, v in value.items() if k not in ("kind", "name", *KINDS[kind]) and not _default(k, v)]
        if wrong:
            raise _error(f"key '{wrong[0]}' does not apply to kind \"{kind}\" (its keys: "
                         f"{', '.join(('name', *KINDS[kind]))})")
        return value

    @model_validator(mode="after")
    def _settings(self):
        if self.kind == "regex":
            if self.pattern is None:
                raise _error('regex needs a pattern: write { kind = "regex", pattern = "REGEX" }')
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise _error(f"pattern '{self.pattern}' is not a valid regular expression: {e}") from None
        if self.kind == "code" and not (self.function and split_code(self.function)):
            raise _error(f"function '{self.function}' is not a code reference: write FILE.py:FUNCTION, "
                         f"e.g. 'verifiers.py:check'")
        if self.kind == "json" and (self.schema_ is None) == (self.schema_file is None):
            raise _error("json takes one of schema or schema_file")
        if self.kind == "reward_model" and not (self.model and MODEL_TARGET.match(self.model)):
            raise _error(f"model '{self.model}' is not a reward-model target: write model:NAME")
        if self.kind == "length":
            self._length_settings()
        return self

    def _length_settings(self) -> None:
        if all(getattr(self, k) is None for k in KINDS["length"]):
            raise _error("length needs a bound: min_chars, max_chars, min_words or max_words")
        for unit in ("chars", "words"):
            low, high = getattr(self, f"min_{unit}"), getattr(self, f"max_{unit}")
            if low is not None and high is not None and low > high:
                raise _error(f"min_{unit} {low} is above max_{unit} {high}")

    @property
    def label(self) -> str:
        """Its name: the one given, a code verifier's function, or the kind."""
        if self.name:
            return self.name
        return split_code(self.function)[1] if self.kind == "code" else self.kind

    @property
    def input(self) -> str | None:
        """The file or target it reads, if any."""
        if self.kind == "code":
            return split_code(self.function)[0]
        return self.schema_file if self.kind == "json" else self.model


def name_problems(verifiers: list[Verifier], key: str = "verify") -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    problems = []
    for i, v in enumerate(verifiers):
        if v.label in seen:
            problems.append((f"{key}.{i}", f"{key}[{seen[v.label]}] and {key}[{i}] are both named '{v.label}': "
                                           f"give one of them another name"))
        seen.setdefault(v.label, i)
    return problems


def file_problems(verifiers: list[Verifier], files: dict, key: str = "verify") -> list[tuple[str, str]]:
    """Parsed, never imported: a code verifier's function is in its file, a schema file is JSON."""
    from forgebuild.rules.model.reward_functions import code_problem

    problems = []
    for i, v in enumerate(verifiers):
        found = files.get(f"{key}.{i}")
        if not found or v.kind not in ("code", "json"):
            continue
        rel, path = found[0]
        message = code_problem(v.function, path) if v.kind == "code" else _schema_file_problem(rel, path)
        if message:
            problems.append((f"{key}.{i}", message))
    return problems


def _schema_file_problem(rel: str, path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, ValueError) as e:
        return f"{rel} is not a JSON file: {e}"
    return None if isinstance(schema, dict) else f"{rel} holds {type(schema).__name__}, not a JSON schema object"


# ------------------------------------------------------------------ running

@dataclass
class Outcome:
    """One verifier over every sample: passed, its number (or None) and, when it failed, why."""
    name: str
    passed: list[bool] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)

    def add(self, ok: bool, reason: str, score: float | None = None) -> None:
        self.passed.append(bool(ok))
        self.scores.append(score)
        self.reasons.append(None if ok else f"{self.name}: {reason}")


class VerifierError(Exception):
    """A verifier that cannot run (a code verifier's bad return, a broken schema): the build fails."""


def quoted(text: str) -> str:
    return json.dumps(text if len(text) <= SHOWN else text[:SHOWN - 3] + "...", ensure_ascii=False)


@dataclass
class Env:
    """What a verifier's run reads besides the samples: the build's context (project folder, log),
    the file or target folder its Forgefile key names, and how many subprocesses run at once."""
    ctx: object
    path: str | None = None
    workers: int = 4


def run(verifier: Verifier, samples: list[dict], env: Env) -> Outcome:
    """The verifier over every sample."""
    outcome = Outcome(verifier.label)
    texts = [completion_text(s["completion"]) for s in samples]
    RUNNERS[verifier.kind](verifier, samples, texts, outcome, env)
    return outcome


def _answer(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    for sample, text in zip(samples, texts):
        wanted = sample["columns"].get(v.field)
        if wanted is None:
            out.add(False, f"the row has no '{v.field}'")
        elif v.match == "exact":
            out.add(exact_score(text, wanted) == 1.0, f"expected {wanted}, got {quoted(text.strip())}")
        else:
            expected = answer_number(normal_answer(str(wanted)))
            if expected is None:
                out.add(False, f"expected {wanted}, which is not a number")
                continue
            got = _leading_numbers(text)
            out.add(any(abs(g - expected) <= v.tolerance for g in got), f"expected {wanted}, got {quoted(text.strip())}")


def _leading_numbers(text: str) -> list[float]:
    """The numbers exact_score reads first: the first line, and the first token, each as a number."""
    lines = [line for line in text.splitlines() if line.strip()]
    heads = {normal_answer(lines[0]), normal_answer(text.split()[0])} if lines else set()
    return [x for x in map(answer_number, heads) if x is not None]


def _regex(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    pattern = re.compile(v.pattern)
    test = pattern.fullmatch if v.full else pattern.search
    how = "does not match" if v.full else "has no match for"
    for text in texts:
        out.add(test(text) is not None, f"{quoted(text)} {how} {v.pattern}")


def _length(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    for text in texts:
        counts = {"chars": len(text), "words": len(text.split())}
        reason = None
        for unit, n in counts.items():
            low, high = getattr(v, f"min_{unit}"), getattr(v, f"max_{unit}")
            noun = "characters" if unit == "chars" else "words"
            if low is not None and n < low:
                reason = reason or f"{n} {noun} < min_{unit} {low}"
            if high is not None and n > high:
                reason = reason or f"{n} {noun} > max_{unit} {high}"
        out.add(reason is None, reason)


def _same(value) -> str:
    from forgebuild.rules.dataset import canonical, normal_content

    text = completion_text(value) if isinstance(value, list) else value
    return canonical(normal_content(text)).casefold()


def _dedup(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    prompts = {_same(s["prompt"]) for s in samples} if v.scope == "all" else set()
    first: dict[tuple, dict] = {}
    for sample, text in zip(samples, texts):
        mine = _same(text)
        scope = () if v.scope == "all" else (sample["prompt_index"],)
        if "prompts" in v.against and (mine == _same(sample["prompt"]) or mine in prompts):
            out.add(False, "repeats a prompt")
            continue
        earlier = first.setdefault((*scope, mine), sample)
        if "samples" in v.against and earlier is not sample:
            where = f"prompt {earlier['prompt_index']} " if v.scope == "all" else ""
            out.add(False, f"the same as {where}sample {earlier['sample']}")
        else:
            out.add(True, None)


def _json(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    import jsonschema

    schema = v.schema_
    if schema is None:
        with open(env.path, encoding="utf-8") as f:
            schema = json.load(f)
    try:
        checker = jsonschema.validators.validator_for(schema)(schema)
        checker.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise VerifierError(f"verifier {v.label}: the schema is not a valid JSON schema: {e.message}") from None
    for text in texts:
        try:
            value = json.loads(text)
        except ValueError as e:
            out.add(False, f"not JSON ({e})")
            continue
        error = jsonschema.exceptions.best_match(checker.iter_errors(value))
        where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path) if error else ""
        out.add(error is None, f"{where.lstrip('.') + ': ' if where else ''}{error.message if error else ''}")


def _python(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    def one(pair):
        sample, text = pair
        tests = sample["columns"].get(v.tests)
        if tests is not None and not isinstance(tests, str):
            return False, f"the row's '{v.tests}' is not text"
        return run_python(text + "\n\n" + (tests or "") + "\n", v.timeout, env.ctx.scratch_dir)

    with ThreadPoolExecutor(max_workers=max(1, env.workers)) as pool:
        for ok, reason in pool.map(one, zip(samples, texts)):
            out.add(ok, reason)


def run_python(source: str, timeout: float, parent: str | None = None) -> tuple[bool, str | None]:
    """The code in a fresh temporary folder (below `parent`: a build's scratch folder, inside the project)
    with `python -I`; (passed, the last line of stderr). Not a sandbox: the code runs with this user's
    rights. Its whole process group is killed on timeout."""
    with tempfile.TemporaryDirectory(prefix="forge-verify-", dir=parent) as folder:
        path = os.path.join(folder, "check.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(source)
        proc = subprocess.Popen([sys.executable, "-I", path], cwd=folder, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return False, f"timed out after {timeout:g} s"
    if proc.returncode == 0:
        return True, None
    lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
    return False, lines[-1].strip() if lines else f"exit status {proc.returncode}"


def _code(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    from forgebuild.rules.model.reward_functions import RewardError, load_code

    try:
        func = load_code(v.function, env.ctx.project_dir, env.ctx.log)
        names = sorted({c for s in samples for c in s["columns"]})
        columns = {c: [s["columns"].get(c) for s in samples] for c in names}
        arguments = func.arguments([s["prompt"] for s in samples], [s["completion"] for s in samples], columns)
    except RewardError as e:
        raise VerifierError(str(e).replace("reward ", "verifier ", 1)) from None
    try:
        values = func.func(**arguments)
    except Exception as e:  # noqa: BLE001 - the user's code: its failure is the build's, with the traceback logged
        import traceback

        env.ctx.log(traceback.format_exc())
        raise VerifierError(f"verifier {v.function} raised {type(e).__name__}: {e}") from None
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)) or len(values) != len(samples):
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else repr(values)
        raise VerifierError(f"verifier {v.function} returned {got} for {len(samples)} samples "
                            f"(one bool, number or reason string per sample)")
    for i, value in enumerate(values):
        _code_value(v, value, i, out)


def _code_value(v: Verifier, value, i: int, out: Outcome) -> None:
    if isinstance(value, bool):
        out.add(value, "rejected")
    elif isinstance(value, (int, float)) and value == value:
        out.add(value >= v.threshold, f"score {value:g} < threshold {v.threshold:g}", float(value))
    elif isinstance(value, str):
        out.add(not value, value)
    else:
        raise VerifierError(f"verifier {v.function} returned {value!r} for sample {i}; a verifier returns a bool, "
                            f"a number or a reason string")


def _reward_model(v: Verifier, samples, texts, out: Outcome, env: Env) -> None:
    from forgebuild.rules.synth.reward_scores import scores

    for value in scores(env.ctx, env.path, v.model, [s["prompt"] for s in samples], texts):
        out.add(value >= v.threshold, f"score {value:.3g} < threshold {v.threshold:g}", value)


RUNNERS = {"answer": _answer, "regex": _regex, "code": _code, "length": _length, "dedup": _dedup,
           "json": _json, "python": _python, "reward_model": _reward_model}
