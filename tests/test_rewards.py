"""Reward specs from a Forgefile, the built-in rewards, and functions loaded from project files."""
from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import textwrap

import pytest
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from forgebuild.rules.model.reward_functions import (
    AsyncCodeReward,
    CodeReward,
    ExactReward,
    FormatReward,
    LengthReward,
    Reward,
    RewardError,
    completion_text,
    exact_score,
    load_rewards,
    parse_reward,
    reward_inputs,
    reward_problems,
)

SHAPES = "write FILE.py:FUNCTION, model:NAME, or one of exact, format, length"


def error_of(value) -> tuple[tuple, str]:
    with pytest.raises(ValidationError) as info:
        parse_reward(value)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return tuple(errors[0]["loc"]), errors[0]["msg"]


# ------------------------------------------------------------------ parsing

def test_module_imports_no_training_libraries():
    code = ("import sys, forgebuild.rules.model.reward_functions; "
            "print([m for m in ('torch', 'transformers', 'trl') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("text, fields", [
    ("rewards.py:exact_answer", {"code": "rewards.py:exact_answer"}),
    ("sub/dir/r.py:score_2", {"code": "sub/dir/r.py:score_2"}),
    ("model:rm", {"model": "model:rm"}),
    ("exact", {"builtin": "exact"}),
])
def test_strings(text, fields):
    reward = parse_reward(text)
    expected = {"code": None, "model": None, "builtin": None, "weight": 1.0, "pattern": None, "target": None}
    assert reward.model_dump() == {**expected, **fields}
    assert reward.name == text


def test_tables():
    assert parse_reward({"code": "rewards.py:exact_answer", "weight": 0.5}).model_dump() == {
        "code": "rewards.py:exact_answer", "model": None, "builtin": None, "weight": 0.5, "pattern": None,
        "target": None}
    assert parse_reward({"model": "model:rm", "weight": 0.5}).kind == "model"
    assert parse_reward({"builtin": "exact", "weight": 1.0}).builtin == "exact"
    fmt = parse_reward({"builtin": "format", "pattern": "^\\s*-?\\d+", "weight": 0.2})
    assert (fmt.pattern, fmt.weight, fmt.name, fmt.kind) == ("^\\s*-?\\d+", 0.2, "format", "builtin")
    length = parse_reward({"builtin": "length", "target": 8, "weight": 0.1})
    assert (length.target, length.weight) == (8, 0.1)
    assert parse_reward({"code": "r.py:f", "weight": -1}).weight == -1.0  # a penalty


def test_list_validates_strings_and_tables():
    rewards = TypeAdapter(list[Reward]).validate_python(
        ["rewards.py:exact_answer", {"model": "model:rm", "weight": 0.5}, "exact"])
    assert [r.name for r in rewards] == ["rewards.py:exact_answer", "model:rm", "exact"]
    assert [r.weight for r in rewards] == [1.0, 0.5, 1.0]


