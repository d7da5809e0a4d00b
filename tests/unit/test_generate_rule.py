"""The generate rule in process: templates' prompts, Forgefile errors, each sample's key, and the sampler
that gives every row its own randomness (rules/synth/prompts.py, generation.py, sampling.py)."""
from __future__ import annotations

import itertools

import pytest

from forgebuild.errors import ForgefileError
from forgebuild.rules.synth.generation import sample_key, seed_of
from forgebuild.rules.synth.prompts import Template, template_problems, template_rows
from unitlab import lab  # noqa: F401 (a fixture)

MODEL = """
[model.m]
recipe = "import"
path = "weights"
"""


def test_a_templates_prompts_are_its_combinations_the_last_variable_fastest():
    t = Template.model_validate({"text": "{a}+{b}={op}", "vars": {"a": {"range": [0, 3]}, "b": [7, 8], "op": ["?"]}})
    rows = template_rows(t, seed=1)
    expected = [{"a": a, "b": b, "op": "?"} for a, b in itertools.product(range(3), [7, 8])]
    assert [r["columns"] for r in rows] == expected
    assert [r["prompt"] for r in rows] == [f"{c['a']}+{c['b']}=?" for c in expected]
    assert t.count() == 6 and template_problems(t) == []


def test_a_sample_of_combinations_is_seeded_in_combination_order_and_never_lists_them_all():
    huge = Template.model_validate({"text": "{a} {b} {c}", "vars": {k: {"range": [0, 10**5]} for k in "abc"},
                                    "sample": 5})
    rows = template_rows(huge, seed=7)
    assert rows == template_rows(huge, seed=7) != template_rows(huge, seed=8)
    keys = [(r["columns"]["a"], r["columns"]["b"], r["columns"]["c"]) for r in rows]
    assert keys == sorted(keys) and len(set(keys)) == 5 and huge.count() == 10**15


def test_a_samples_key_is_what_decides_it_and_its_seed_comes_from_the_key():
    base = {"generator": "d" * 64, "engine": "transformers", "prompt": "1+1=", "chat_template": "auto",
            "sampling": {"temperature": 1.0}, "seed": 3, "sample": 0}
    keys = {sample_key(base)} | {sample_key({**base, k: v}) for k, v in
                                 [("prompt", "1+2="), ("sample", 1), ("seed", 4), ("sampling", {"temperature": 0.5}),
                                  ("generator", "e" * 64), ("engine", "vllm")]}
    assert len(keys) == 7 and sample_key(dict(reversed(base.items()))) == sample_key(base)
    assert 0 <= seed_of(sample_key(base)) < 2**60


@pytest.mark.parametrize("table, expected", [
    ('template = { text = "{a}+{x}", vars = { a = [1] } }',
     "key 'template.text': field {x} names no variable (vars: a)"),
    ('template = { text = "{a", vars = { a = [1] } }',
     "key 'template.text': not a format string: expected '}' before end of string (write a literal brace as {{ or }})"),
    ('template = { text = "{a}", vars = { a = [1, 2] }, sample = 3 }',
     "key 'template.sample': sample = 3 is more than the 2 combinations of the variables"),
    ('template = { text = "{a}", vars = { a = { range = [5, 5] } } }', "key 'template.vars.a': has no value"),
    ('template = { text = "{a.real}", vars = { a = [1] } }',
     "key 'template.text': field {a.real}: write a variable's name alone, e.g. {a}"),
    ('template = { text = "{a:d}", vars = { a = ["x", 1] } }',
     "key 'template.text': cannot be filled with {'a': 'x'}: Unknown format code 'd' for object of type 'str'"),
    ('prompts = "p.jsonl"\ntemplate = { text = "x", vars = {} }',
     "key 'prompts': give prompts (a dataset target or a file) or a template, not both"),
    ('n = 1', "key 'prompts': names no prompts: give prompts = \"dataset:NAME\" or a template"),
    ('prompts = "p.jsonl"\nn = 4\nsampling = { temperature = 0 }',
     "key 'n': n = 4 with temperature = 0: greedy decoding gives every sample of a prompt the same text; set n = 1 "
     "or a temperature above 0"),
    ('prompts = "p.jsonl"\nsplit = "train"', "key 'split': a file has no splits: split is for prompts from a dataset "
                                             "target"),
    ('prompts = "run:p"', "key 'prompts': run:p is a run target; 'prompts' takes a dataset or curate target, or a file"),
    ('prompts = "p.jsonl"\nsampling = { top_p = 0 }', "key 'sampling.top_p': expected a number > 0, got integer 0"),
])
def test_forgefile_errors_name_the_key(lab, table, expected):
    lab.write("p.jsonl", '{"prompt": "1+1="}\n')
    lab.write("weights/config.json", "{}")
    text = MODEL + '\n[run.p]\ncmd = "true"\n\n[generate.g]\nmodel = "model:m"\n' + table + "\n"
    with pytest.raises(ForgefileError) as e:
        lab.plan(text)
    found = [str(p) for p in e.value.problems]
    assert any(line.endswith(expected) and "generate:g" in line for line in found), found


def test_a_model_key_must_name_a_model(lab):
    lab.write("p.jsonl", '{"prompt": "1+1="}\n')
    with pytest.raises(ForgefileError) as e:
        lab.plan('[run.p]\ncmd = "true"\n\n[generate.g]\nmodel = "run:p"\nprompts = "p.jsonl"\n')
    assert [str(p) for p in e.value.problems] == [
        "Forgefile.toml:5: error: generate:g: key 'model': run:p is a run target; 'model' takes a model target"]


def test_each_row_is_drawn_by_its_own_generator_as_softmax_says():
    import torch

    from forgebuild.rules.synth.sampling import OwnNoise, nucleus

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits[0], -1)
    draws = [int(OwnNoise([seed], 1.0, 1.0, "cpu")(None, logits).argmax()) for seed in range(4000)]
    freq = torch.bincount(torch.tensor(draws), minlength=4) / 4000
    assert torch.allclose(freq, probs, atol=0.03), (freq, probs)
    # a row's draw is its seed's alone: the same whatever rows share its batch
    alone = OwnNoise([5], 1.0, 1.0, "cpu")(None, logits)
    batched = OwnNoise([9, 5, 2], 1.0, 1.0, "cpu")(None, logits.repeat(3, 1))
    assert torch.equal(alone[0], batched[1])
    # the nucleus keeps the fewest tokens holding top_p, and always the first
    kept = torch.isfinite(nucleus(torch.log_softmax(logits, -1), 0.7))[0].tolist()
    assert kept == [True, True, False, False] and torch.isfinite(nucleus(torch.log_softmax(logits, -1), 0.01))[0].tolist() == [True, False, False, False]
