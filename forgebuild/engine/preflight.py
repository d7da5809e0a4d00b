"""Before the first stage starts: what would fail minutes later, found now, without importing
the ML stack.

Two optional hooks of the rule protocol (forgebuild/rules/__init__.py), asked only of the
targets this build is about to run (a cache hit needs neither):

- ``requires(params) -> {module: extra}``: the Python modules the build imports, each with the
  forgebuild extra that installs it. A module that ``importlib.util.find_spec`` cannot find
  (nothing is imported) stops the build with one line naming the ``pip install`` that fixes it:
  the example's evaluation used to fail on matplotlib after minutes of training.
- ``check_inputs(params, files) -> [(key path, message)]``: checks that read the files a target
  names (``files`` maps each input key to its files' (project-relative, absolute) paths): a
  reward function missing from its file, an n-gram longer than every benchmark text. They are
  Forgefile errors (file, line, target, key; exit 2). They run here, not when the Forgefile is validated, because
  the plan is cached by the Forgefile's bytes while these files change on their own.
"""
from __future__ import annotations

import importlib.util
import os
import shlex

from forgebuild.errors import ForgeError, ForgefileError, Problem


class MissingPackages(ForgeError):
    """A module a stage about to run imports is not installed (exit 2)."""


def check(plan, rules, decisions: dict, packages: bool = True) -> None:
    """Raise MissingPackages or ForgefileError for the targets of `decisions` that will build.
    `packages`: whether stages import here (not so for Ray tasks and Slurm jobs: their machines'
    packages are theirs, and this one may only coordinate)."""
    from forgebuild.rules import parse_params

    # a target the remote holds is fetched, not built: it needs neither packages nor input checks here (if
    # its entry is refused at fetch time it builds, and a missing package then fails that stage alone)
    building = [a for a, d in decisions.items() if d.state not in ("fresh", "remote")]
    parsed = {a: parse_params(rules[plan.targets[a].kind], plan.targets[a].values)
              for a in building}
    missing = missing_modules(plan, rules, parsed) if packages else {}
    if missing:
        raise MissingPackages(missing_message(missing))
    problems = [p for a in building for p in input_problems(plan, plan.targets[a], rules[plan.targets[a].kind],
                                                            parsed[a])]
    if problems:
        raise ForgefileError(problems)


# ------------------------------------------------------------------ packages

def missing_modules(plan, rules, parsed: dict) -> dict[str, tuple[str, list[str]]]:
    """module -> (extra, targets needing it), for each declared module that cannot be found."""
    from forgebuild.rules import hooks

    missing: dict[str, tuple[str, list[str]]] = {}
    found: dict[str, bool] = {}
    for address, params in parsed.items():
        for module, extra in hooks(rules[plan.targets[address].kind]).requires(params).items():
            top = module.split(".", 1)[0]  # find_spec("a.b") would import a
            if top not in found:
                found[top] = _installed(top)
            if not found[top]:
                missing.setdefault(top, (extra, []))[1].append(address)
    return missing


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # imported already, without a spec (a module made by hand): it is there
        return True


def missing_message(missing: dict[str, tuple[str, list[str]]]) -> str:
    parts = [f"{module} (for {', '.join(targets)})" for module, (_, targets) in sorted(missing.items())]
    extras = sorted({extra for extra, _ in missing.values()})
    return f"not installed: {', '.join(parts)}; run: {install_command(extras)}"


def install_command(extras, checkout: str | None = None) -> str:
    """`pip install 'forgebuild[eval]'`, or `pip install -e 'CHECKOUT[eval]'` when forgebuild runs
    from a source checkout (an editable install, the README's): its pyproject.toml has the extras.
    `checkout`: the folder above the package (default: this one's)."""
    if checkout is None:
        checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wanted = ",".join(extras)
    if os.path.isfile(os.path.join(checkout, "pyproject.toml")):
        return f"pip install -e {shlex.quote(f'{checkout}[{wanted}]')}"
    return f"pip install {shlex.quote(f'forgebuild[{wanted}]')}"


# ------------------------------------------------------------------ files

def input_problems(plan, target, rule, params) -> list[Problem]:
    from forgebuild.rules import hooks

    if not hooks(rule).reads_inputs:
        return []
    from forgebuild.planning.plan import resolve_sources

    files: dict[str, list[tuple[str, str]]] = {}
    for spec in target.inputs:
        if spec.kind not in ("target", "external"):  # an imported model's folder: no check reads it
            files.setdefault(spec.key, []).extend(resolve_sources(plan, target, spec))
    found = hooks(rule).check_inputs(params, files)
    if not found:
        return []
    from forgebuild.planning.forgefile import KeyLocator, _checked, key_text, read_toml

    locate = KeyLocator(read_toml(plan.forgefile)[0])
    name = target.address.split(":", 1)[1]

    def where(path, message):
        return Problem(plan.display_name, locate.line((target.kind, name, *path)), message, target.address,
                       key_text(path) or None)

    return _checked(found, where)