@pytest.mark.parametrize("value, loc, message", [
    ("rewards.pyexact", (), f"'rewards.pyexact' is not a reward: {SHAPES}"),
    ("rewards.py", (), f"'rewards.py' is not a reward: {SHAPES}"),
    ("rewards.py:", (), f"'rewards.py:' is not a reward: {SHAPES}"),
    ("rewards.txt:f", (), f"'rewards.txt:f' is not a reward: {SHAPES}"),
    ("model:", (), f"'model:' is not a reward: {SHAPES}"),
    ("exat", (), f"'exat' is not a reward: {SHAPES} (did you mean 'exact'?)"),
    ("format", (), 'builtin "format" needs a pattern: write { builtin = "format", pattern = "REGEX" }'),
    ("length", (), 'builtin "length" needs a target: write { builtin = "length", target = CHARACTERS }'),
    (3, (), "expected a string or a table, got integer 3"),
    ([], (), "expected a string or a table, got array"),
    ({"weight": 0.5}, (), 'a reward needs one of code, model or builtin, e.g. { code = "rewards.py:score" }'),
    ({"code": "r.py:f", "model": "model:rm"}, (), "a reward takes one of code, model or builtin, not code and model"),
    ({"code": "r.py:f", "model": "model:rm", "builtin": "exact"}, (),
     "a reward takes one of code, model or builtin, not code, model and builtin"),
    ({"builtin": "exact", "pattern": "x"}, (), 'pattern only applies to builtin = "format"'),
    ({"code": "r.py:f", "target": 3}, (), 'target only applies to builtin = "length"'),
    ({"builtin": "format"}, (), 'builtin "format" needs a pattern: write { builtin = "format", pattern = "REGEX" }'),
    ({"builtin": "length", "weight": 2}, (),
     'builtin "length" needs a target: write { builtin = "length", target = CHARACTERS }'),
    ({"builtin": "format", "pattern": "("}, ("pattern",),
     "pattern '(' is not a valid regular expression: missing ), unterminated subpattern at position 0"),
    ({"code": "rewards.py"}, ("code",),
     "'rewards.py' is not a code reference: write FILE.py:FUNCTION, e.g. 'rewards.py:score'"),
    ({"model": "rm"}, ("model",), "'rm' is not a reward-model target: write model:NAME (did you mean 'model:rm'?)"),
    ({"model": "dataset:x"}, ("model",), "'dataset:x' is not a reward-model target: write model:NAME"),
    ({"builtin": "exact", "weight": True}, ("weight",), "expected a number, got boolean true"),
])
def test_errors(value, loc, message):
    assert error_of(value) == (loc, message)


def test_pydantic_errors_for_plain_types():
    assert error_of({"builtin": "length", "target": 0})[0] == ("target",)
    assert error_of({"builtin": "exact", "weight": float("inf")})[0] == ("weight",)
    assert error_of({"builtin": "exact", "wieght": 1})[0] == ("wieght",)  # extra="forbid"
    assert error_of({"builtin": "exakt"})[0] == ("builtin",)


def test_errors_in_a_list_are_located_at_the_entry():
    with pytest.raises(ValidationError) as info:
        TypeAdapter(list[Reward]).validate_python(["exact", "rewards.pyexact"])
    [error] = info.value.errors()
    assert error["loc"] == (1,)
    assert error["msg"] == f"'rewards.pyexact' is not a reward: {SHAPES}"


def test_forgefile_problems_read_plainly():
    from forgebuild.planning.forgefile import validation_problems

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        rewards: list[Reward] = []

    raw = {"rewards": ["exact", "rewards.pyexact", {"builtin": "format", "pattern": "("}]}
    with pytest.raises(ValidationError) as info:
        Params.model_validate(raw)
    found = validation_problems(info.value, Params, raw, lambda path, message: (list(path), message))
    assert found == [
        (["rewards", 1], f"'rewards.pyexact' is not a reward: {SHAPES}"),
        (["rewards", 2, "pattern"],
         "pattern '(' is not a valid regular expression: missing ), unterminated subpattern at position 0"),
    ]


def test_json_schema_takes_strings_and_tables():
    schema = TypeAdapter(list[Reward]).json_schema()
    reward = schema["$defs"]["Reward"]
    assert reward["anyOf"][0]["type"] == "string"
    assert reward["anyOf"][1]["additionalProperties"] is False


def test_reward_problems():
    rewards = [parse_reward(v) for v in ["exact", "r.py:f", {"builtin": "exact", "weight": 0.5},
                                         {"builtin": "format", "pattern": "a"}, {"builtin": "format", "pattern": "b"}]]
    assert reward_problems(rewards) == [("rewards.2", "the same reward as rewards[0]; write it once with the weights added")]
    assert reward_problems([]) == [("rewards", 'no rewards: give at least one, e.g. rewards = ["rewards.py:score"]')]
    zero = [parse_reward({"builtin": "exact", "weight": 0})]
    assert reward_problems(zero, key="train.rewards") == [
        ("train.rewards", "every reward has weight 0: there would be nothing to learn from")]
    assert reward_problems(rewards[:2]) == []


