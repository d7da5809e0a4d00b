"""The Rule Protocol's adapter (forgebuild/rules/__init__.py, `hooks`) in process: the defaults a rule
module that declares only the four required names gets, and what the engine asks the model rule for
(a worker's size, the machines a stage spans, `[forge] launch`) instead of reading its fields."""
from __future__ import annotations

import types

from pydantic import BaseModel, ConfigDict

from forgebuild.rules import RuleHooks, hooks, load_rule, runtime
from forgebuild.engine.backends import resources
from unitlab import lab  # noqa: F401  (a fixture)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = "x"
    threads: int = runtime(0)


def bare_rule() -> types.ModuleType:
    """A plugin as small as allowed: version, Params, inputs and build, no optional hook."""
    module = types.ModuleType("forge_bare")
    module.version = "3"
    module.Params = Params
    module.inputs = lambda params: {}
    module.build = lambda ctx: None
    return module


def test_a_rule_without_optional_hooks_gets_each_default():
    rule, params = hooks(bare_rule()), Params()
    assert rule.params_model({"text": "y"}) is Params
    assert rule.version_of(params) == "3"
    assert (rule.check(params), rule.check_deps(params, {}), rule.check_inputs(params, {})) == ([], [], [])
    assert (rule.external_inputs(params), rule.environment(params), rule.requires(params)) == ({}, {}, {})
    assert rule.isolate is True and rule.reads_inputs is False
    assert rule.forge_defaults() == {} and rule.nodes({"threads": 4}) == 1
    # a plugin's own `threads` and `device` size its worker, as the built-in rules' do
    assert rule.resources({"threads": 4}) == {"cpus": 4, "gpus": 0}
    assert rule.resources({"threads": 0, "device": "cuda"}) == {"cpus": 1, "gpus": 1}


def test_a_rules_own_hooks_win_and_the_adapter_is_made_once():
    module = bare_rule()
    module.isolate = False
    module.version_of = lambda params: f"3/{params.text}"
    module.check = lambda params: [("text", "too short")]
    module.nodes = lambda runtime: 4
    assert hooks(module) is hooks(module)  # one adapter per module, not one per call
    rule = hooks(module)
    assert isinstance(rule, RuleHooks) and rule.isolate is False
    assert rule.version_of(Params(text="ab")) == "3/ab" and rule.check(Params()) == [("text", "too short")]
    assert rule.nodes({}) == 4


def test_the_model_rule_says_its_shape_from_launch():
    model = hooks(load_rule("model"))
    assert model.resources({"threads": 2, "launch": {"processes": 3}}) == {"cpus": 6, "gpus": 0}
    assert model.resources({"device": "cuda", "launch": {"processes": 8}}) == {"cpus": 1, "gpus": 8}
    assert model.resources({"threads": 2, "launch": None}) == {"cpus": 2, "gpus": 0}
    assert (model.nodes({"launch": {"nodes": 2}}), model.nodes({"launch": None})) == (2, 1)
    assert list(model.forge_defaults()) == ["launch", "track"]
    # an eval takes [forge] track too; every other built-in rule spans one machine and takes no [forge] default
    evaluation = hooks(load_rule("eval"))
    assert list(evaluation.forge_defaults()) == ["track"] and evaluation.nodes({}) == 1
    for kind in ("run", "corpus", "dataset", "tokenizer", "tokens", "release"):
        assert hooks(load_rule(kind)).forge_defaults() == {} and hooks(load_rule(kind)).nodes({}) == 1, kind


FORGEFILE = """
[forge]
launch = { processes = 2, nodes = 3 }

[model.base]
recipe = "import"
path = "weights"

[model.own]
recipe = "import"
path = "weights"
launch = { processes = 1 }

[run.r]
cmd = "true"
"""


def test_forge_launch_reaches_the_model_targets_that_set_none(lab):
    lab.write("weights/config.json", "{}")
    plan = lab.plan(FORGEFILE)
    base, own = plan.targets["model:base"].runtime["launch"], plan.targets["model:own"].runtime["launch"]
    assert (base["processes"], base["nodes"], own["processes"], own["nodes"]) == (2, 3, 1, 1)
    assert "launch" not in plan.targets["run:r"].runtime
    # the runner sizes a worker through the rule: 2 processes of 1 thread each
    assert resources(plan.targets["model:base"]) == {"cpus": 2, "gpus": 0}
    assert resources(plan.targets["run:r"]) == {"cpus": 1, "gpus": 0}


def test_join_reads_a_stage_through_its_rule(tmp_path):
    from forgebuild.rules.model.launch import write_launch_file

    model, run = hooks(load_rule("model")), hooks(load_rule("run"))
    assert model.join_launch(str(tmp_path)) is None and run.join_launch(str(tmp_path)) is None  # nothing runs
    plan = {"key": "k" * 64, "context_file": "/w/a.1/context.json", "nodes": 2, "processes": 3,
            "master_addr": "10.0.0.1", "master_port": 29123, "attempt": "a.1"}
    write_launch_file(str(tmp_path), plan, "model:base")
    launch = model.join_launch(str(tmp_path))
    assert launch == {**plan, "target": "model:base"} and run.join_launch(str(tmp_path)) is None
    assert model.join_argv(launch, 1)[2:] == [
        "torch.distributed.run", "--nproc_per_node=3", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
        "--master_port=29123", "-m", "forgebuild.engine.worker", "/w/a.1/context.json"]


def test_param_shapes_name_every_model_a_table_may_take():
    assert hooks(bare_rule()).param_shapes() == {"": Params}
    shapes = hooks(load_rule("model")).param_shapes()
    assert list(shapes) == ["import", "pretrain", "continue", "sft", "dpo", "online-dpo", "reward", "grpo", "select",
                            "vlm"]
    assert [name for name, model in shapes.items() if "seq_len" in model.model_fields] == ["pretrain", "continue"]
