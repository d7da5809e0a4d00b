"""The rule protocol and the registry of rules.

A rule is a module (built-in or third-party) registered under the entry-point
group ``forgebuild.rules``; the entry point's name is the target kind. The
:class:`Rule` Protocol below declares every hook with its signature; the engine
reaches the optional ones only through :class:`RuleHooks` (``hooks(rule)``), which
fills in the default of a hook a module leaves out. In short:

- ``version``: a string; bump it whenever the rule's output for the same inputs changes.
- ``Params``: a pydantic model with ``extra="forbid"``; fields made with
  :func:`runtime` only change how a stage runs and stay out of its action key.
- ``inputs(params) -> {key path: spec or [specs]}``: every file, glob, folder or
  ``KIND:NAME`` target the build reads, under the Forgefile key that names it.
- ``build(ctx)``: produce the artifact in ``ctx.out``. Heavy imports go inside.
- optional ``check(params) -> [(key path, message)]`` for checks across fields;
  a key path is a dotted string ("outputs.0") or a tuple (("splits", "v1.2")).
- optional ``environment(params) -> {"vars": [...], "libraries": [...]}``: the
  declared environment. The values of these variables and the installed
  versions of these distributions (e.g. torch, transformers) enter the key.
- optional ``isolate`` (default True): run ``build`` in a child Python process.
  A rule whose build only launches a command of its own may set it False.
- optional ``preload``: modules a warm worker (engine/warm.py) imports before the
  ``requires`` ones, in order: the rule's build-only modules and the lazy imports
  every build of it pays (default: none).
- optional ``params_model(raw) -> pydantic model class``: for a rule whose
  tables take different shapes (the ``model`` rule: one per ``recipe``); then
  ``Params`` may be a union, used only for the JSON schema.
- optional ``param_shapes() -> {name: model}``: every model ``params_model`` may pick
  (for the hint naming where an unknown key belongs).
- optional ``version_of(params) -> str``: a version that depends on the params
  (the ``model`` rule's recipe versions).
- optional ``external_inputs(params) -> {key path: path}``: files or folders outside
  the project (an open-weight model already on disk), hashed like sources but
  keyed by their Forgefile key, never by their path.
- optional ``check_deps(params, deps) -> [(key path, message)]``: checks against
  the targets this one reads; ``deps`` maps an address to its kind, params
  (pydantic instance) and own ``deps`` (the same, one level down), for every
  referenced target that validated.
- optional ``requires(params) -> {module: extra}``: the modules ``build`` imports,
  each with the forgebuild extra that installs it. Before a build starts, a
  module that is not installed stops it with the ``pip install`` line
  (forgebuild/engine/preflight.py; found with importlib.util.find_spec, never imported).
- optional ``check_inputs(params, files) -> [(key path, message)]``: checks that
  read the files the target names, run before a build starts (never at a cache
  hit); ``files`` maps an input key to its (project-relative, absolute) paths.
  Parse, never import: a reward function's name, a benchmark's text lengths.
- optional ``upstream_inputs(params) -> {key path: (addresses, kinds)}``: under that key, every
  target of one of ``kinds`` that the targets at ``addresses`` are built from, directly or not
  (an eval's data to check for contamination); planning resolves them into ``KIND:NAME`` inputs.
- optional ``resources(runtime) -> {"cpus", "gpus"}``, ``nodes(runtime) -> int``,
  ``join_launch(work)``, ``join_argv(launch, rank)`` and ``forge_defaults() -> {key: model}``:
  what the engine needs to place a stage (a Ray or Slurm worker's size, the machines it spans,
  how another node joins it) and the ``[forge]`` keys that default a runtime param (the
  ``model`` rule's ``launch``), so the engine never reads a rule's fields.

The rules layer: this registry (which planning uses to validate) and one module per rule: ``run``,
the data rules (``corpus``, ``dataset``, ``tokenizer``, ``tokens``, ``release``, with ``rows`` to
read data rows), ``model/`` (the rule in its ``__init__``, a module per recipe), ``eval/`` (the
rule and its harness), ``search``, and the synthetic-data rules ``generate`` and ``curate`` (their
parts in ``synth/``). A rule module may import the base, planning's ``plan`` (addresses) and
other rule modules; never the engine, the store or the command line (a build gets what it needs
through its ``ctx``). At module level it imports no ML stack: planning imports it to validate.
Build-only modules (model's ``training``, ``packed``, ``offset_dpo``, ``vision``; eval's ``evaluate``,
``harness``, ``report``, ``scoring``, ``vision``; synth's ``sampling``, ``vllm_engine``, ``reward_scores``; the
images rule's ``picture``) are imported inside ``build`` and may import torch or PIL at the top.
"""
from __future__ import annotations

import functools
import importlib
import re
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Protocol

from pydantic import BaseModel, Field

from forgebuild.errors import ForgeError

GROUP = "forgebuild.rules"
# Used when forgebuild runs from a source tree that was never pip-installed,
# so its own entry points are not registered.
BUILTIN = {kind: f"forgebuild.rules.{kind}" for kind in ("run", "corpus", "dataset", "tokenizer", "tokens", "model", "eval",
                                                            "release", "search", "generate", "curate", "images")}
