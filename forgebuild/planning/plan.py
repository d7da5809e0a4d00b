"""The plan: a validated Forgefile reduced to plain data, and its on-disk cache.

Loading a Forgefile needs pydantic, networkx and every rule module (~0.3 s of
imports here). Its result depends only on the Forgefile's bytes and the rule
code, so it is cached in ``.forge/plan.json`` keyed by both, like ninja's build
log: a no-op build then decides "all fresh" with the standard library and
xxhash alone. Everything in this module is standard library.
"""
from __future__ import annotations

import glob as globlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import cached_property

from forgebuild import __version__
from forgebuild.errors import Problem

# KIND:NAME, and a matrix cell's values after it: model:sft-v1[lr=0.001,r=8] (planning/matrix.py)
ADDRESS = re.compile(r"^([a-z][a-z0-9_-]*):([A-Za-z0-9_][A-Za-z0-9_.-]*(?:\[[A-Za-z0-9_.+=,-]+\])?)$")
CELL_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # a matrix cell's value as its address shows it (matrix.py)
GLOB_CHARS = re.compile(r"[*?\[]")
PLAN_FORMAT = 4  # 4: matrix cells (TargetPlan.group, .cell; Plan.groups)


@dataclass
class InputSpec:
    key: str  # Forgefile key path, e.g. "inputs.raw"
    spec: str  # as written: a path, a glob or KIND:NAME
    kind: str  # "target" | "glob" | "path"
    line: int | None = None


@dataclass
class TargetPlan:
    address: str
    kind: str
    version: str
    line: int | None
    values: dict  # every param as the build gets it, defaults filled in (rules.plain_params)
    runtime_keys: list[str]  # dotted paths of the runtime params in `values`: never in the action key
    inputs: list[InputSpec]
    isolate: bool = True
    # declared environment: variables whose values enter the key (read at decision
    # time) and library versions (resolved when the plan is made: the plan cache is
    # invalidated whenever installed packages change)
    env_vars: list[str] = field(default_factory=list)
    libraries: dict[str, str | None] = field(default_factory=dict)
    resources: dict = field(default_factory=dict)  # asked of a Ray task / Slurm job: runtime only
    group: str | None = None  # a matrix cell's: the address of the table it is a cell of
    cell: dict = field(default_factory=dict)  # a matrix cell's values: dotted param path -> value

    # plain properties: 3.11's cached_property takes a lock on every read, dearer than this 1 us
    @property
    def params(self) -> dict:
        """The identity params: `values` without the runtime ones; these enter the action key."""
        return without_runtime(self.values, self.runtime_keys)

    @property
    def runtime(self) -> dict:
        """The runtime params alone, nested as in `values` (a table only where it holds one)."""
        found: dict = {}
        for key in self.runtime_keys:
            *tables, name = key.split(".")
            source, into = self.values, found
            for table in tables:
                source, into = source[table], into.setdefault(table, {})
            into[name] = source[name]
        return found

    @cached_property
    def deps(self) -> list[str]:
        return sorted({i.spec for i in self.inputs if i.kind == "target"})


def without_runtime(values: dict, runtime_keys: list[str]) -> dict:
    """`values` without the params at the dotted paths `runtime_keys`, tables kept in order."""
    here, inner = set(), {}
    for key in runtime_keys:
        head, _, rest = key.partition(".")
        if rest:
            inner.setdefault(head, []).append(rest)
        else:
            here.add(head)
    return {k: without_runtime(v, inner[k]) if k in inner else v for k, v in values.items() if k not in here}


@dataclass
class Plan:
    forgefile: str  # absolute path
    settings: dict
    targets: dict[str, TargetPlan]
    order: list[str]  # topological, dependencies first
    # the files besides the Forgefile the plan was read from: rule modules, search records (planning/trials.py)
    # -> [size, mtime_ns], or [-1, -1] for a record not written yet
    rule_files: dict[str, list] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)  # a matrix's address -> its cells, in order

    @property
    def root(self) -> str:
        return os.path.dirname(self.forgefile)

    @property
    def display_name(self) -> str:
        """The Forgefile as the user named it: relative to the current folder when below it."""
        return display_path(self.forgefile)

    def closure(self, addresses) -> list[str]:
        """The requested targets and everything they depend on, in build order."""
        wanted, stack = set(), list(addresses)
        while stack:
            address = stack.pop()
            if address not in wanted:
                wanted.add(address)
                stack.extend(self.targets[address].deps)
        return [a for a in self.order if a in wanted]


def display_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def classify(spec: str) -> str:
    if ADDRESS.match(spec):
        return "target"
    return "glob" if GLOB_CHARS.search(spec) else "path"


def outside_root(spec: str) -> bool:
    """A path that names something outside the Forgefile's folder (by its text, not its links)."""
    if os.path.isabs(spec) or spec.startswith("~"):
        return True
    norm = os.path.normpath(spec)
    return norm == ".." or norm.startswith(".." + os.sep)


