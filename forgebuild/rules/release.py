"""release: a model copied, with a generated model card, to where production reads it, only
when every gate passed.

    [release.prod]
    model = "model:rl-v3"
    gates = ["eval:release"]       # eval targets whose gates must all pass (and that evaluate this model)
    to = "dist/rl-v3"              # a folder (relative to the Forgefile) or an fsspec URL (s3://bucket/rl-v3)

A failed gate fails its eval target, so the release is skipped and nothing is copied.
The artifact is what was copied: the model's files, README.md (the model card:
lineage, data digests, recipe, metrics) and release.json (every file's digest).
The copy lands whole or not at all: into a temporary name beside `to`, renamed at the
end (a URL: release.json is written last, the sign that the copy is complete).

A folder `to` stays inside the project unless it is absolute (`../x` is a Forgefile
error), and it replaces only an earlier release of the same target: each release
holds MARKER naming its target, and a folder without it is the user's, never deleted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid

from pydantic import BaseModel, ConfigDict, Field

from forgebuild.planning.plan import ADDRESS
from forgebuild.rules.eval.contamination import is_metric
from forgebuild.rules.eval.gate import stated

version = "1"

URL = re.compile(r"^[a-z][a-z0-9+.-]*://")
MARKER = ".forge-release"  # in each folder release: {"target": ADDRESS}; not part of the artifact


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="the model target to release")
    gates: list[str] = Field(default_factory=list, description="eval targets whose gates must pass")
    to: str = Field(description="destination: a folder (relative to the Forgefile) or an fsspec URL")
    name: str | None = Field(None, description="the model's name in its card (default: the release's name)")


def inputs(params: Params) -> dict:
    return {"model": params.model, **{f"gates.{i}": g for i, g in enumerate(params.gates)}}


def check(params: Params) -> list[tuple[str, str]]:
    problems = []
    for key, value in [("model", params.model), *((f"gates.{i}", g) for i, g in enumerate(params.gates))]:
        if not ADDRESS.match(value):
            problems.append((key, f"'{value}' is not a target reference: write KIND:NAME"))
    if not URL.match(params.to) and leaves_project(params.to):
        problems.append(("to", f"'{params.to}' leaves the project folder: a release goes inside the project "
                               "unless `to` is an absolute path"))
    return problems


def leaves_project(to: str) -> bool:
    """A relative destination that climbs out of the project (`../victim`): only an absolute path may leave it."""
    norm = os.path.normpath(to)
    return not os.path.isabs(to) and (norm == os.pardir or norm.startswith(os.pardir + os.sep))


def check_deps(params: Params, deps: dict) -> list[tuple[str, str]]:
    problems = []
    if params.model in deps and deps[params.model]["kind"] != "model":
        problems.append(("model", f"{params.model} is a {deps[params.model]['kind']} target, not a model"))
    for i, gate in enumerate(params.gates):
        dep = deps.get(gate)
        if dep is None:
            continue
        if dep["kind"] != "eval":
            problems.append((f"gates.{i}", f"{gate} is a {dep['kind']} target; gates are eval targets"))
        elif params.model not in dep["params"].models:
            problems.append((f"gates.{i}", f"{gate} does not evaluate {params.model} (it evaluates "
                                           f"{', '.join(dep['params'].models)})"))
        elif not dep["params"].gate:
            problems.append((f"gates.{i}", f"{gate} has no gate: add gate = {{ \"METRIC\" = \">= VALUE\" }} there"))
    return problems


def build(ctx) -> None:
    p = ctx.params
    reports = [read_json(os.path.join(ctx.inputs[f"gates.{i}"], "report.json")) for i in range(len(p.gates))]
    for gate, report in zip(p.gates, reports):
        if not report.get("passed"):  # the eval target fails first; this guards a hand-edited store
            raise ctx.failure(f"{gate} did not pass its gates: nothing released")
    model = ctx.inputs["model"]
    for parent, _, files in os.walk(model):
        for name in files:
            src = os.path.join(parent, name)
            ctx.place(src, os.path.relpath(src, model))
    card = model_card(ctx, p, reports)
    with open(os.path.join(ctx.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    manifest = {"model": p.model, "digest": ctx.dep_digests[p.model], "gates": {g: ctx.dep_digests[g] for g in p.gates},
                "files": file_digests(ctx.out)}
    with open(os.path.join(ctx.out, "release.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    publish(ctx, ctx.out, p.to)
    ctx.log(f"released {p.model} ({ctx.dep_digests[p.model]}) to {p.to}")


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def file_digests(folder: str) -> dict:
    from forgebuild.hashing import file_digest, walk_files

    return {rel: file_digest(path) for rel, path, _ in walk_files(folder)}


# ------------------------------------------------------------------ the model card

def model_card(ctx, p: Params, reports: list[dict]) -> str:
    config_path = os.path.join(ctx.inputs["model"], "training_config.json")
    config = read_json(config_path) if os.path.exists(config_path) else {}
    name = p.name or ctx.target.split(":", 1)[1]
    lines = [f"# {name}", "", f"Released by forgebuild from `{p.model}` (artifact `{ctx.dep_digests[p.model]}`).", ""]
    if config:
        lines += ["## Training", "", f"- recipe: `{config.get('recipe')}`", f"- seed: `{config.get('seed')}`",
                  f"- libraries: {', '.join(f'{k} {v}' for k, v in sorted(config.get('versions', {}).items()))}", ""]
        lines += ["```json", json.dumps(config.get("params", {}), indent=2, sort_keys=True), "```", ""]
    lines += ["## Lineage", "", "Every target this model was made from, with the digest of what it produced:", ""]
    lines += [f"{'  ' * depth}- `{address}` `{digest}`{f' ({recipe})' if recipe else ''}"
              for depth, address, digest, recipe in lineage(ctx, p.model, ctx.dep_digests[p.model])]
    lines += ["", "## Evaluation", ""]
    for gate, report in zip(p.gates, reports):
        lines += [f"From `{gate}` (every gate passed):", "", "| metric | value | 95% interval |", "|---|---|---|"]
        for metric, stat in sorted(report["results"].get(p.model, {}).items()):
            if is_metric(metric):  # a count with no interval: its own table below
                continue
            lines.append(f"| {metric} | {fmt(stat.get('value'))} | [{fmt(stat.get('low'))}, {fmt(stat.get('high'))}] |")
        lines += ["", "| gate | condition | measured |", "|---|---|---|"]
        for g in report["gates"]:
            if g["model"] == p.model:
                lines.append(f"| {g['metric']} | {gate_condition(g)} | {gate_measured(g)} |")
        lines += ["", *contamination_lines(report, p.model)]
    return "\n".join(lines)


def contamination_lines(report: dict, model: str) -> list[str]:
    """The eval's contamination check of the released model: the data targets it read, a rate per benchmark."""
    section = report.get("contamination") or {}
    found = section.get("models", {}).get(model)
    if found is None:
        return []
    data = ", ".join(f"`{a}`" for a in found["data"]) or "none (no corpus, dataset or curate target in its graph)"
    lines = [f"Contamination ({section['ngram']}-word runs shared with a benchmark prompt, or a shorter prompt "
             f"equal to a text), data checked: {data}", "", "| benchmark | examples | contaminated | rate |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {b['examples']} | {b['contaminated']} | {100 * b['rate']:.2f}% |" if found["data"]
              else f"| {name} | {b['examples']} | — | not measured |" for name, b in found["benchmarks"].items()]
    return [*lines, ""]