REQUIRED = ("version", "Params", "inputs", "build")
KIND = re.compile(r"^[a-z][a-z0-9_-]*$")


def runtime(default=None, **kwargs):
    """A parameter that changes where or how fast a stage runs, never what it produces."""
    extra = kwargs.pop("json_schema_extra", {}) or {}
    return Field(default, json_schema_extra={**extra, "runtime": True}, **kwargs)


def is_runtime(field) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("runtime"))


KeyPath = str | tuple  # "outputs.0" or ("splits", "v1.2"): where a problem is, in the target's table


class Rule(Protocol):
    """What a rule module provides: the four required names, then the optional hooks (a module
    may leave any of them out; :class:`RuleHooks` gives the default written in each docstring)."""

    version: str  # bump it whenever the rule's output for the same inputs changes
    Params: type[BaseModel]  # extra="forbid"; `runtime()` fields stay out of the action key

    def inputs(self, params: BaseModel) -> dict[str, str | list[str]]:
        """Every file, glob, folder or KIND:NAME target the build reads, by the Forgefile key naming it."""

    def build(self, ctx: Any) -> None:
        """Produce the artifact in ctx.out. Heavy imports (torch) go inside."""

    # ---- optional hooks
    isolate: bool  # default True: run build in a child Python; False for a rule that only launches a command
    preload: tuple[str, ...]  # default (): what a warm worker imports for this rule's builds, before `requires`

    def params_model(self, raw: dict) -> type[BaseModel]:
        """The model that validates this table (default: Params); Params may then be a union for the schema."""

    def version_of(self, params: BaseModel) -> str:
        """A version that depends on the params (default: `version`)."""

    def param_shapes(self) -> dict[str, type[BaseModel]]:
        """Every model params_model may pick, by name, for the hint naming where an unknown key belongs
        (default: {"": Params}; the model rule: one per recipe)."""

    def check(self, params: BaseModel) -> list[tuple[KeyPath, str]]:
        """Checks across fields (default: none)."""

    def external_inputs(self, params: BaseModel) -> dict[str, str]:
        """Files or folders outside the project, keyed by Forgefile key, never by path (default: none)."""

    def environment(self, params: BaseModel) -> dict[str, list[str]]:
        """{"vars": [...], "libraries": [...]} whose values and versions enter the key (default: none)."""

    def check_deps(self, params: BaseModel, deps: dict) -> list[tuple[KeyPath, str]]:
        """Checks against the targets this one reads: address -> {kind, params, deps} (default: none)."""

    def requires(self, params: BaseModel) -> dict[str, str]:
        """{module: forgebuild extra} that build imports, checked with find_spec before a build (default: none)."""

    def check_inputs(self, params: BaseModel, files: dict) -> list[tuple[KeyPath, str]]:
        """Checks that parse (never import) the files named: key -> [(relative, absolute)] (default: none)."""

    def upstream_inputs(self, params: BaseModel) -> dict[str, tuple[list[str], tuple[str, ...]]]:
        """key -> (addresses, kinds): every target of those kinds the addresses are built from, directly or
        not, becomes an input under the key; planning walks the graph (default: none)."""

    # ---- what the engine asks of a stage, from its runtime params as planned (plain JSON data)
    def forge_defaults(self) -> dict[str, type[BaseModel]]:
        """[forge] keys that are the default of a runtime param of the same name, each with the model that
        validates it; a target whose own value is None gets it (model: `launch`) (default: none)."""

    def resources(self, runtime: dict) -> dict[str, int]:
        """{"cpus", "gpus"} a worker needs, before the target's own `resources` table overrides them
        (default: `threads` CPUs, or 1; one GPU with `device = "cuda"`; see `default_resources`)."""

    def nodes(self, runtime: dict) -> int:
        """Machines the stage spans; above 1, the others run `forgebuild join` (default: 1)."""

    def join_launch(self, work: str) -> dict | None:
        """What node 0 left in a key's work folder while its processes run: {"target", "key", "attempt",
        "nodes", ...}, read by `forgebuild join` on the other nodes; None when nothing runs (default: None)."""

    def join_argv(self, launch: dict, rank: int) -> list[str]:
        """The command node `rank` runs to take part in that launch (a stage with nodes > 1 needs it)."""


