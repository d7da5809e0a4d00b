"""The import contract: which module of forgebuild/ may import which, read from the source with `ast`.

Every `import` counts, a lazy one inside a function too (it runs sooner or later), and so does the
package `__init__` that importing a submodule runs first (but for the packages the importing module
sits in: Python has run those already). Rule modules that `forgebuild.rules` loads by name
(importlib) are checked on their own below. The layers are the subpackages of forgebuild/, and each
package's docstring says the same as this list:

- BASE (the package's `__version__`, errors, limits, hashing): imports only BASE.
- STORE (`forgebuild.store`): keeps artifacts; imports only STORE and BASE. It never imports
  planning, the engine, rules or the command line.
- PLANNING (`forgebuild.planning`, and the rule registry `forgebuild.rules`): parse, validate, hash,
  decide. Everything it reaches, following every import, is PLANNING, BASE, STORE or a rule's
  validation module (RULES): never the ENGINE, a module only a build imports (BUILD_ONLY), the
  command line, or the ML stack.
- RULES (`forgebuild.rules.*`): what validating a Forgefile imports. At module level (what
  `load_rules` runs) a rule module reaches neither the ML stack nor BUILD_ONLY; its build imports
  those inside `build`. Rules never import the ENGINE, STORE or the command line: a build gets what
  it needs through its context.
- BUILD_ONLY (the eval harness, scoring, report and evaluate; the model recipes' training, packed
  and offset_dpo): imported inside a build only, so they may import the ML stack at the top.
- ENGINE (`forgebuild.engine`): runs builds. It never imports the command line; of the rules it
  knows the registry only.
- PRESETS (`forgebuild.presets`): the files `forgebuild init` writes, read as data. Its module
  imports no forgebuild module; the presets' own scripts are data too (never imported, so they are no
  modules here).
- CLI (`forgebuild.cli`, `__main__`): on top, may import anything.
- No circles: the module graph is acyclic.

An exception is an edge (module, imported module) that breaks a rule and is left for later; each
names its reason. The test fails on a new offender and on an exception that no longer exists.
"""
from __future__ import annotations

import ast
import pathlib
from collections import deque

import networkx as nx

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "forgebuild"

BASE = {"forgebuild", "errors", "limits", "hashing"}
BUILD_ONLY = {"rules.eval.evaluate", "rules.eval.harness", "rules.eval.report", "rules.eval.scoring",
              "rules.eval.vision",
              "rules.model.training", "rules.model.packed", "rules.model.offset_dpo", "rules.model.vision",
              "rules.synth.sampling", "rules.synth.vllm_engine", "rules.synth.reward_scores", "rules.picture"}
ML_STACK = {"PIL", "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "datasets", "lm_eval",
            "matplotlib", "safetensors", "tokenizers", "ray", "submitit"}

EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "forgebuild"


PRESET_FILES = PACKAGE / "presets"  # its subfolders hold the presets' files: data, not modules
MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))
           if p.parent == PRESET_FILES or PRESET_FILES not in p.parents}
PACKAGES = {"store": "STORE", "planning": "PLANNING", "engine": "ENGINE", "rules": "RULES", "cli": "CLI",
            "presets": "PRESETS"}


def layer(module: str) -> str:
    if module in BASE:
        return "BASE"
    if module in BUILD_ONLY:
        return "BUILD_ONLY"
    if module == "__main__" or module == "rules":
        return "CLI" if module == "__main__" else "PLANNING"
    return PACKAGES.get(module.split(".")[0], "UNPLACED")


def members(name: str) -> set[str]:
    return {m for m in MODULES if layer(m) == name}


STORE, PLANNING, ENGINE = members("STORE"), members("PLANNING"), members("ENGINE")


def ours(dotted: str) -> str | None:
    """`forgebuild.x.y` as a module name here (`x.y`), or None for another package."""
    if dotted != "forgebuild" and not dotted.startswith("forgebuild."):
        return None
    name = dotted[len("forgebuild."):] or "forgebuild"
    return name if name in MODULES else None