def resolve_sources(plan: Plan, target: TargetPlan, spec: InputSpec) -> list[tuple[str, str]]:
    """(path relative to the project, absolute path) of every file an input names.

    A folder expands to the files below it. Raises a Problem-carrying
    ForgefileError when a path is missing or a glob matches nothing.
    """
    from forgebuild.errors import ForgefileError

    root = plan.root

    def problem(message: str) -> ForgefileError:
        return ForgefileError([Problem(plan.display_name, spec.line, message, target.address, spec.key)])

    if spec.kind == "external":  # a folder outside the project (an imported model): named by key, not path
        full = os.path.join(root, os.path.expanduser(spec.spec))
        if os.path.isdir(full):
            from forgebuild.hashing import walk_files

            try:
                return [(f"<{spec.key}>/{rel}", path) for rel, path, _ in walk_files(full)]
            except ValueError as e:
                raise problem(str(e)) from None
        if not os.path.isfile(full):
            raise problem(f"no such file or folder '{spec.spec}'")
        return [(f"<{spec.key}>", full)]
    if spec.kind == "glob":
        matches = sorted(
            m for m in globlib.glob(spec.spec, root_dir=root, recursive=True)
            if os.path.isfile(os.path.join(root, m)) and not any(m.startswith(w + os.sep) for w in workspace_dirs(plan))
        )
        if not matches:
            raise problem(f"no file matches '{spec.spec}'")
        return [(m.replace(os.sep, "/"), os.path.join(root, m)) for m in matches]
    full = os.path.join(root, spec.spec)
    if os.path.isdir(full):
        from forgebuild.hashing import walk_files

        try:
            rel_prefix = os.path.normpath(spec.spec).replace(os.sep, "/")
            skip = {os.path.join(root, w) for w in workspace_dirs(plan)}  # `inputs = { all = "." }`
            return [(f"{rel_prefix}/{rel}", path) for rel, path, _ in walk_files(full, skip)]
        except ValueError as e:
            raise problem(str(e)) from None
    if not os.path.isfile(full):
        raise problem(f"no such file '{spec.spec}'{_nearby(root, spec.spec)}")
    return [(os.path.normpath(spec.spec).replace(os.sep, "/"), full)]


def workspace_dirs(plan: Plan) -> list[str]:
    """forgebuild's own folders, relative to the project: never a stage's input. Hashing them
    made a target reading "." stale after every build (its own build wrote there)."""
    cache = os.path.normpath(plan.settings.get("cache") or ".forge")
    return [".forge"] + ([cache] if cache != ".forge" and not outside_root(cache) else [])


def _nearby(root: str, spec: str) -> str:
    """A suggestion among the files beside a missing one."""
    from forgebuild.errors import closest

    folder, name = os.path.split(spec)
    try:
        names = os.listdir(os.path.join(root, folder))
    except OSError:
        return ""
    found = closest(name, names, cutoff=0.8)  # by file name: a shared folder makes every path look alike
    return f" (did you mean '{os.path.join(folder, found)}'?)" if found else ""


# ---------------------------------------------------------------- plan cache

def forgefile_digest(data: bytes) -> str:
    from forgebuild.hashing import bytes_digest

    return bytes_digest(data + f"\0forgebuild {__version__}\0plan {PLAN_FORMAT}".encode())


def environment() -> list:
    """Which interpreter and which installed packages: a plugin installed, upgraded or
    removed changes a site-packages folder's mtime, so the cached plan's rules are re-read."""
    found = [os.path.realpath(sys.executable)]  # `python3` and `python3.11` are one interpreter
    # sys.path[0] is the console script's folder or, under `python -m`, the current
    # one: neither holds plugins, and the current folder changes with every output.
    for entry in sys.path[1:]:
        try:
            found.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            found.append([entry, None])
    return found


def save(plan: Plan, path: str, digest: str) -> None:
    from forgebuild.hashing import save_json

    save_json(path, {"digest": digest, "environment": environment(), "plan": asdict(plan)})


def load_cached(path: str, digest: str) -> Plan | None:
    """The cached plan if it was made from these Forgefile bytes and the same rule code."""
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return None
    if payload.get("digest") != digest or payload.get("environment") != environment():
        return None
    raw = payload["plan"]
    for module_file, (size, mtime_ns) in raw["rule_files"].items():
        try:
            st = os.stat(module_file)
        except OSError:
            if size == -1:  # a search record that is still not written
                continue
            return None
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            return None
    targets = {
        a: TargetPlan(**{**t, "inputs": [InputSpec(**i) for i in t["inputs"]]})
        for a, t in raw["targets"].items()
    }
    return Plan(raw["forgefile"], raw["settings"], targets, raw["order"], raw["rule_files"], raw["groups"])