def test_reward_inputs():
    rewards = [parse_reward(v) for v in ["rewards.py:exact_answer", "model:rm", "exact", "sub/more.py:g"]]
    assert reward_inputs(rewards) == {"rewards.0": "rewards.py", "rewards.1": "model:rm", "rewards.3": "sub/more.py"}
    assert reward_inputs(rewards[:1], key="judge") == {"judge.0": "rewards.py"}


# ------------------------------------------------------------------ built-ins

def chat(text):
    return [{"role": "assistant", "content": text}]


def test_completion_text():
    assert completion_text("plain") == "plain"
    assert completion_text(chat("hi")) == "hi"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]) == "b"
    assert completion_text(chat([{"type": "text", "text": "x"}, {"type": "text", "text": "y"}])) == "xy"
    assert completion_text(chat(None)) == "" and completion_text([]) == "" and completion_text(None) == ""


@pytest.mark.parametrize("completion, answer, score", [
    ("42", "42", 1.0),
    ("  42.\nbecause 6 * 7", 42, 1.0),         # first line, trailing punctuation stripped
    ("42 is the answer", 42, 1.0),             # first token
    ("**42**", "42", 1.0),
    ("42.0", 42, 1.0),                         # numbers compare by value
    ("1,000 apples", "1000", 1.0),
    ("Paris.", "paris", 1.0),                  # case and trailing punctuation ignored
    ("New   York\nis big", "New York", 1.0),   # whitespace normalised
    ("The answer is 42.", 42, 0.5),            # inside, as a whole number
    ("It is Paris, France", "Paris", 0.5),     # inside, as a whole word
    ("It is New\nYork", "new york", 0.5),
    ("answer: 420", 42, 0.1),                  # numeric answer, a digit but not the number
    ("4.2", 42, 0.1),
    ("x = -42", 42, 0.1),
    ("no idea", 42, 0.0),
    ("", 42, 0.0),
    ("Parisian", "Paris", 0.0),                # not a whole word
    ("London", "Paris", 0.0),
    ("7", ["6", "7"], 1.0),                    # several acceptable answers: the best
    ("anything", None, None),                  # no answer: no reward
    ("anything", "  ", None),
])
def test_exact_partial_credit(completion, answer, score):
    assert exact_score(completion, answer) == score


def test_exact_batch_string_and_chat():
    exact = ExactReward()
    assert exact.__name__ == "exact"
    completions = ["42", chat("The answer is 42"), chat("I think 41"), "no"]
    assert exact(prompts=["p"] * 4, completions=completions, answer=["42", "42", "42", "42"],
                 trainer_state=None) == [1.0, 0.5, 0.1, 0.0]


def test_exact_without_answer_column():
    with pytest.raises(RewardError) as info:
        ExactReward()(prompts=["p"], completions=["1"], question=["q"], trainer_state=None, log_metric=print)
    assert str(info.value) == "reward exact: the data has no 'answer' column to compare completions with (columns: question)"


def test_format():
    fmt = FormatReward(r"^\s*-?\d+")
    assert fmt.__name__ == "format"
    assert fmt(prompts=["p"] * 4, completions=[" -3 apples", "apples: 3", chat("12"), chat("")]) == [1.0, 0.0, 1.0, 0.0]


def test_length():
    length = LengthReward(8)
    completions = ["12345678", "1234", "1234567890123456", "", chat("123456")]
    assert length(prompts=["p"] * 5, completions=completions) == [1.0, 0.5, 0.5, 0.0, 0.75]
    assert LengthReward(2)(completions=["123456"]) == [pytest.approx(1 / 3)]


def test_builtins_pickle():
    for func in (ExactReward(), FormatReward("a"), LengthReward(3)):
        copy = pickle.loads(pickle.dumps(func))
        assert copy.__name__ == func.__name__
        assert copy(prompts=["p"], completions=["a"], answer=["a"]) == func(prompts=["p"], completions=["a"], answer=["a"])


# ------------------------------------------------------------------ code references