def targets(module: str, node: ast.AST) -> list[str]:
    """What one import statement imports: our modules by name, anything else by its top-level package."""
    if isinstance(node, ast.Import):
        return [ours(a.name) or a.name.split(".")[0] for a in node.names]
    if node.level == 0 and node.module.split(".")[0] != "forgebuild":
        return [node.module.split(".")[0]]
    here = ["forgebuild"] + ([] if module == "forgebuild" else module.split("."))
    if node.level:
        package = here if MODULES[module].name == "__init__.py" else here[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module
    return [ours(f"{base}.{a.name}") or ours(base) or base for a in node.names]  # base: a module that is gone


def parents(module: str) -> list[str]:
    """The packages importing `module` runs first (forgebuild.rules.eval for evals.gate)."""
    parts = module.split(".")
    return ["forgebuild"] + [".".join(parts[:i]) for i in range(1, len(parts))] if module != "forgebuild" else []


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported, line, lazy) for every import in the module; lazy: inside a function."""
    found = []
    own = set(parents(module)) | {module}

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in targets(module, child):
                    ran = parents(name) if name in MODULES else []
                    found.extend((n, child.lineno, lazy) for n in [name] + [p for p in ran if p not in own])
            visit(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(MODULES[module].read_text(encoding="utf-8")), False)
    return [(n, line, lazy) for n, line, lazy in found if n != module]


EDGES = {m: imports(m) for m in MODULES}


def excused(module: str, name: str, line: int) -> bool:
    """An exception covers its statement: the package that importing the module runs first too."""
    return any((module, n) in EXCEPTIONS for n, at, _ in EDGES[module] if at == line and n in (name, *children(name)))


def children(package: str) -> list[str]:
    return [m for m in MODULES if package in parents(m)]


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def reach(start: set[str], module_level_only: bool = False) -> dict[str, list[str]]:
    """Everything the modules in `start` import, followed transitively, each with the chain of
    `file:line imports X` steps that reaches it (the first found, breadth first)."""
    chains = {m: [] for m in start}
    queue = deque(start)
    while queue:
        module = queue.popleft()
        for name, line, lazy in EDGES[module]:
            if (module_level_only and lazy) or excused(module, name, line) or name in chains:
                continue
            chains[name] = chains[module] + [f"{where(module, line)} imports {name}"]
            if name in MODULES:
                queue.append(name)
    return chains


def offenders(chains: dict[str, list[str]], forbidden) -> list[str]:
    return sorted("; ".join(chain) for name, chain in chains.items() if chain and forbidden(name))


def direct(modules, forbidden) -> list[str]:
    """Each import of one of `modules` that breaks the rule, as `file:line imports X`."""
    return sorted(f"{where(m, line)} imports {name}" for m in modules for name, line, _ in EDGES[m]
                  if forbidden(name) and not excused(m, name, line))


def holds(rule: str, bad: list[str]) -> None:
    assert not bad, f"{rule}:\n" + "\n".join(bad)


def test_the_reader_sees_lazy_imports_and_the_packages_they_run():
    """rules.eval imports the eval harness inside `build`: one lazy edge to rules.eval.evaluate; its
    import of planning.plan runs the package planning first. A submodule's import of its own package
    is no edge: rules.model.training does not import rules.model by sitting in it."""
    lazy = {(name, lazy) for name, _, lazy in EDGES["rules.eval"]}
    assert {("rules.eval.evaluate", True), ("rules.eval.gate", False), ("planning.plan", False),
            ("planning", False)} <= lazy
    assert "rules.eval" not in {name for name, _, _ in EDGES["rules.eval.evaluate"]}


def test_every_module_has_a_layer():
    holds("modules in no layer (add each to one in tests/test_layers.py)",
          [m for m in MODULES if layer(m) == "UNPLACED"])


def test_no_import_circles():
    graph = nx.DiGraph()
    for module, found in EDGES.items():
        graph.add_edges_from((module, name, {"line": line}) for name, line, _ in found if name in MODULES)
    holds("import circles", ["; ".join(f"{where(a, graph.edges[a, b]['line'])} imports {b}"
                                       for a, b in zip(c, c[1:] + c[:1])) for c in nx.simple_cycles(graph)])


def test_base_imports_only_base():
    holds("BASE imports only BASE", direct(BASE, lambda n: n in MODULES and n not in BASE))


def test_presets_import_no_forgebuild_module():
    holds("PRESETS imports no forgebuild module", direct(members("PRESETS"), lambda n: n in MODULES))


def test_store_imports_only_store_and_base():
    holds("STORE imports only STORE and BASE", offenders(reach(STORE), lambda n: n in MODULES and n not in STORE | BASE))


def test_planning_reaches_no_engine_build_cli_or_ml_stack():
    allowed = {"PLANNING", "BASE", "STORE", "RULES"}
    holds("PLANNING reaches only PLANNING, BASE, STORE and RULES, and no ML stack",
          offenders(reach(PLANNING), lambda n: (layer(n) not in allowed) if n in MODULES else n in ML_STACK))


def test_rule_modules_import_no_ml_stack_at_module_level():
    rules = {m for m in MODULES if layer(m) == "RULES"}
    holds("RULES at module level reach no ML stack, BUILD_ONLY, ENGINE or CLI",
          offenders(reach(rules, module_level_only=True),
                    lambda n: n in ML_STACK or layer(n) in ("BUILD_ONLY", "ENGINE", "CLI")))


def test_rules_never_import_engine_store_or_cli():
    rules = {m for m in MODULES if layer(m) in ("RULES", "BUILD_ONLY")}
    holds("RULES and BUILD_ONLY never import ENGINE, STORE or CLI",
          direct(rules, lambda n: n in MODULES and layer(n) in ("ENGINE", "STORE", "CLI")))


def test_engine_never_imports_cli_or_a_rule():
    holds("ENGINE never imports CLI, nor a rule but the registry",
          direct(ENGINE, lambda n: n in MODULES and layer(n) in ("CLI", "RULES", "BUILD_ONLY")))


def test_each_exception_still_exists():
    """An exception that the code no longer needs goes from the list, so the rule is whole again."""
    holds("exceptions no import needs any more",
          [f"{m} -> {n}" for m, n in EXCEPTIONS if n not in {name for name, _, _ in EDGES.get(m, [])}])


def test_the_command_line_knows_rules_only_through_the_registry():
    """A verb asks a rule through its hooks (`join`'s node rank lives in the engine, not a recipe)."""
    holds("CLI never imports a rule module but the registry",
          direct(members("CLI"), lambda n: n in MODULES and layer(n) in ("RULES", "BUILD_ONLY")))
