"""Load a Forgefile: TOML -> validated targets -> Plan, with every problem found in one pass.

Each problem names the file, the line, the target and the key, and suggests the
nearest valid name. The result is cached (see plan.py), so this module and its
imports (pydantic, networkx, the rules) are only paid when the Forgefile or a
rule changed.
"""
from __future__ import annotations

import math
import os
import re
import sys
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forgebuild import limits
from forgebuild.planning import matrix, trials
from forgebuild.planning import plan as planlib
from forgebuild.errors import ForgefileError, Problem, did_you_mean, suggest_address
from forgebuild.planning.plan import InputSpec, Plan, TargetPlan

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ForgeSettings(BaseModel):
    """The optional ``[forge]`` table: project-wide settings."""

    model_config = ConfigDict(extra="forbid")
    default: list[str] = Field(default_factory=list, description="targets a bare `forgebuild` builds (all when empty)")
    seed: int = Field(0, description="project seed; each target's seed is derived from it and the target's address")
    jobs: int | None = Field(None, ge=1, le=limits.THREADS, description="default for -j: stages run in parallel (runtime only)")
    cache: str | None = Field(None, description="local store folder, relative to the Forgefile (default .forge)")
    remote: str | None = Field(None, description="a shared cache (fsspec URL: s3://bucket/prefix, file:///mnt/cache); "
                                                 "credentials come from the filesystem's own configuration")
    push: bool = Field(True, description="write what this workspace builds to the remote (false: read only)")
    trusted_keys: list[str] = Field(
        default_factory=list, description="public keys whose signed remote entries this workspace uses: OpenSSH "
                                          "lines (`ssh-ed25519 AAAA...`, as `forgebuild keys` shows) or files "
                                          "holding one, relative to the Forgefile; its own key is always trusted")
    launch: dict | None = Field(None, description="default `launch` of training stages, e.g. { processes = 2 } "
                                                  "(runtime only; a target's own launch wins)")
    track: dict | None = Field(None, description="default `track` of model and eval targets, e.g. { mlflow = true } "
                                                 "(runtime only; a target's own track wins)")
    worker_files: Literal["shared", "remote"] = Field(
        "shared", description="how --executor ray workers see the project: `shared` (one machine or a shared "
                              "filesystem) or `remote` (each task builds in its own copy; artifacts meet in the "
                              "remote cache); --worker-files wins (runtime only)")
    workers: Literal["cold", "run", "resident"] = Field(
        "run", description="how local stages' build processes start: `cold` (a fresh interpreter each), `run` (forked "
                           "from one warm worker per run that imported the ML stack once) or `resident` (a warm "
                           "worker that outlives the run, reused by later ones); --workers wins (runtime only)")
    # a week: past it a resident worker is forgotten rather than idle, and its libraries likely upgraded
    worker_idle: int = Field(900, ge=1, le=limits.WAIT_SECONDS,
                             description="seconds a resident warm worker waits for a request before it exits "
                                         "(runtime only)")

    @field_validator("cache")
    @classmethod
    def _local_folder(cls, value):
        if value is not None and "://" in value:
            raise ValueError("must be a local folder; a shared cache is `remote`")
        return value

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, value):
        from forgebuild.store.signing import is_key_text, parse_public

        for item in value:
            if is_key_text(item):
                parse_public(item)  # KeyProblem is a ValueError: a Forgefile error with the line
        return value

    @field_validator("remote")
    @classmethod
    def _no_secrets(cls, value):
        if value is not None and re.match(r"^[a-z0-9+.-]+://[^/@]*:[^/@]*@", value):
            raise ValueError("holds credentials: configure them for the filesystem (environment, profiles), "
                             "never in the Forgefile")
        return value


class Resources(BaseModel):
    """`resources = { cpus = 8, gpus = 1, memory_gb = 64 }` on any target: what a Ray task or a
    Slurm job for it asks for (--executor ray|slurm). Runtime only, like `threads`."""

    model_config = ConfigDict(extra="forbid")
    cpus: int | None = Field(None, ge=1, le=limits.THREADS, description="CPU cores (default: from `threads` x processes, else 1)")
    gpus: int | None = Field(None, ge=0, le=limits.THREADS, description="GPUs (default: `launch.processes` with device = \"cuda\", else 0)")
    memory_gb: float | None = Field(None, gt=0, description="memory in GB (default: the scheduler's own default)")