class RuleHooks:
    """One rule module seen through :class:`Rule`: every optional hook callable, with its default.
    Made once per module (`hooks`), so a call site never asks whether a hook exists."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.isolate = bool(getattr(module, "isolate", True))
        self.preload = tuple(getattr(module, "preload", ()))
        self._hooks = {name: getattr(module, name, None) for name in
                       ("params_model", "version_of", "check", "external_inputs", "environment", "check_deps",
                        "requires", "check_inputs", "upstream_inputs", "forge_defaults", "resources", "nodes",
                        "join_launch", "join_argv", "param_shapes")}

    def _call(self, name: str, default, *args):
        hook = self._hooks[name]
        return hook(*args) if hook is not None else default

    def params_model(self, raw: dict) -> type[BaseModel]:
        return self._call("params_model", None, raw) or self.module.Params

    def version_of(self, params: BaseModel) -> str:
        return str(self._call("version_of", self.module.version, params))

    def param_shapes(self) -> dict:
        own = getattr(self.module, "Params", None)  # a rule with params_model may have none
        return self._call("param_shapes", None) or ({"": own} if own is not None else {})

    def check(self, params: BaseModel) -> list:
        return self._call("check", [], params)

    def external_inputs(self, params: BaseModel) -> dict:
        return self._call("external_inputs", {}, params)

    def environment(self, params: BaseModel) -> dict:
        return self._call("environment", {}, params)

    def check_deps(self, params: BaseModel, deps: dict) -> list:
        return self._call("check_deps", [], params, deps)

    def requires(self, params: BaseModel) -> dict:
        return self._call("requires", {}, params)

    def check_inputs(self, params: BaseModel, files: dict) -> list:
        return self._call("check_inputs", [], params, files)

    def upstream_inputs(self, params: BaseModel) -> dict:
        return self._call("upstream_inputs", {}, params)

    def forge_defaults(self) -> dict:
        return self._call("forge_defaults", {})

    def resources(self, runtime: dict) -> dict:
        return self._call("resources", None, runtime) or default_resources(runtime)

    def nodes(self, runtime: dict) -> int:
        return self._call("nodes", 1, runtime)

    def join_launch(self, work: str) -> dict | None:
        return self._call("join_launch", None, work)

    def join_argv(self, launch: dict, rank: int) -> list[str]:
        return self._call("join_argv", None, launch, rank)

    @property
    def reads_inputs(self) -> bool:
        """Whether check_inputs is the rule's own: resolving its files (globs) costs a walk."""
        return self._hooks["check_inputs"] is not None


def default_resources(runtime: dict, processes: int = 1) -> dict:
    """CPUs from a `threads` runtime param (0: one), per process; a GPU per process with device = "cuda"."""
    cuda = runtime.get("device") == "cuda"
    cpus = max(1, runtime.get("threads") or 1) * (processes if not cuda else 1)
    return {"cpus": cpus, "gpus": processes if cuda else 0}


@functools.cache
def hooks(rule: ModuleType) -> RuleHooks:
    return RuleHooks(rule)


def params_class(rule, raw: dict):
    """The pydantic model that validates this table (most rules: their one Params)."""
    return hooks(rule).params_model(raw)


def parse_params(rule, raw: dict) -> BaseModel:
    return params_class(rule, raw).model_validate(raw)


def rule_version(rule, params: BaseModel) -> str:
    return hooks(rule).version_of(params)


def plain_params(params: BaseModel) -> tuple[dict, list[str]]:
    """Every param as a plain JSON-able value, defaults filled in (what the build gets), and the
    dotted paths of the runtime ones (what the action key leaves out: `plan.TargetPlan.params`)."""
    values, runtime_keys = {}, []
    for name, field in type(params).model_fields.items():
        value = getattr(params, name)
        if isinstance(value, BaseModel) and not is_runtime(field):
            values[name], inner = plain_params(value)
            runtime_keys += [f"{name}.{key}" for key in inner]
        else:
            values[name] = _plain(value)
            if is_runtime(field):
                runtime_keys.append(name)
    return values, runtime_keys


def identity_params(params: BaseModel) -> dict:
    """The params that enter the action key, as plain values (a model's training_config.json)."""
    from forgebuild.planning.plan import without_runtime

    return without_runtime(*plain_params(params))


def _plain(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    from pydantic_core import to_jsonable_python

    return to_jsonable_python(value)


class RuleLoadError(ForgeError):
    pass


def load_rules() -> dict[str, ModuleType]:
    rules: dict[str, ModuleType] = {}
    for ep in entry_points(group=GROUP):
        try:
            rules[ep.name] = _checked(ep.name, ep.load())
        except ForgeError:
            raise
        except Exception as e:  # a broken plugin must not take the whole tool down silently
            raise RuleLoadError(f"rule plugin '{ep.name}' ({ep.value}) failed to load: {e}") from None
    for kind, module in BUILTIN.items():
        if kind not in rules:
            rules[kind] = _checked(kind, importlib.import_module(module))
    return rules


def load_rule(kind: str) -> ModuleType:
    """One rule: what a build process needs, without importing every other rule."""
    for ep in entry_points(group=GROUP, name=kind):
        return _checked(kind, ep.load())
    if kind in BUILTIN:
        return _checked(kind, importlib.import_module(BUILTIN[kind]))
    raise RuleLoadError(f"no rule registered for kind '{kind}'")


def _checked(kind: str, module: ModuleType) -> ModuleType:
    if not KIND.match(kind):
        raise RuleLoadError(f"rule plugin '{kind}' ({module.__name__}): a kind is lower-case letters, digits, '_' or '-'")
    # a rule that picks its params per table (params_model) builds its Params union lazily
    missing = [name for name in REQUIRED if not (name == "Params" and hasattr(module, "params_model"))
               and not hasattr(module, name)]
    if missing:
        raise RuleLoadError(f"rule plugin '{kind}' ({module.__name__}) lacks {', '.join(missing)}")
    return module
