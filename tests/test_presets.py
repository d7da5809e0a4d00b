"""`forgebuild init`: the presets it writes (needing no Forgefile, never overwriting a file, writing
nothing outside the folder), and the `continued` and `infill` presets built end to end from what
`init` wrote, each asserting the result its Forgefile header states."""
from __future__ import annotations

import json
import os
import re

from conftest import Project

PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "forgebuild", "presets")


def preset_files(name: str) -> dict[str, bytes]:
    """The preset's files as they lie in the package folder (read here without forgebuild's help)."""
    found = {}
    folder = os.path.join(PRESETS, name)
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for file in files:
            path = os.path.join(parent, file)
            found[os.path.relpath(path, folder).replace(os.sep, "/")] = open(path, "rb").read()
    return found


def written(root: str) -> dict[str, bytes]:
    found = {}
    for parent, _, files in os.walk(root):
        for file in files:
            path = os.path.join(parent, file)
            found[os.path.relpath(path, root).replace(os.sep, "/")] = open(path, "rb").read()
    return found


# ------------------------------------------------------------------ the verb

def test_init_list_names_every_preset_with_its_first_header_line(project):
    names = sorted(n for n in os.listdir(PRESETS) if os.path.isfile(os.path.join(PRESETS, n, "Forgefile.toml")))
    assert {"continued", "infill"} <= set(names)
    lines = project.run("init", "--list").stdout.splitlines()
    firsts = [open(os.path.join(PRESETS, n, "Forgefile.toml"), encoding="utf-8").readline()[1:].strip() for n in names]
    assert [line.split(None, 1) for line in lines] == [[n, first] for n, first in zip(names, firsts)]
    events = project.events("init", "--list")
    assert [e["name"] for e in events[:-1]] == names and events[-1] == {"event": "summary", "ok": True}
    assert os.listdir(project.root) == []  # listing writes nothing, and no Forgefile was needed


def test_init_writes_the_preset_byte_for_byte_and_says_how_to_build_it(project):
    proc = project.run("init", "continued", "new/project")
    expected = preset_files("continued")
    assert written(os.path.join(project.root, "new", "project")) == expected
    assert proc.stdout.splitlines() == [f"wrote {os.path.join('new/project', rel)}" for rel in sorted(expected)] + [
        "next: cd new/project && (cd stand-in && forgebuild) && forgebuild    (the header of Forgefile.toml says "
        "what it builds and what to expect)"]
    summary = project.events("init", "continued", "other")[-1]
    assert summary == {"event": "summary", "ok": True, "preset": "continued",
                       "dir": os.path.join(project.root, "other"),
                       "files": [os.path.join("other", rel) for rel in sorted(expected)]}


def test_init_never_overwrites_a_file_and_then_writes_nothing(project):
    project.run("init", "continued")
    project.write("Forgefile.toml", "# mine\n")
    os.unlink(os.path.join(project.root, "scripts", "make_private.py"))
    before = written(project.root)
    proc = project.run("init", "continued", expect=2)
    assert proc.stderr == "forgebuild: Forgefile.toml exists; init never overwrites a file: nothing written\n"
    assert written(project.root) == before  # make_private.py, missing, was not written either


def test_init_refuses_an_unknown_preset_a_file_as_folder_and_a_link_leading_outside(project, tmp_path):
    proc = project.run("init", "contnued", expect=2)
    assert proc.stderr.startswith("forgebuild: no preset 'contnued' (did you mean 'continued'?); the presets: ")
    project.write("taken", "a file\n")
    assert project.run("init", "continued", "taken", expect=2).stderr == (
        "forgebuild: taken is a file, not a folder: nothing written\n")
    project.write("deep/stand-in", "a file\n")
    assert project.run("init", "continued", "deep", expect=2).stderr == (
        "forgebuild: deep/stand-in is a file where init writes a folder: nothing written\n")
    assert os.listdir(os.path.join(project.root, "deep")) == ["stand-in"]
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    os.makedirs(os.path.join(project.root, "linked"))
    os.symlink(outside, os.path.join(project.root, "linked", "scripts"))
    assert project.run("init", "continued", "linked", expect=2).stderr == (
        "forgebuild: linked/scripts leads outside linked (a link): nothing written\n")
    assert os.listdir(outside) == [] and os.listdir(os.path.join(project.root, "linked")) == ["scripts"]