# ------------------------------------------------------------------ locating keys

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})(?:\s*\.\s*(?:{_BARE}|{_QUOTED}))*"
HEADER = re.compile(rf"^\[\[?\s*({_KEY})\s*\]\]?\s*(?:#.*)?$")
KEYVAL = re.compile(rf"^({_KEY})\s*=\s*(.*)$")
INLINE_KEY = re.compile(rf"[{{,]\s*({_KEY})\s*=")
KEY_PART = re.compile(rf"{_BARE}|{_QUOTED}")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in KEY_PART.findall(text))


class KeyLocator:
    """Maps TOML key paths to the line that defines them (tomllib keeps no positions)."""

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        table: tuple = ()
        in_string = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if in_string:
                if line.count(in_string) % 2:
                    in_string = None
                continue
            if not line or line.startswith("#"):
                continue
            if m := HEADER.match(line):
                table = _split_key(m.group(1))
                for i in range(1, len(table) + 1):
                    self.lines.setdefault(table[:i], lineno)
                continue
            if m := KEYVAL.match(line):
                key = table + _split_key(m.group(1))
                for i in range(len(table) + 1, len(key) + 1):  # `params.seed = 1` defines `params` here too
                    self.lines.setdefault(key[:i], lineno)
                rest = m.group(2)
                for inner in INLINE_KEY.finditer(rest):
                    self.lines.setdefault(key + _split_key(inner.group(1)), lineno)
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2:
                        in_string = quote

    def line(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


# ------------------------------------------------------------------ pydantic errors

_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer",
    "int_from_float": "an integer", "int_parsing_size": "an integer between -2^63 and 2^63-1", "float_type": "a number", "float_parsing": "a number",
    "bool_type": "true or false", "bool_parsing": "true or false", "list_type": "an array",
    "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
_TOML_TYPE = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}


def _describe(value) -> str:
    kind = _TOML_TYPE.get(type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, (dict, list)) else ""
    if isinstance(value, bool):
        shown = "true" if value else "false"
    elif isinstance(value, str):
        shown = '"' + value + '"' if len(value) < 40 else ""
    return f"{kind} {shown}".strip()


def _key_path(loc: tuple, raw, keep_last: bool) -> list:
    """The pydantic location reduced to keys that exist in the raw TOML (drops union tags)."""
    path, node = [], raw
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif keep_last and i == len(loc) - 1:
            path.append(part)
    return path


def _one_of(err: dict, value) -> str:
    """`expected one of bpe, unigram, wordpiece, got string "bpee" (did you mean 'bpe'?)`."""
    allowed = [a.strip().strip("'") for a in re.split(r",| or ", err["ctx"]["expected"]) if a.strip()]
    same_letters = [a for a in allowed if isinstance(value, str) and a.lower() == value.lower()]
    hint = f" (did you mean '{same_letters[0]}'?)" if same_letters else (
        did_you_mean(value, allowed) if isinstance(value, str) else "")
    return f"expected one of {', '.join(allowed)}, got {_describe(value)}{hint}"


def key_text(path) -> str:
    """`outputs[0]`, `inputs.raw`: a key path as the user would write it."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_at(model: type[BaseModel], path: list):
    """The pydantic model that owns the keys at this path, for suggestions."""
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _elsewhere(model: type[BaseModel], name: str) -> str:
    """Where an unknown key does belong: `merge` -> `lora.merge` in the same table, or
    `seq_len` in a model's `train` -> a key of tokens targets. Only on the error path."""
    inside = _paths_of(model, name)
    if inside:
        return f" (did you mean '{key_text(inside[0])}'?)"
    from forgebuild.rules import hooks, load_rules

    kinds = []
    for kind, rule in sorted(load_rules().items()):
        shapes = [s for s, model in hooks(rule).param_shapes().items() if name in model.model_fields]
        if shapes == [""]:  # a rule with one Params
            kinds.append(kind)
        elif shapes:  # the model rule: one Params per recipe
            kinds.append(f"{kind} (recipe {', '.join(shapes)})")
    return f"; '{name}' is a key of {' and '.join(kinds)} targets" if kinds else ""


