"""Training recipes: one module per method, behind the `model` target kind.

A recipe module is a rule in miniature: a pydantic ``Params`` with
``recipe: Literal["NAME"]`` and ``extra="forbid"``, a ``version``,
``inputs(params)``, optional ``check(params)`` and ``DEPS`` (a ``common.Deps``: what its references must be),
and ``build(ctx)``. Its module is imported by the planner, so torch,
transformers, trl and peft are imported inside ``build`` only (through
``forgebuild.recipes.training``, which is imported there too).
"""