REWARDS = """
    import math

    exact_answr = 3

    def exact_answer(prompts, completions, answer, **kwargs):
        return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

    def picky(completions, answer):
        return [float(len(c)) for c in completions]

    def explode(prompts, completions, **kwargs):
        raise ValueError("bad row " + completions[0])

    def short(prompts, completions, **kwargs):
        return [1.0]

    def nothing(prompts, completions, **kwargs):
        return None

    def words(prompts, completions, **kwargs):
        return [1.0, "high"]

    def maybe(prompts, completions, **kwargs):
        return [None, 1, True]

    async def later(prompts, completions, **kwargs):
        return [0.5 for _ in completions]
"""


class Folder:
    """A throw-away project folder: `write` puts a dedented file in it; str() is its path."""

    def __init__(self, root):
        self.root = root

    def write(self, rel, text):
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def __str__(self):
        return str(self.root)


@pytest.fixture
def project(tmp_path):
    folder = Folder(tmp_path)
    folder.write("rewards.py", REWARDS)
    return folder


def load(project, *refs, **kwargs):
    logged = []
    funcs, weights, names = load_rewards(list(refs), str(project), kwargs.get("model_paths", {}), logged.append)
    return funcs, weights, names, logged


def test_load_a_good_function(project):
    funcs, weights, names, logged = load(project, {"code": "rewards.py:exact_answer", "weight": 0.5})
    [func] = funcs
    assert isinstance(func, CodeReward)
    assert func.__name__ == "rewards.py:exact_answer" and names == ["rewards.py:exact_answer"] and weights == [0.5]
    result = func(prompts=["p", "q"], completions=["a", "b"], answer=["a", "c"], completion_ids=[[1], [2]],
                  trainer_state=None)
    assert result == [1.0, 0.0] and logged == []


def test_a_function_without_kwargs_gets_what_it_names(project):
    [func], *_ = load(project, "rewards.py:picky")
    assert func(prompts=["p"], completions=["abc"], answer=["x"], trainer_state=None) == [3.0]
    with pytest.raises(RewardError) as info:
        func(prompts=["p"], completions=["abc"], question=["x"], trainer_state=None)
    assert str(info.value) == ("reward rewards.py:picky takes 'answer', which the data does not have "
                               "(columns: question)")


def test_mixed_list_with_model_and_builtins(project):
    funcs, weights, names, _ = load(project, "exact", "rewards.py:exact_answer", {"model": "model:rm", "weight": 0.5},
                                    {"builtin": "format", "pattern": "a", "weight": 0.2},
                                    {"builtin": "format", "pattern": "b"}, {"builtin": "length", "target": 4},
                                    model_paths={"model:rm": "/store/rm"})
    assert names == ["exact", "rewards.py:exact_answer", "model:rm", "format", "format#2", "length"]
    assert weights == [1.0, 1.0, 0.5, 0.2, 1.0, 1.0]
    assert funcs[2] == "/store/rm"
    assert [getattr(f, "__name__", None) for f in funcs] == ["exact", "rewards.py:exact_answer", None, "format",
                                                             "format#2", "length"]
    assert isinstance(funcs[5], LengthReward) and funcs[4].pattern.pattern == "b"


def test_model_without_a_path(project):
    with pytest.raises(RewardError) as info:
        load(project, "model:rm")
    assert str(info.value) == "reward model:rm: no built model for model:rm"


def test_missing_file(project):
    with pytest.raises(RewardError) as info:
        load(project, "nope.py:exact_answer")
    assert str(info.value) == "reward nope.py:exact_answer: file nope.py not found"


def test_missing_function_did_you_mean(project):
    project.write("other.py", "def exact_answr(prompts, completions, **kw):\n    return []\n")
    with pytest.raises(RewardError) as info:
        load(project, "other.py:exact_answer")
    assert str(info.value) == ("reward other.py:exact_answer: other.py has no function 'exact_answer' "
                               "(did you mean 'exact_answr'?)")
    with pytest.raises(RewardError) as info:
        load(project, "rewards.py:zzz")
    assert str(info.value) == "reward rewards.py:zzz: rewards.py has no function 'zzz'"