def _paths_of(model: type[BaseModel], name: str, prefix: tuple = ()) -> list[tuple]:
    """Every key path in `model`, and the tables nested in it, that ends in `name`."""
    found = []
    for field_name, field in model.model_fields.items():
        path = (*prefix, field_name)
        if field_name == name:
            found.append(path)
        for inner in typing.get_args(field.annotation) or (field.annotation,):  # `Lora | None` too
            if isinstance(inner, type) and issubclass(inner, BaseModel) and len(prefix) < 4:  # a model may nest itself
                found += _paths_of(inner, name, path)
    return found


def _value_at(raw, path: list):
    for part in path:
        raw = raw[part]
    return raw


def validation_problems(exc: ValidationError, model, raw: dict, where) -> list[Problem]:
    """Turn pydantic's errors into Forgefile problems, merging union alternatives per key."""
    expected: dict[tuple, list[str]] = {}
    problems: list[Problem] = []
    for err in exc.errors():
        kind, loc = err["type"], tuple(err["loc"])
        if kind == "extra_forbidden":
            path = _key_path(loc, raw, keep_last=True)
            owner = _model_at(model, path[:-1])
            hint = did_you_mean(str(path[-1]), owner.model_fields) if owner else ""
            if owner and not hint:
                hint = _elsewhere(model, str(path[-1])) or f"; valid keys: {', '.join(owner.model_fields)}"
            problems.append(where(path, f"unknown key{hint}"))
        elif kind == "missing":
            path = _key_path(loc, raw, keep_last=True)
            problems.append(where(path, "missing required key"))
        else:
            path = tuple(_key_path(loc, raw, keep_last=False))
            text = _EXPECTED.get(kind)
            if kind == "literal_error":
                problems.append(where(list(path), _one_of(err, _value_at(raw, list(path)))))
                continue
            if kind in ("too_short", "string_too_short"):  # `cmd = []`, `cmd = ""`: a shape, said as one
                text = "a non-empty " + ("string" if kind == "string_too_short" else "array")
            if kind in _BOUNDS:
                op, name = _BOUNDS[kind]
                limit = err["ctx"][name]
                integral = isinstance(limit, int) and isinstance(_value_at(raw, list(path)), int)
                text = f"{'an integer' if integral else 'a number'} {op} {limit if isinstance(limit, int) else f'{limit:g}'}"
            if text is None:
                message = err["msg"]
                text = message[0].lower() + message[1:]
            expected.setdefault(path, [])
            if text not in expected[path]:
                expected[path].append(text)
    type_texts = set(_EXPECTED.values())
    for path, texts in expected.items():
        inner = any(len(q) > len(path) and q[: len(path)] == path for q in expected)
        if inner and set(texts) <= type_texts:
            continue  # `cmd = [""]`: the array alternative has the error inside; "expected a string" is noise
        got = _describe(_value_at(raw, list(path)))
        plain = [t for t in texts if t.startswith(("a ", "an ", "true"))]
        other = [t for t in texts if t not in plain]
        if "a number" in plain and "an integer" in plain:
            plain.remove("an integer")
        if plain:
            last = plain[-1] if " or " in plain[-1] else f"or {plain[-1]}"
            wanted = plain[0] if len(plain) == 1 else f"{', '.join(plain[:-1])}{',' if ' or ' in last[3:] else ''} {last}"
            problems.append(where(list(path), f"expected {wanted}, got {got}"))
        for text in other:
            problems.append(where(list(path), text))
    return problems


# ------------------------------------------------------------------ loading

