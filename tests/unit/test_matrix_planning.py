"""planning/matrix.py and its place in planning: cells, their addresses, references to a grid, errors."""
from __future__ import annotations

import pytest

from forgebuild.errors import ForgefileError
from unitlab import lab  # noqa: F401 (a fixture)
from forgebuild.planning import matrix
from forgebuild.planning.keys import derive_seed
from forgebuild.planning.plan import ADDRESS

GRID = """
[run.gen]
cmd = ["echo", "{params.lr}", "{params.r}"]
params = { lr = 0.1, r = 1 }
matrix = { "params.lr" = [1e-3, 3e-4], "params.r" = [8, 16] }
"""


def problems_of(lab, text: str) -> list[str]:
    with pytest.raises(ForgefileError) as e:
        lab.plan(text)
    return [str(p) for p in e.value.problems]


def test_a_grid_is_its_cells_each_an_ordinary_target(lab):
    plan = lab.plan(GRID)
    cells = ["run:gen[lr=0.001,r=8]", "run:gen[lr=0.001,r=16]", "run:gen[lr=0.0003,r=8]", "run:gen[lr=0.0003,r=16]"]
    assert plan.groups == {"run:gen": cells}
    assert sorted(plan.targets) == sorted(cells)
    cell = plan.targets["run:gen[lr=0.0003,r=16]"]
    assert cell.values["params"] == {"lr": 3e-4, "r": 16}
    assert (cell.group, cell.cell) == ("run:gen", {"params.lr": 3e-4, "params.r": 16})
    assert all(ADDRESS.match(c) for c in cells)


def test_cells_share_their_tables_seed():
    assert derive_seed(0, "model:a[lr=0.001]") == derive_seed(0, "model:a[lr=0.1]") == derive_seed(0, "model:a")
    assert derive_seed(0, "model:a") != derive_seed(0, "model:b")


def test_adding_a_value_keeps_every_other_cell_as_it_was(lab):
    before = lab.plan(GRID)
    after = lab.plan(GRID.replace("[1e-3, 3e-4]", "[1e-3, 3e-4, 1e-4]"))
    assert set(after.targets) - set(before.targets) == {"run:gen[lr=0.0001,r=8]", "run:gen[lr=0.0001,r=16]"}
    for address, target in before.targets.items():
        assert after.targets[address].params == target.params


@pytest.mark.parametrize(("values", "name"), [
    ({"train.lr": 1e-05, "lora.r": 8}, "m[lr=1e-05,r=8]"),
    ({"a.n": 1, "b.n": 2, "c": True}, "m[a.n=1,b.n=2,c=true]"),  # two `n`: whole paths
    ({"recipe": "sft"}, "m[recipe=sft]"),
    ({"x": 2.5e20}, "m[x=2.5e+20]"),
])
def test_a_cell_is_named_by_its_values(values, name):
    assert matrix.cell_name("m", values) == name
    assert ADDRESS.match("model:" + name)


def test_an_array_takes_all_cells_and_matrix_with_takes_one(lab):
    plan = lab.plan(GRID + """
[run.all]
cmd = ["echo", "{in.g}"]
inputs = { g = ["run:gen", "run:solo"] }

[run.each]
matrix_with = "run:gen"
matrix = { timeout = [10, 20] }
cmd = ["echo", "{in.g}"]
inputs = { g = "run:gen" }

[run.solo]
cmd = ["echo"]
""")
    assert plan.targets["run:all"].deps == sorted([*plan.groups["run:gen"], "run:solo"])
    each = plan.groups["run:each"]
    assert len(each) == 8 and each[:2] == ["run:each[lr=0.001,r=8,timeout=10]", "run:each[lr=0.001,r=8,timeout=20]"]
    assert plan.targets["run:each[lr=0.0003,r=16,timeout=20]"].deps == ["run:gen[lr=0.0003,r=16]"]


