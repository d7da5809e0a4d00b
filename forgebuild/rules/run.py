"""The generic `run` rule: a command with declared inputs, params and an output folder.

    [run.prepare]
    cmd = "python3 scripts/prepare.py --raw {in.raw} --out {out}/corpus.txt --seed {params.seed}"
    inputs = { raw = "data/raw.bin", script = "scripts/prepare.py" }
    params = { seed = 1 }

Placeholders: {out} (empty scratch output folder), {in.NAME} (an input's path;
for a target, its artifact folder; for a glob, every match), {params.KEY},
{work} (a folder kept across failed runs of the same key, for checkpoints) and
{seed}. The same values are exported as FORGE_OUT, FORGE_IN_<NAME>,
FORGE_PARAM_<KEY>, FORGE_WORK and FORGE_SEED. The command runs in the
Forgefile's folder; a non-zero exit fails the stage.
"""
from __future__ import annotations

import os
import re
import shlex
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from forgebuild.errors import closest, did_you_mean
from forgebuild.rules import runtime

version = "1"
# build() only launches the user's command, which is already its own process.
isolate = False

Scalar = str | int | float | bool
PLACEHOLDER = re.compile(r"\{(out|work|seed|in\.[A-Za-z0-9_-]+|params\.[A-Za-z0-9_-]+)\}")
# `{word}` or `{word.word}` not preceded by `$` (shell's ${HOME} is not ours); awk's `{print}`
# is left alone unless it looks like a misspelt placeholder.
LOOKALIKE = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)?)\}")
MISSPELT = {"input", "inputs", "param", "outs", "output", "outputs", "wrk", "workdir"}
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


# An empty command, argument list or input list is a mistake, not a stage: `cmd = ""` used
# to build an empty artifact, `cmd = []` and `inputs = { x = [] }` to fail inside build().
Text = Annotated[str, Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1)]
# POSIX: a variable's name holds neither '=' nor NUL (os.environ refuses both at build time)
ENV_NAME = re.compile(r"^[^=\x00]+$")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: Text | Texts = Field(description="shell command (string) or argv list; placeholders are filled in")
    inputs: dict[str, Text | Texts] = Field(
        default_factory=dict, description="name -> path, folder, glob, KIND:NAME, or a list of those")
    params: dict[str, Scalar] = Field(default_factory=dict, description="values for {params.KEY}; part of the key")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables; part of the key")
    pass_env: list[str] = Field(
        default_factory=list, description="variables of the caller's environment whose values are part of the key")
    outputs: list[Text] = Field(
        default_factory=list, description="paths inside {out} the command must create; the stage fails otherwise")
    description: str = runtime("", description="a note for people, kept in the build record; not part of the key")
    timeout: float | None = runtime(None, gt=0, description="seconds before the command is killed; not part of the key")


def inputs(params: Params) -> dict[str, str | list[str]]:
    return {f"inputs.{name}": spec for name, spec in params.inputs.items()}


def environment(params: Params) -> dict:
    return {"vars": params.pass_env}


def check(params: Params) -> list[tuple[str, str]]:
    problems = []
    for section in ("inputs", "params"):
        for name in getattr(params, section):
            if not IDENT.match(name):
                problems.append((f"{section}.{name}", "names must start with a letter or '_' and hold letters, digits, '_' or '-'"))
    commands = [params.cmd] if isinstance(params.cmd, str) else params.cmd
    if not commands[0].strip():
        problems.append(("cmd" if isinstance(params.cmd, str) else "cmd.0", "expected a command, got a blank string"))
    for key, name in [(("env", n), n) for n in params.env] + [(("pass_env", i), n) for i, n in enumerate(params.pass_env)]:
        if not ENV_NAME.match(name):
            problems.append((key, f"'{name}' is not an environment variable name (empty, or holds '=')"))
    valid = ["out", "work", "seed", *(f"in.{n}" for n in params.inputs), *(f"params.{n}" for n in params.params)]
    for text in commands:
        for m in LOOKALIKE.finditer(text):
            word = m.group(1)
            found = closest(word, valid)
            if not PLACEHOLDER.fullmatch(m.group(0)) and (found or word.split(".")[0] in MISSPELT):
                hint = f" (did you mean '{{{found}}}'?)" if found else ""
                problems.append(("cmd", f"unknown placeholder {{{word}}}{hint}"))
        for m in PLACEHOLDER.finditer(text):
            section, _, name = m.group(1).partition(".")
            if section == "in" and name not in params.inputs:
                problems.append(("cmd", f"{{in.{name}}} names no input{_hint(name, params.inputs)}"))
            if section == "params" and name not in params.params:
                problems.append(("cmd", f"{{params.{name}}} names no param{_hint(name, params.params)}"))
    for i, path in enumerate(params.outputs):
        norm = os.path.normpath(path)
        if os.path.isabs(path) or norm == ".." or norm.startswith(".." + os.sep):
            problems.append((f"outputs.{i}", f"'{path}' must be a path inside {{out}}"))
    return problems


def _hint(name, choices) -> str:
    return did_you_mean(name, choices)


def env_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def values(ctx) -> dict[str, str]:
    """Placeholder -> text, with input paths shell-quoted when one input names several files."""
    p = ctx.params
    found = {"out": ctx.out, "work": ctx.work, "seed": str(ctx.seed)}
    for name in p.inputs:
        found[f"in.{name}"] = ctx.inputs[f"inputs.{name}"]
    for name, value in p.params.items():
        found[f"params.{name}"] = _text(value)
    return found


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build(ctx) -> None:
    p = ctx.params
    found = values(ctx)
    joined = {k: v if isinstance(v, str) else " ".join(v) for k, v in found.items()}
    if isinstance(p.cmd, str):
        # shlex.quote leaves ordinary paths as they are and protects spaces and quotes
        quoted = {k: shlex.quote(v) if isinstance(v, str) else " ".join(map(shlex.quote, v)) for k, v in found.items()}
        argv, shell = PLACEHOLDER.sub(lambda m: quoted[m.group(1)], p.cmd), True
    else:
        argv, shell = [], False
        for part in p.cmd:
            whole = PLACEHOLDER.fullmatch(part)
            if whole and not isinstance(found[whole.group(1)], str):
                argv.extend(found[whole.group(1)])  # "{in.shards}" alone: one argument per file
            else:
                argv.append(PLACEHOLDER.sub(lambda m: joined[m.group(1)], part))
    env = dict(os.environ)
    env.update({"FORGE_OUT": ctx.out, "FORGE_WORK": ctx.work, "FORGE_SEED": str(ctx.seed)})
    for name in p.inputs:
        env[f"FORGE_IN_{env_name(name)}"] = joined[f"in.{name}"]
    for name in p.params:
        env[f"FORGE_PARAM_{env_name(name)}"] = joined[f"params.{name}"]
    env.update(p.env)
    ctx.log(f"$ {argv if isinstance(argv, str) else shlex.join(argv)}")
    code = ctx.run_command(argv, shell=shell, env=env, timeout=p.timeout)
    if code != 0:
        raise ctx.failure(f"command exited with code {code}" if code > 0 else f"command killed by signal {-code}")
    missing = [path for path in p.outputs if not os.path.exists(os.path.join(ctx.out, path))]
    if missing:
        raise ctx.failure(f"command did not create declared output {', '.join(missing)}")