def read_toml(path: str) -> tuple[str, dict]:
    name = planlib.display_path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ForgefileError([Problem(name, None, "no such file")]) from None
    except OSError as e:
        raise ForgefileError([Problem(name, None, f"cannot read: {e.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ForgefileError([Problem(name, line, f"not UTF-8 (byte {e.start})")]) from None
    try:
        return text, tomllib.loads(text)
    except RecursionError:  # tomllib recurses once per level: ~330 nested arrays exhaust Python's stack
        line = _nesting_line(text, NESTING)
        raise ForgefileError([Problem(name, line, f"invalid TOML: arrays or tables nested more than {NESTING} deep")]) from None
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)$", message)
        if m:
            raw = message[: m.start()].rstrip()
            message = _toml_message(raw, text)
            column = f" (column {m.group(2)})" if message == raw else ""
            raise ForgefileError([Problem(name, int(m.group(1)), f"invalid TOML: {message}{column}")]) from None
        m = re.search(r"\(at end of document\)$", message)
        line = text.count("\n") + 1
        raise ForgefileError([Problem(name, line, f"invalid TOML: {message[: m.start()].rstrip() if m else message}")]) from None


NESTING = 100  # no Forgefile needs more; tomllib itself fails at ~330 levels with a RecursionError


def _nesting_line(text: str, limit: int) -> int:
    """The line where brackets and braces (outside strings and comments) first nest deeper than `limit`."""
    depth, line, i, quote = 0, 1, 0, None
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
        if quote:
            if text.startswith(quote, i):
                i, quote = i + len(quote), None
                continue
            i += 2 if char == "\\" and quote[0] == '"' else 1
            continue
        if char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if char in "\"'":
            quote = text[i:i + 3] if text.startswith(char * 3, i) else char
            i += len(quote)
            continue
        depth += (char in "[{") - (char in "]}")
        if depth > limit:
            return line
        i += 1
    return line


def _toml_message(message: str, text: str) -> str:
    """tomllib's words, made to speak of targets and keys where we can tell."""
    m = re.match(r"Cannot declare \((.*)\) twice$", message)
    if m:
        path = tuple(re.findall(r"'((?:[^'\\]|\\.)*)'", m.group(1)))
        what = "target" if len(path) == 2 else "table"
        first = KeyLocator(text).line(path)
        return f"{what} [{'.'.join(path)}] is declared twice" + (f" (first at line {first})" if first else "")
    if message == "Cannot overwrite a value":
        return "a key is set twice"
    if message == "Illegal character '\\n'":
        return "line ends inside a string (unclosed quote?)"
    return message


def load(path: str, rules=None) -> Plan:
    """Parse and validate a Forgefile; raise ForgefileError listing every problem."""
    from forgebuild.rules import load_rules

    path = os.path.abspath(path)
    name = planlib.display_path(path)
    text, data = read_toml(path)
    locate = KeyLocator(text)
    rules = rules if rules is not None else load_rules()
    problems: list[Problem] = []

    def problem_at(toml_path: tuple, message: str, target=None, key=None) -> Problem:
        return Problem(name, locate.line(toml_path), message, target, key)

    settings = ForgeSettings()
    forge_raw = data.get("forge", {})
    if not isinstance(forge_raw, dict):
        problems.append(problem_at(("forge",), "[forge] must be a table"))
    else:
        where_forge = lambda p, msg: problem_at(("forge", *p), msg, "[forge]", key_text(p) or None)
        unusable = value_problems(forge_raw, [], where_forge)
        try:
            settings = ForgeSettings.model_validate(forge_raw)
            problems += unusable
        except ValidationError as e:
            problems += _merged(unusable, validation_problems(e, ForgeSettings, forge_raw, where_forge))

    found, defaults = _forge_defaults(settings, rules, name, locate)
    problems += found
    targets: dict[str, TargetPlan] = {}
    declared = set()  # every address written, valid or not: no false "no target" for an invalid one
    used_rules = {}
    validated = {}  # address -> (rule, params, where): for checks across targets
    record_problem = lambda path, msg, target, key: problems.append(problem_at(path, msg, target, key))
    searches = trials.searches(data, os.path.dirname(path), record_problem) if "search" in rules else []
    cells, groups = matrix.expand({k: v for k, v in data.items() if k in rules}, record_problem, searches)
    for search in searches:  # the search rule reads its trials as a param: the record, as planning read it
        if search["name"] in cells.get("search", {}):
            cells["search"][search["name"]].body["trials"] = [
                {k: t.get(k) for k in ("params", "by", "rationale", "target", "objective", "pruned")} for t in search["trials"]]
    declared.update(groups)
    by_table: dict[tuple, list] = {}  # (kind, declared name) -> its cells: one pass, not one per table
    for kind, found in cells.items():
        for cell in found.values():
            by_table.setdefault((kind, cell.declared), []).append(cell)
    for kind, table in data.items():
        if kind == "forge":
            continue
        if kind not in rules:
            hint = did_you_mean(kind, [*rules, "forge"])
            known = ", ".join(sorted(rules))
            problems.append(problem_at((kind,), f"unknown target kind '{kind}'{hint}; known kinds: {known}"))
            continue
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            problems.append(problem_at((kind,), f"'{kind}' must hold tables: write [{kind}.NAME]"))
            continue
        rule = rules[kind]
        used_rules[kind] = rule
        for target_name, body in table.items():
            address = f"{kind}:{target_name}"
            declared.add(address)
            if not NAME.match(target_name):
                problems.append(problem_at((kind, target_name), f"bad target name '{target_name}': use letters, digits, '_', '-', '.'", address))
                continue
            mine = by_table.get((kind, target_name), [])
            declared.update(f"{kind}:{c.name}" for c in mine)
            found_in_cells = []
            for cell in mine:
                target, found, checked = _validate_target(rule, kind, cell, groups, problem_at, locate,
                                                          defaults.get(kind, {}))
                found_in_cells.append(found)
                if target is not None:
                    targets[target.address] = target
                    validated[target.address] = checked
            problems += _said_once(found_in_cells, address if len(mine) > 1 else None)

    _add_upstream_inputs(targets, validated)
    problems += _reference_problems(targets, declared, settings, rules, name, locate)
    problems += _dependency_problems(targets, validated)
    # Cycles and missing files are looked for among the valid targets even when others
    # have problems: every error is reported in one pass.
    from forgebuild.planning import graph

    linked = {a: t for a, t in targets.items() if all(d in targets for d in t.deps)}
    cycles = graph.cycles(linked)
    for cycle in cycles:
        first = targets[cycle[0]]
        spec = next(i for i in first.inputs if i.kind == "target" and i.spec == cycle[1])
        loop = " -> ".join([*cycle, cycle[0]])
        problems.append(Problem(name, spec.line, f"dependency cycle: {loop}", first.address, spec.key))
    order = graph.topological_order(targets) if not problems else []
    read_from = {**_rule_files(used_rules), **_record_files(os.path.dirname(path), searches)}
    result = Plan(path, settings.model_dump(mode="json"), targets, order, read_from, groups)
    problems += _source_problems(result)
    if problems:
        raise ForgefileError(problems)
    return result


INT64 = (-(2**63), 2**63 - 1)  # TOML's integers are 64-bit; tomllib reads bigger ones anyway


def value_problems(value, path: list, where) -> list[Problem]:
    """Values no rule can use, whatever its schema: inf and nan, integers beyond TOML's 64 bits,
    strings holding NUL (no path, argument or environment variable can). Checked in every table
    (plugin rules' too) before pydantic, so a stage never meets them at build time."""
    if isinstance(value, dict):
        named = [where(path, "a key cannot hold a NUL character (\\u0000)") for k in value if "\0" in k]
        return named + [p for k, v in value.items() for p in value_problems(v, [*path, k], where)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in value_problems(v, [*path, i], where)]
    if isinstance(value, float) and not math.isfinite(value):
        return [where(path, f"expected a finite number, got float {value}")]
    if isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
        return [where(path, "integer out of range: TOML integers are 64-bit (-2^63 to 2^63-1)")]
    if isinstance(value, str) and "\0" in value:
        return [where(path, "a string cannot hold a NUL character (\\u0000)")]
    return []


def _said_once(per_cell: list[list[Problem]], group: str | None) -> list[Problem]:
    """The problems of a table's cells, one that every cell of a grid has said once, of the grid."""
    if group is None:
        return per_cell[0] if per_cell else []
    said, found = set(), []
    for problems in per_cell:
        for p in problems:
            everywhere = all(any((q.line, q.message, q.key) == (p.line, p.message, p.key) for q in other)
                             for other in per_cell)
            if everywhere:
                p = Problem(p.file, p.line, p.message, group, p.key)
            if (p.line, p.message, p.key, p.target) not in said:
                said.add((p.line, p.message, p.key, p.target))
                found.append(p)
    return found


def _validate_target(rule, kind, cell, groups, problem_at, locate, defaults: dict):
    from forgebuild.rules import hooks, params_class, plain_params, rule_version

    address, declared = f"{kind}:{cell.name}", cell.declared
    swept = sorted(cell.values, key=len, reverse=True)

    def toml_path(path) -> tuple:
        """Where a key is written: a swept value on its line of the `matrix` table."""
        text = key_text(path)
        mine = next((p for p in swept if text == p or text.startswith(p + ".")), None)
        return (kind, declared, matrix.MATRIX, mine) if mine else (kind, declared, *path)

    def where(path, message):
        return problem_at(toml_path(path), message, address, key_text(path) or None)

    problems: list[Problem] = []
    body = matrix.substitute(cell.body, groups, cell.paired, [], lambda path, msg: problems.append(where(path, msg)))
    if problems:
        return None, problems, None
    unusable = value_problems(body, [], where)
    resources = body.get("resources")
    body = {k: v for k, v in body.items() if k != "resources"}  # every kind takes it: not a rule's param
    try:
        resources = Resources.model_validate(resources).model_dump(exclude_none=True) if resources is not None else {}
    except ValidationError as e:
        found = validation_problems(e, Resources, resources, lambda p, m: where(("resources", *p), m))
        return None, _merged(unusable, found), None
    model = params_class(rule, body)
    # [forge] defaults, already validated, for the params this table has (an imported model has no
    # launch); a target's own value wins
    body = {**{k: v for k, v in defaults.items() if k in model.model_fields}, **body}
    try:
        params = model.model_validate(body)
    except ValidationError as e:
        return None, _merged(unusable, validation_problems(e, model, body, where)), None
    if unusable:  # `lr = inf` passes a float field: still no stage may see it
        return None, unusable, None
    problems = _checked(hooks(rule).check(params), where)
    inputs = []
    for key, specs in rule.inputs(params).items():
        for spec in [specs] if isinstance(specs, str) else specs:
            line = locate.line(toml_path(key.split(".")))
            input_kind = planlib.classify(spec)
            if not spec.strip():  # "" joined to the project folder named all of it, silently
                if not any(p.key == key for p in problems):  # unless the rule's own check said so
                    problems.append(where(key.split("."), "an empty path: name a file, folder, glob or KIND:NAME"))
                continue
            if input_kind != "target" and planlib.outside_root(spec):
                problems.append(where(key.split("."), f"path '{spec}' is outside the project folder"))
            inputs.append(InputSpec(key, spec, input_kind, line))
    for key, spec in hooks(rule).external_inputs(params).items():
        if not spec.strip():
            problems.append(where(key.split("."), "an empty path: name a file or folder"))
            continue
        inputs.append(InputSpec(key, spec, "external", locate.line(toml_path(key.split(".")))))
    values, runtime_keys = plain_params(params)
    line = locate.line((kind, declared))
    environment = hooks(rule).environment(params)
    target = TargetPlan(address, kind, rule_version(rule, params), line, values, runtime_keys, inputs,
                        hooks(rule).isolate, sorted(environment.get("vars", [])),
                        _versions(environment.get("libraries", [])), resources, cell.group, cell.values)
    return target, problems, (rule, params, where)


def _merged(unusable: list[Problem], found: list[Problem]) -> list[Problem]:
    """Both lists, each key said once: `batch_size = 2**64` is out of 64 bits, not also above a bound."""
    said = {p.key for p in unusable}
    return unusable + [p for p in found if p.key not in said]


def _checked(found, where) -> list[Problem]:
    problems = []
    for key, message in found:
        # a key path is a tuple, or a dotted string when no part holds a dot
        path = list(key) if isinstance(key, tuple) else [int(p) if p.isdigit() else p for p in key.split(".")]
        problems.append(where(path, message))
    return problems


def _dependency_problems(targets, validated) -> list[Problem]:
    """A rule's own checks against what it reads (an sft model given a preference dataset)."""
    # each dependency also carries its own ("deps"), so a check can follow a chain: an eval's
    # perplexity corpus that is a mix of corpora without holdouts
    info = {a: {"kind": targets[a].kind, "params": validated[a][1]} for a in validated}
    for address, found in info.items():
        found["deps"] = {d: info[d] for d in targets[address].deps if d in info}
    from forgebuild.rules import hooks

    problems = []
    for address, (rule, params, where) in validated.items():
        problems += _checked(hooks(rule).check_deps(params, info[address]["deps"]), where)
    return problems


def _add_upstream_inputs(targets: dict[str, TargetPlan], validated: dict) -> None:
    """A rule's `upstream_inputs`: each target of the kinds asked for that the named targets are built
    from, directly or not, made an input of the asking target under the key (an eval's contamination
    check reads the corpora and datasets of each model it judges). Found among the valid targets
    before any is added, so each walk sees the graph as written; a found target is upstream of one
    the asker already reads, so adding it makes no cycle."""
    from forgebuild.rules import hooks

    added: dict[str, list[InputSpec]] = {}
    for address, (rule, params, _) in validated.items():
        for key, (starts, kinds) in hooks(rule).upstream_inputs(params).items():
            own = {i.spec: i.line for i in targets[address].inputs if i.kind == "target"}
            for start in starts:
                for found in _upstream(targets, start, kinds):
                    added.setdefault(address, []).append(InputSpec(key, found, "target", own.get(start)))
    for address, specs in added.items():
        target = targets[address]
        target.inputs.extend(specs)
        target.__dict__.pop("deps", None)  # a cached_property, if anything read it before


def _upstream(targets: dict[str, TargetPlan], start: str, kinds) -> list[str]:
    """Every valid target of `kinds` that `start` depends on, directly or not, sorted."""
    seen, stack = set(), [start]
    while stack:
        address = stack.pop()
        target = targets.get(address)
        if target is None:
            continue
        for dep in target.deps:
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return sorted(a for a in seen if a in targets and targets[a].kind in kinds)


def _versions(names) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in sorted(names):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def _forge_defaults(settings, rules, name, locate) -> tuple[list[Problem], dict[str, dict]]:
    """[forge] keys a rule takes as the default of a param (the model rule: `launch`), each validated
    by the rule's model: (problems, {kind: {key: value}}). A target of that kind that sets none gets
    the value before it is validated itself, so planning never writes into a validated target."""
    from forgebuild.rules import hooks

    problems, defaults = [], {}
    raw = settings.model_dump()
    for kind, rule in rules.items():
        for key, model in hooks(rule).forge_defaults().items():
            if not raw.get(key):
                continue
            try:
                defaults.setdefault(kind, {})[key] = model.model_validate(raw[key]).model_dump(mode="json")
            except ValidationError as e:
                where = lambda p, msg, key=key: Problem(name, locate.line(("forge", key, *p)), msg, "[forge]",
                                                        key_text((key, *p)))
                # two rules may default a param from one key ([forge] track: model and eval): said once
                problems += [p for p in validation_problems(e, model, raw[key], where) if p not in problems]
    return problems, defaults


def _reference_problems(targets, declared, settings, rules, name, locate) -> list[Problem]:
    problems = []

    def missing(address: str) -> str:
        hint = suggest_address(address, declared)
        kind = address.split(":", 1)[0]
        if not hint and kind not in rules:
            hint = did_you_mean(kind, rules)
            return f"unknown target kind '{kind}' in '{address}'{hint}"
        return f"no target '{address}'{hint}"

    for target in targets.values():
        for spec in target.inputs:
            if spec.kind == "target" and spec.spec not in declared:
                problems.append(Problem(name, spec.line, missing(spec.spec), target.address, spec.key))
            elif spec.kind == "target" and spec.spec == target.address:
                problems.append(Problem(name, spec.line, "a target cannot depend on itself", target.address, spec.key))
    for address in settings.default:
        if address not in declared:
            problems.append(Problem(name, locate.line(("forge", "default")), missing(address), "[forge]", "default"))
    return problems


def _source_problems(plan: Plan) -> list[Problem]:
    problems = []
    for target in plan.targets.values():
        for spec in target.inputs:
            if spec.kind == "external" or (spec.kind != "target" and not planlib.outside_root(spec.spec)):
                try:
                    planlib.resolve_sources(plan, target, spec)
                except ForgefileError as e:
                    problems += e.problems
    return problems


def _rule_files(rules: dict) -> dict[str, list]:
    files = {}
    for module in rules.values():
        module_file = getattr(module, "__file__", None)
        if module_file:
            st = os.stat(module_file)
            files[module_file] = [st.st_size, st.st_mtime_ns]
    return files


def _record_files(root: str, searches: list[dict]) -> dict[str, list]:
    """Each search record's [size, mtime_ns] ([-1, -1]: none yet): a new proposal re-reads the plan."""
    files = {}
    for search in searches:
        if search.get("record"):
            full = os.path.join(root, search["record"])
            try:
                st = os.stat(full)
                files[full] = [st.st_size, st.st_mtime_ns]
            except OSError:
                files[full] = [-1, -1]
    return files
