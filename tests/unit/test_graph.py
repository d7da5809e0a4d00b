"""graph.py in process: build order with its tie rule, cycles named target-first, drawings."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from forgebuild.planning import graph
from forgebuild.errors import ForgefileError
from unitlab import lab  # noqa: F401  (a fixture)


@dataclass
class T:
    deps: list = field(default_factory=list)


def test_order_puts_dependencies_first_and_breaks_ties_by_address():
    targets = {"run:z": T(), "run:b": T(["run:z"]), "run:a": T(["run:z"]), "run:m": T(), "run:c": T(["run:a", "run:m"])}
    # ready at first: m and z (m first); then a and b become ready after z, c after a and m
    assert graph.topological_order(targets) == ["run:m", "run:z", "run:a", "run:b", "run:c"]
    assert graph.topological_order(dict(reversed(targets.items()))) == graph.topological_order(targets)


def test_order_ignores_edges_to_targets_not_given():
    assert graph.topological_order({"run:b": T(["run:a"]), "run:c": T(["run:missing", "run:b"])}) == ["run:b", "run:c"]


def test_a_cycle_is_named_from_its_smallest_address_target_first():
    targets = {"run:c": T(["run:b"]), "run:b": T(["run:a"]), "run:a": T(["run:c"]), "run:x": T(["run:a"]),
               "run:self": T(["run:self"]), "run:q": T(["run:p"]), "run:p": T(["run:q"])}
    with pytest.raises(ValueError, match="^the graph has a cycle$"):
        graph.topological_order(targets)
    # [a, c, b]: a reads c, c reads b, b reads a. A self-loop is a knot of one, not listed here (see below)
    assert graph.cycles(targets) == [["run:a", "run:c", "run:b"], ["run:p", "run:q"]]
    assert graph.cycles({"run:a": T(), "run:b": T(["run:a"])}) == []


@pytest.mark.parametrize("text, error", [
    ('[run.a]\ncmd = "true"\ninputs = { b = "run:b" }\n\n[run.b]\ncmd = "true"\ninputs = { a = "run:a" }\n',
     "Forgefile.toml:3: error: run:a: key 'inputs.b': dependency cycle: run:a -> run:b -> run:a"),
    # a knot of one is not a cycle to graph.cycles: the Forgefile check names it
    ('[run.a]\ncmd = "true"\ninputs = { a = "run:a" }\n',
     "Forgefile.toml:3: error: run:a: key 'inputs.a': a target cannot depend on itself"),
])
def test_a_forgefile_cycle_is_one_problem_at_the_reading_line(lab, text, error):
    with pytest.raises(ForgefileError) as e:
        lab.plan(text)
    assert str(e.value) == error


PIPELINE = """
[run.a]
cmd = "true"

[run.b]
cmd = "true"
inputs = { a = "run:a" }

[run.c]
cmd = "true"
inputs = { a = "run:a", b = "run:b" }
"""


def test_render_text_dot_and_mermaid(lab):
    plan = lab.plan(PIPELINE)
    assert plan.order == ["run:a", "run:b", "run:c"]
    assert plan.closure(["run:b"]) == ["run:a", "run:b"]
    states = {"run:a": "fresh", "run:b": "stale"}
    assert graph.render(plan, ["run:c"], "text", states) == (
        "run:a  [fresh]\nrun:b  [stale]  <- run:a\nrun:c  <- run:a, run:b")
    assert graph.render(plan, ["run:b"], "mermaid") == (
        'graph LR\n  t0["run:a"]\n  t1["run:b"]\n  t0 --> t1')
    assert graph.render(plan, ["run:b"], "dot", states) == "\n".join([
        "digraph forgebuild {", "  rankdir=LR;", "  node [shape=box, style=filled, fillcolor=white];",
        '  "run:a" [fillcolor=palegreen];', '  "run:b" [fillcolor=gold];', '  "run:a" -> "run:b";', "}"])
