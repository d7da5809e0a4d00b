"""Stored bytes never change: what a stage writes, what it is handed and what outlives it cannot alter
a blob unnoticed; a full disk leaves nothing behind; a release never replaces what is not its own;
a project's own modules never shadow the libraries inside build workers."""
from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from conftest import install_rule_plugin

from forgebuild.hashing import file_digest

IMPORTED = """
[model.m]
recipe = "import"
path = "weights"

[release.r]
model = "model:m"
to = "TO"
"""


def _weights(project) -> None:
    """A model folder whose own README.md the release's model card replaces (what the example's models have)."""
    project.write("weights/config.json", '{"model_type": "llama"}\n')
    project.write("weights/model.safetensors", "not really tensors\n" * 50)
    project.write("weights/README.md", "# the original card\n")


def _blobs(project) -> list[str]:
    return sorted(glob.glob(os.path.join(project.root, ".forge/cas/*/*")))


# ------------------------------------------------------------------ outputs never share an inode with the store

def test_a_release_writing_its_model_card_leaves_the_models_blobs_intact(project):
    """The issue's reproducer: `release` linked the model's README.md into its output and wrote its card
    through the link, so `verify` found model:m CORRUPT."""
    _weights(project)
    project.forgefile(IMPORTED.replace("TO", "dist/m"))
    project.run()
    assert project.read("weights/README.md") == "# the original card\n"
    assert project.read(".forge/out/model/m/README.md") == "# the original card\n"
    assert project.read("dist/m/README.md").startswith("# r\n")
    proc = project.run("verify")
    assert proc.stdout.splitlines()[-1].startswith("verified: 2 targets, 7 cached files match their digests")


def test_a_process_left_running_by_a_stage_cannot_write_into_the_stored_output(project):
    """A command that returns while its background child still writes {out}: the file became a blob when the
    command exited, so the late write changed the store. The stage's leftover processes are stopped first."""
    project.forgefile("""
        [run.late]
        cmd = "exec 3>{out}/f.txt; echo early >&3; (sleep 1; echo late >&3) & true"
    """)
    project.run()
    subprocess.run(["sleep", "1.5"])
    assert project.read(".forge/out/run/late/f.txt") == "early\n"
    assert project.run("verify").returncode == 0


# ------------------------------------------------------------------ inputs are checked after the stage

CHAIN = """
[run.a]
cmd = "echo data > {out}/data.txt"

[run.b]
cmd = "CMD"
inputs = { a = "run:a" }
"""


def test_a_command_appending_to_its_input_fails_and_the_damage_is_dropped(project):
    """The issue's reproducer: a command appending to a dependency's file wrote into the dependency's blob."""
    project.forgefile(CHAIN.replace("CMD", "echo more >> {in.a}/data.txt; cp {in.a}/data.txt {out}/"))
    events = project.events(expect=1)
    failed = [e for e in events if e["event"] == "failed"]
    assert [(e["target"], e["reason"]) for e in failed] == [(
        "run:b", "the stage changed its input run:a (data.txt): a stage must not write into its inputs; "
                 "run:a's damaged output was dropped from the cache and rebuilds on the next build")]
    assert project.run("verify", "run:a", expect=1).stdout.splitlines()[0].startswith("stale   run:a")
    # fixed, the next build rebuilds run:a from its command, and the cache is sound again
    project.forgefile(CHAIN.replace("CMD", "cat {in.a}/data.txt {in.a}/data.txt > {out}/twice.txt"))
    assert project.build() == {"run:a": "built", "run:b": "built"}
    assert project.read(".forge/out/run/b/twice.txt") == "data\ndata\n"
    project.run("verify")


def test_a_damaged_materialised_copy_is_made_again_and_the_blob_kept(project):
    """An executable is materialised as a copy of its blob (it needs its own mode): writing into it damages
    the copy only, which is removed and made again from the intact blob; the dependency is not rebuilt."""
    tool = CHAIN.replace("echo data > {out}/data.txt", "printf 'echo hi' > {out}/tool.sh; chmod +x {out}/tool.sh")
    project.forgefile(tool.replace("CMD", "echo more >> {in.a}/tool.sh; cp {in.a}/tool.sh {out}/"))
    failed = [e for e in project.events(expect=1) if e["event"] == "failed"]
    assert failed[0]["reason"] == ("the stage changed its input run:a (tool.sh): a stage must not write into its "
                                   "inputs; its materialised copy was removed and is made again from the cache")
    project.forgefile(tool.replace("CMD", "sh {in.a}/tool.sh > {out}/said.txt"))
    assert project.build() == {"run:a": "cached", "run:b": "built"}
    assert project.read(".forge/out/run/b/said.txt") == "hi\n"