def test_a_chain_of_matrix_with_follows_its_cells(lab):
    plan = lab.plan(GRID + """
[run.second]
matrix_with = "run:first"
cmd = ["echo", "{in.g}"]
inputs = { g = "run:first" }

[run.first]
matrix_with = "run:gen"
cmd = ["echo", "{in.g}"]
inputs = { g = "run:gen" }
""")
    assert plan.targets["run:second[lr=0.001,r=16]"].deps == ["run:first[lr=0.001,r=16]"]
    assert plan.targets["run:first[lr=0.001,r=16]"].deps == ["run:gen[lr=0.001,r=16]"]


def test_problems_name_the_matrix_line_and_are_said_once_per_grid(lab):
    found = problems_of(lab, """
[run.gen]
cmd = ["echo"]
matrix = { "params.n" = [1, 1], "cmd" = [], "x.y" = [{a=1}] }

[run.typo]
cmd = ["echo"]
matrix = { "timeot" = [1, 2] }

[run.bad]
cmd = ["echo"]
matrix = { "timeout" = [1, -2] }

[run.one]
cmd = ["echo", "{in.g}"]
inputs = { g = "run:typo" }

[run.each]
matrix_with = "run:nope"
cmd = ["echo"]

[run.loop]
matrix_with = "run:loop"
cmd = ["echo"]

[run.flat]
matrix_with = "run:one"
cmd = ["echo"]

[run.big]
cmd = ["echo"]
matrix = { "a" = [1,2,3,4,5,6,7,8,9,10,11], "b" = [1,2,3,4,5,6,7,8,9,10], "c" = [1,2,3,4,5,6,7,8,9,10], "d" = [1,2,3,4,5,6,7,8,9,10] }

[run.shape]
cmd = ["echo"]
matrix = [1, 2]
""")
    assert found == [  # sorted by line, as every Forgefile's problems are
        "Forgefile.toml:4: error: run:gen: key 'matrix.cmd': expected a non-empty array of values",
        "Forgefile.toml:4: error: run:gen: key 'matrix.params.n': a value is listed twice",
        "Forgefile.toml:4: error: run:gen: key 'matrix.x.y': a swept value must be a number, true/false or a name "
        "of letters, digits and '_.+-', got a table",
        # every cell has it: said once, of the grid
        "Forgefile.toml:8: error: run:typo: key 'timeot': unknown key (did you mean 'timeout'?)",
        "Forgefile.toml:12: error: run:bad[timeout=-2]: key 'timeout': expected a number > 0, got integer -2",
        "Forgefile.toml:16: error: run:one: key 'inputs.g': 'run:typo' is a matrix of 2 cells: name one (e.g. "
        "'run:typo[timeot=1]'), list it in an array to take them all, or write matrix_with = \"run:typo\"",
        "Forgefile.toml:19: error: run:each: key 'matrix_with': no target 'run:nope'",
        "Forgefile.toml:23: error: run:loop: key 'matrix_with': 'run:loop' is matrixed with this target: a loop",
        "Forgefile.toml:27: error: run:flat: key 'matrix_with': 'run:one' is not a matrix: matrix_with names a "
        "target with a `matrix`",
        "Forgefile.toml:32: error: run:big: key 'matrix': 11000 cells: at most 10000",
        "Forgefile.toml:36: error: run:shape: key 'matrix': expected a table of arrays, e.g. "
        '{ "train.lr" = [1e-3, 3e-4] }',
    ]


def test_a_cell_matrixed_with_another_is_named_by_its_values_but_keeps_its_own_params(lab):
    plan = lab.plan(GRID + """
[run.each]
matrix_with = "run:gen"
cmd = ["echo", "{in.g}"]
inputs = { g = "run:gen" }
""")
    each = plan.targets["run:each[lr=0.001,r=8]"]
    assert each.values["params"] == {} and each.cell == {"params.lr": 1e-3, "params.r": 8}