def gate_condition(g: dict) -> str:
    """As the Forgefile wrote it (a relative gate's threshold alone, ">= 0.68", would hide what it compared);
    a report from before conditions were kept: its operator and threshold."""
    return stated(g) if g.get("condition") else f"{g['op']} {g['threshold']:g}"


def gate_measured(g: dict) -> str:
    if g.get("against") is None or g.get("diff") is None:
        return fmt(g["value"])
    return f"{fmt(g['value'])} ({g['diff']:+.4g} vs {g['against']}, bound {g['bound']:+.4g})"


def fmt(value) -> str:
    return "—" if value is None else f"{value:.4g}"


def lineage(ctx, address: str, digest: str, depth: int = 0, seen=None) -> list[tuple]:
    """(depth, address, digest, recipe) down the training configs' recorded inputs."""
    seen = set() if seen is None else seen
    folder = os.path.join(ctx.workspace_dir, "artifacts", digest)
    config_path = os.path.join(folder, "training_config.json")
    config = read_json(config_path) if os.path.exists(config_path) else {}
    rows = [(depth, address, digest, config.get("recipe"))]
    if digest in seen:
        return rows
    seen.add(digest)
    for dep, dep_digest in sorted(config.get("inputs", {}).items()):
        rows += lineage(ctx, dep, dep_digest, depth + 1, seen)
    return rows