def test_a_command_editing_a_source_file_fails_and_nothing_is_cached(project):
    project.write("data/raw.txt", "one\n")
    project.forgefile("""
        [run.edit]
        cmd = "echo two >> {in.raw}; cp {in.raw} {out}/"
        inputs = { raw = "data/raw.txt" }
    """)
    failed = [e for e in project.events(expect=1) if e["event"] == "failed"]
    assert failed[0]["reason"] == ("the stage changed its input data/raw.txt: a stage must not write into its "
                                   "inputs; nothing was cached")
    assert not glob.glob(os.path.join(project.root, ".forge/ac/*/*.json"))


def test_an_untouched_input_whose_inode_changed_state_is_not_a_change(project):
    """Another target materialising the same blob links it again (its ctime moves): the check re-hashes and
    finds the content unchanged, so parallel builds of readers of one file do not fail each other."""
    project.forgefile("""
        [run.a]
        cmd = "echo same > {out}/x.txt"

        [run.twin]
        cmd = "echo same > {out}/x.txt; echo twin > {out}/y.txt"

        [run.b]
        cmd = "sleep 0.3; cat {in.a}/x.txt > {out}/b.txt"
        inputs = { a = "run:a" }

        [run.c]
        cmd = "cat {in.twin}/x.txt > {out}/c.txt"
        inputs = { twin = "run:twin" }
    """)
    assert set(project.build("-j", "2").values()) == {"built"}
    project.run("verify")


SCRIBBLE = '''
"""A rule that writes into the result of its own cached step (a test plugin)."""
import os
from pydantic import BaseModel, ConfigDict

version = "1"

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scribble: bool = False

def inputs(params):
    return {}

def produce(folder):
    with open(os.path.join(folder, "step.txt"), "w") as f:
        f.write("made once\\n")

def build(ctx):
    folder = ctx.memo("step", {"n": 1}, produce)
    if ctx.params.scribble:
        with open(os.path.join(folder, "step.txt"), "a") as f:
            f.write("scribbled\\n")
    ctx.place(os.path.join(folder, "step.txt"), "step.txt")
'''