def test_every_preset_names_the_test_that_holds_its_stated_result_and_marks_its_gpu_settings():
    """A header's figures are claims a test asserts: it names that test, which exists; the GPU-scale
    settings say that no GPU run has recorded figures for them yet."""
    tests = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(PRESETS)):
        path = os.path.join(PRESETS, name, "Forgefile.toml")
        if not os.path.isfile(path):
            continue
        text = open(path, encoding="utf-8").read()
        cited = re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text)
        assert cited, f"{name}: its header names no test (tests/FILE.py::TEST) asserting its result"
        for file, test in cited:
            assert f"def {test}(" in open(os.path.join(tests, file), encoding="utf-8").read(), (name, file, test)
        assert "unvalidated: no GPU run has recorded figures for these settings yet" in text, name


# ------------------------------------------------------------------ the presets, built as a user would

def results(lab: Project, target: str) -> dict:
    return json.loads(lab.read(f".forge/out/eval/{target}/report.json"))["results"]


def test_continued(tmp_path):
    """The header's claim: continued pretraining on the private corpus takes the held-out perplexity
    far below the imported model's, the two 95% intervals apart; the gate passes."""
    lab = Project(str(tmp_path))
    lab.run("init", "continued")
    stand_in = Project(os.path.join(lab.root, "stand-in"))
    stand_in.run(timeout=600)  # the open-model stand-in, released to stand-in/model
    lab.run(timeout=600)
    found = results(lab, "private")
    imported, continued = found["model:imported"]["private.perplexity"], found["model:continued"]["private.perplexity"]
    assert continued["high"] < imported["low"]
    assert imported["value"] > 100 and continued["value"] < 3
    assert continued["n"] == imported["n"] >= 50
    gate, = json.loads(lab.read(".forge/out/eval/private/report.json"))["gates"]
    assert gate["passed"] and gate["against"] == "model:imported" and gate["bound"] <= -100
    for folder in (stand_in, lab):
        assert folder.run("verify").returncode == 0


def test_infill_benchmark_is_what_its_script_writes(tmp_path):
    """bench/*.jsonl are data the preset's header says how to remake: remade, they are the same bytes."""
    import subprocess
    import sys

    lab = Project(str(tmp_path))
    lab.run("init", "infill")
    subprocess.run([sys.executable, "scripts/make_tablets.py", "--seed", "2026", "--count", "200", "--bench", "again"],
                   cwd=lab.root, check=True)
    for name in ("damaged.jsonl", "blind.jsonl"):
        assert lab.read(f"again/{name}") == lab.read(f"bench/{name}")
    assert "--seed 2026 --count 200 --bench bench" in lab.read("Forgefile.toml")


def test_infill(tmp_path):
    """The header's claim: pretrained with fill-in-the-middle, the model restores the damaged names of
    tablets it never saw from the rest of the tablet (exact match >= 0.8, the gate), far above what
    the text before the gap alone gives (the blind control), the two 95% intervals apart."""
    lab = Project(str(tmp_path))
    lab.run("init", "infill")
    lab.run(timeout=600)
    found = results(lab, "infill")["model:scribe"]
    damaged, blind = found["damaged.exact_match"], found["blind.exact_match"]
    assert damaged["n"] == blind["n"] == 200
    assert damaged["value"] >= 0.8 and blind["high"] < damaged["low"]
    gate, = json.loads(lab.read(".forge/out/eval/infill/report.json"))["gates"]
    assert gate["passed"] and gate["metric"] == "damaged.exact_match"
    assert lab.run("verify").returncode == 0