# ------------------------------------------------------------------ the copy

def publish(ctx, folder: str, to: str) -> None:
    if URL.match(to):
        import fsspec

        fs, path = fsspec.core.url_to_fs(to)
        files = sorted(file_digests(folder))
        files.remove("release.json")
        for rel in [*files, "release.json"]:  # release.json last: a reader sees a complete release or none
            fs.makedirs(os.path.dirname(f"{path}/{rel}"), exist_ok=True)
            fs.put_file(os.path.join(folder, rel), f"{path}/{rel}")
        return
    dest = os.path.join(ctx.project_dir, to)
    check_destination(ctx, to, dest)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    staging = f"{dest}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(folder, staging)  # copies, not links: the store's files stay the store's
    for parent, dirs, files in os.walk(staging):  # the store's files are read-only; a release is the user's
        for name in dirs + files:
            os.chmod(os.path.join(parent, name), 0o755 if name in dirs else 0o644)
    with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as f:
        json.dump({"target": ctx.target}, f)
    if os.path.lexists(dest):
        old = f"{dest}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old)
    else:
        os.replace(staging, dest)


def check_destination(ctx, to: str, dest: str) -> None:
    """Refuse (exit 2) a folder that is not an earlier release of this target, and a relative `to` that
    reaches outside the project through a link (`../x` itself is refused at planning)."""
    project = os.path.realpath(ctx.project_dir)
    real = os.path.realpath(dest)
    if not os.path.isabs(to) and os.path.commonpath([project, real]) != project:
        raise ctx.bad_input(f"{to} leads outside the project folder (to {real}): a release goes inside the "
                            "project unless `to` is an absolute path")
    if not os.path.lexists(dest):
        return
    try:
        with open(os.path.join(dest, MARKER), encoding="utf-8") as f:
            ours = json.load(f).get("target") == ctx.target
    except (OSError, ValueError, AttributeError):
        ours = earlier_format_release(dest)
    if not ours or os.path.islink(dest):
        raise ctx.bad_input(f"{to} exists and is not an earlier release of {ctx.target} (it has no {MARKER} "
                            "naming it): nothing was replaced; move it away or release elsewhere")


def earlier_format_release(dest: str) -> bool:
    """A release written before releases carried MARKER (forgebuild before BLAKE3 digests): a folder
    holding exactly its release.json and the files that lists. Its digests are of the older format,
    so the names are compared, not the digests."""
    try:
        manifest = read_json(os.path.join(dest, "release.json"))
        listed = set(manifest["files"]) | {"release.json"}
        from forgebuild.hashing import walk_files

        return {"model", "digest", "gates", "files"} <= manifest.keys() and listed == {r for r, _, _ in walk_files(dest)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