def test_a_rule_writing_into_a_cached_step_it_was_handed_fails_and_the_step_is_made_again(project, tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    install_rule_plugin(site, "scribble-rule", {"scribble": ("scribble_rule", SCRIBBLE)})
    env = {"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    project.forgefile("[scribble.s]\nscribble = true\n")
    failed = [e for e in project.events(expect=1, env=env) if e["event"] == "failed"]
    assert failed[0]["reason"] == ("the stage changed the result of its cached step step (step.txt): a stage must not "
                                   "write into its inputs; the damaged result was dropped from the cache and is made "
                                   "again on the next build")
    project.forgefile("[scribble.s]\nscribble = false\n")
    project.run(env=env)
    assert project.read(".forge/out/scribble/s/step.txt") == "made once\n"


# ------------------------------------------------------------------ --frozen and verify --rebuild notice a changed blob

def _damage_through_the_link(project, rel: str) -> str:
    """A user's edit of a materialised file (a hardlink of its blob): same size, other bytes, as root."""
    path = os.path.join(project.root, ".forge/out", rel)
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(bytes([data[0] ^ 1]) + data[1:])
    return file_digest(path)


@pytest.mark.corrupts_cache
def test_frozen_fails_on_a_blob_changed_since_it_was_stored(project):
    project.forgefile('[run.a]\ncmd = "echo data > {out}/data.txt"\n')
    project.run()
    project.run("lock")
    project.run("--frozen")
    digest = file_digest(os.path.join(project.run("path", "run:a").stdout.strip(), "data.txt"))
    found = _damage_through_the_link(project, "run/a/data.txt")
    proc = project.run("--frozen", expect=1)
    blob = f".forge/cas/{digest[:2]}/{digest}"
    assert proc.stderr.splitlines() == [
        f"forgebuild: run:a: data.txt: blob {digest} now hashes to {found}: {blob}",
        f"forgebuild: --frozen: the cached output of run:a is corrupt; nothing was built (repair: forgebuild clean "
        f"&& rm -f {blob} && forgebuild -B run:a)"]


@pytest.mark.corrupts_cache
def test_verify_rebuild_fails_on_a_blob_changed_since_it_was_stored(project):
    project.forgefile('[run.a]\ncmd = "echo data > {out}/data.txt"\n')
    project.run()
    digest = file_digest(os.path.join(project.root, ".forge/out/run/a/data.txt"))
    found = _damage_through_the_link(project, "run/a/data.txt")
    proc = project.run("verify", "--rebuild", expect=1)
    lines = proc.stdout.splitlines()
    output = json.loads(project.read(".forge/state/targets/run/a.json"))["digest"]
    assert lines[-3:-1] == [f"CORRUPT run:a  output {output}",
                            f"  data.txt: blob {digest} now hashes to {found}: .forge/cas/{digest[:2]}/{digest}"]
    assert lines[-1].startswith("verify: 1 of 1 targets have corrupt cache entries (run:a) (")


# ------------------------------------------------------------------ out of disk, unwritable cache files

def test_running_out_of_disk_while_storing_leaves_no_orphan_blobs(project, monkeypatch, capsys):
    """The output is in the store when the build record's write finds the disk full: the build fails
    naming it, and neither the output's blobs nor the log's blob nor a staged temporary file stays."""
    from forgebuild import cli
    from forgebuild.store import local as store

    project.forgefile('[run.a]\ncmd = "echo data > {out}/data.txt; echo 1 > {out}/one.txt"\n')
    real = store.LocalFS.pipe_file

    def full(self, path, data):
        if b'"sources_text"' in data:  # the build record: half of it fits
            real(self, path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, data)

    monkeypatch.setattr(store.LocalFS, "pipe_file", full)
    monkeypatch.chdir(project.root)
    assert cli.main(["--json"]) == 1
    failed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"failed"' in line]
    assert failed[0]["reason"] == "OSError: [Errno 28] No space left on device"
    assert _blobs(project) == []
    assert os.listdir(os.path.join(project.root, ".forge/tmp")) == []
    assert not glob.glob(os.path.join(project.root, ".forge/logs/run/*.blob"))
    monkeypatch.setattr(store.LocalFS, "pipe_file", real)
    assert cli.main([]) == 0


def _mount_tmpfs(folder: str, size: str) -> None:
    os.makedirs(folder)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")


def test_a_cache_on_a_full_disk_keeps_no_part_of_a_failed_build(project, tmp_path_factory):
    """A real full disk: the store on a 1 MiB tmpfs, an output of a small file and a 2 MiB one."""
    cache = str(tmp_path_factory.mktemp("disk") / "small")
    _mount_tmpfs(cache, "1m")
    try:
        project.forgefile(f"""
            [forge]
            cache = "{cache}"

            [run.big]
            cmd = "echo small > {{out}}/a.txt; head -c 2097152 /dev/zero > {{out}}/b.bin"
        """)
        proc = project.run(expect=1)
        assert "FAILED  run:big: OSError: [Errno 28] No space left on device" in proc.stdout
        assert glob.glob(os.path.join(cache, "cas/*/*")) == []
        assert glob.glob(os.path.join(cache, "tmp/*")) == []
        assert glob.glob(os.path.join(cache, "ac/*/*")) == []
    finally:
        subprocess.run(["umount", cache], check=True)


def test_read_only_commands_warn_when_a_cache_file_cannot_be_written(project):
    """The plan cache and the stat cache are conveniences: a path that cannot be written (here a folder in
    their place) makes `status`, `-n` and a no-op build warn once per file and go on."""
    project.write("in.txt", "x\n")
    project.forgefile('[run.a]\ncmd = "cp {in.x} {out}/"\ninputs = { x = "in.txt" }\n')
    project.run()
    for name in ("plan.json", "statcache.json"):
        os.unlink(os.path.join(project.root, ".forge", name))
        os.makedirs(os.path.join(project.root, ".forge", name))
    warnings = [
        "warning: cannot save the plan cache .forge/plan.json: [Errno 21] Is a directory (going on without it)",
        "warning: cannot save the stat cache .forge/statcache.json: [Errno 21] Is a directory (going on without it)"]
    assert project.run("status").stdout.splitlines() == [*warnings[:1], "fresh   run:a  up to date", *warnings[1:]]
    assert project.run("-n").stdout.splitlines() == [*warnings, "dry run: 0 to build, 1 fresh"]
    lines = project.run().stdout.splitlines()
    assert lines[:2] == warnings and lines[2].startswith("nothing to do: 1 target up to date") and len(lines) == 3
    events = project.events()
    assert [e["message"] for e in events if e["event"] == "warning"] == [w[len("warning: "):] for w in warnings]
    assert events[-1]["event"] == "summary" and events[-1]["ok"]
    assert not glob.glob(os.path.join(project.root, ".forge/*.tmp"))


# ------------------------------------------------------------------ a release replaces only an earlier release of itself

def test_a_release_outside_the_project_must_be_absolute(project):
    _weights(project)
    project.forgefile(IMPORTED.replace("TO", "../victim"))
    proc = project.run("status", expect=2)
    assert proc.stderr.splitlines() == [
        "Forgefile.toml:8: error: release:r: key 'to': '../victim' leaves the project folder: a release goes "
        "inside the project unless `to` is an absolute path"]


def test_a_release_never_replaces_a_folder_that_is_not_its_own(project, tmp_path_factory):
    """The issue's reproducer: `to` named an existing folder, which was deleted and replaced."""
    _weights(project)
    victim = tmp_path_factory.mktemp("outside") / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    project.forgefile(IMPORTED.replace("TO", str(victim)))
    events = project.events(expect=2)
    failed = [e for e in events if e["event"] == "failed"]
    assert failed[0]["reason"] == (
        f"{victim} exists and is not an earlier release of release:r (it has no .forge-release naming it): "
        "nothing was replaced; move it away or release elsewhere")
    assert os.listdir(victim) == ["precious.txt"]
    assert not glob.glob(f"{victim}.*")


def test_a_release_replaces_its_own_earlier_release(project, tmp_path_factory):
    """An absolute `to` outside the project is explicit; a second build replaces the first release whole."""
    _weights(project)
    dest = tmp_path_factory.mktemp("prod") / "m"
    project.forgefile(IMPORTED.replace("TO", str(dest)))
    project.run()
    marker = json.loads((dest / ".forge-release").read_text())
    assert marker == {"target": "release:r"}
    assert "# the original card" not in (dest / "README.md").read_text()
    project.write("weights/config.json", '{"model_type": "llama", "edited": true}\n')
    assert project.build() == {"model:m": "built", "release:r": "built"}
    assert json.loads((dest / "config.json").read_text())["edited"] is True
    assert sorted(os.listdir(dest.parent)) == ["m"]
    # another release of the same folder is refused: the marker names release:r
    project.forgefile(IMPORTED.replace("TO", str(dest)).replace("[release.r]", "[release.other]"))
    failed = [e for e in project.events(expect=2) if e["event"] == "failed"]
    assert failed[0]["reason"].startswith(f"{dest} exists and is not an earlier release of release:other")


def test_a_release_replaces_a_release_written_before_markers(project, tmp_path_factory):
    """A folder an earlier forgebuild released (no marker yet; release.json listing every other file) is
    replaced; the same folder with one file more is somebody's, and is refused."""
    _weights(project)
    dest = tmp_path_factory.mktemp("old") / "m"
    dest.mkdir()
    (dest / "config.json").write_text("{}\n")
    (dest / "release.json").write_text(json.dumps({"model": "model:m", "digest": "0" * 32, "gates": {},
                                                   "files": {"config.json": "0" * 32}}))
    (dest / "notes.txt").write_text("mine\n")
    project.forgefile(IMPORTED.replace("TO", str(dest)))
    failed = [e for e in project.events(expect=2) if e["event"] == "failed"]
    assert failed[0]["reason"].startswith(f"{dest} exists and is not an earlier release of release:r")
    (dest / "notes.txt").unlink()
    project.run()
    assert json.loads((dest / ".forge-release").read_text()) == {"target": "release:r"}


# ------------------------------------------------------------------ the project never shadows a library in a worker

def test_a_module_in_the_project_does_not_shadow_a_library_inside_build_workers(project):
    """A project with its own pydantic.py and torch.py: the planner (the `forgebuild` command) never imports
    the project's folder, and neither may the build worker that it starts there."""
    _weights(project)
    for name in ("pydantic.py", "torch.py", "datasets/__init__.py"):
        project.write(name, "raise SystemExit('the project shadowed a library')\n")
    project.forgefile(IMPORTED.replace("TO", "dist/m"))
    script = shutil.which("forgebuild") or pytest.skip("the forgebuild command is not installed")
    proc = subprocess.run([script, "model:m"], cwd=project.root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "shadowed" not in proc.stdout + proc.stderr


def test_the_worker_drops_the_project_folder_from_sys_path_without_safe_path_mode(project):
    """Python 3.10 has no safe-path mode: the worker removes the folder `python -m` put first on sys.path
    before it imports anything (here run without PYTHONSAFEPATH, a context file that does not exist)."""
    project.write("pydantic.py", "raise SystemExit('the project shadowed a library')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    proc = subprocess.run([sys.executable, "-m", "forgebuild.engine.worker", "missing.json"], cwd=project.root,
                          capture_output=True, text=True, env=env, timeout=60)
    assert "shadowed" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == "FileNotFoundError: [Errno 2] No such file or directory: 'missing.json'"


def test_a_reward_files_folder_does_not_shadow_a_library(project):
    """Loading rewards.py makes helpers beside it importable, but after the libraries: a module of a library's
    name beside it (here colorsys.py, imported after the reward loads, in a fresh interpreter) is not used."""
    project.write("rewards.py", "def f(prompts, completions, **kwargs):\n    return [1.0 for _ in completions]\n")
    project.write("colorsys.py", "raise SystemExit('the project shadowed a library')\n")
    code = ("import sys; from forgebuild.rules.model.reward_functions import load_rewards; "
            f"load_rewards(['rewards.py:f'], {project.root!r}, {{}}, print); import colorsys; print(colorsys.ONE_THIRD)")
    proc = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "shadowed" not in proc.stderr, proc.stderr