def test_not_callable(project):
    with pytest.raises(RewardError) as info:
        load(project, "rewards.py:exact_answr")
    assert str(info.value) == "reward rewards.py:exact_answr: 'exact_answr' is an int, not a function"


def test_module_raising_on_import(project):
    project.write("broken.py", """
        import not_a_module_anywhere

        def f(prompts, completions, **kwargs):
            return []
    """)
    with pytest.raises(RewardError) as info:
        load(project, "broken.py:f")
    assert str(info.value) == ("reward broken.py:f: broken.py raised ModuleNotFoundError: "
                               "No module named 'not_a_module_anywhere'")
    logged = []
    with pytest.raises(RewardError):
        load_rewards(["broken.py:f"], str(project), {}, logged.append)
    [text] = logged
    assert text.startswith("reward broken.py:f: broken.py raised ModuleNotFoundError")
    assert "Traceback (most recent call last)" in text and "import not_a_module_anywhere" in text


def test_module_with_syntax_error(project):
    project.write("syntax.py", "def f(:\n    pass\n")
    with pytest.raises(RewardError) as info:
        load(project, "syntax.py:f")
    assert str(info.value).startswith("reward syntax.py:f: syntax.py raised SyntaxError: ")


def test_function_raising(project):
    [func], _, _, logged = load(project, "rewards.py:explode")
    with pytest.raises(RewardError) as info:
        func(prompts=["p"], completions=["row7"])
    assert str(info.value) == "reward rewards.py:explode raised ValueError: bad row row7"
    [text] = logged
    assert text.startswith("reward rewards.py:explode raised ValueError: bad row row7\nTraceback (most recent call last)")
    assert 'raise ValueError("bad row " + completions[0])' in text


@pytest.mark.parametrize("function, message", [
    ("short", "reward rewards.py:short returned 1 reward for 2 completions"),
    ("nothing", "reward rewards.py:nothing returned None, not a list of numbers (one per completion)"),
    ("words", "reward rewards.py:words returned 'high' (a str) at position 1; a reward is a number, "
              "or None for no reward"),
])
def test_wrong_returns(project, function, message):
    [func], *_ = load(project, f"rewards.py:{function}")
    with pytest.raises(RewardError) as info:
        func(prompts=["p", "q"], completions=["a", "b"])
    assert str(info.value) == message


def test_none_entries_are_allowed(project):
    [func], *_ = load(project, "rewards.py:maybe")
    assert func(prompts=["p"] * 3, completions=["a", "b", "c"]) == [None, 1.0, 1.0]


def test_async_function(project):
    [func], *_ = load(project, "rewards.py:later")
    assert isinstance(func, AsyncCodeReward)
    assert asyncio.run(func(prompts=["p"], completions=["a"])) == [0.5]


def test_code_reward_pickles_by_reloading_the_file(project):
    [func], *_ = load_rewards(["rewards.py:exact_answer"], str(project), {}, None)
    copy = pickle.loads(pickle.dumps(func))
    assert copy.__name__ == "rewards.py:exact_answer"
    assert copy(prompts=["p"], completions=["a"], answer=["a"]) == [1.0]


def test_an_edited_file_loads_afresh(project):
    project.write("edit.py", "def f(prompts, completions, **kw):\n    return [1.0 for _ in completions]\n")
    [first], *_ = load(project, "edit.py:f")
    project.write("edit.py", "def f(prompts, completions, **kw):\n    return [2.0 for _ in completions]\n")
    [second], *_ = load(project, "edit.py:f")
    assert first(prompts=["p"], completions=["a"]) == [1.0]
    assert second(prompts=["p"], completions=["a"]) == [2.0]


def test_helpers_beside_the_file_import(project):
    project.write("lib/reward_test_helper.py", "BONUS = 0.25\n")
    project.write("lib/scored.py", """
        from reward_test_helper import BONUS

        def f(prompts, completions, **kwargs):
            return [BONUS for _ in completions]
    """)
    [func], *_ = load(project, "lib/scored.py:f")
    assert func(prompts=["p"], completions=["a"]) == [0.25]
