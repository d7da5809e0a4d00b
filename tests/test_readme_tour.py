"""The README's short tour, run as written: every `$ forgebuild ...` line of its blocks runs in a copy of
the example (its `run` targets: no training), in order, with the edits the prose describes between
them; what it prints must be what the README shows (timings, keys, digests and dates aside), and
the cache must verify clean at the end."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from conftest import ENV, RAN_IN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The prose's edits, applied before the block whose first command is the key.
EDITS = {
    "forgebuild -f Forgefile.example.toml status run:report": ("size = 120", "size = 100"),
    "forgebuild -f Forgefile.example.toml -v run:report": ("size = 100", "size = 120"),
}
# -j 2 runs run:stats and run:vocab at once: their lines may come in either order
UNORDERED = "forgebuild -f Forgefile.example.toml -B -j 2 run:stats run:vocab"


def tour_blocks() -> list[list[tuple[str, list[str]]]]:
    """The tour's code blocks that show commands: [(command, expected lines), ...] per block."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    tour = text.split("## A short tour", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for body in re.findall(r"```\n(.*?)```", tour, flags=re.S):
        steps: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif steps:
                steps[-1][1].append(line)
        if steps:
            blocks.append(steps)
    return blocks


def masked(line: str, root: str) -> str:
    line = line.replace(root, "ROOT").replace("/work/main", "ROOT")
    line = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", line)
    line = re.sub(r"[0-9a-f]{12,64}", "HEX", line)
    return re.sub(r"\d+\.\d+s", "Ts", line)


def test_the_readme_tour_prints_what_it_shows_and_leaves_a_sound_cache(tmp_path):
    root = str(tmp_path / "tour")
    os.makedirs(root)
    shutil.copytree(os.path.join(REPO, "examples"), os.path.join(root, "examples"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "Forgefile.example.toml"), root)
    forgefile = os.path.join(root, "Forgefile.example.toml")
    env = {**ENV, "COLUMNS": "200"}

    def sh(command: str) -> subprocess.CompletedProcess:
        RAN_IN.append(root)
        return subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=300)

    first = sh("forgebuild -f Forgefile.example.toml -q run:report")  # the tour starts from a built run:report
    assert first.returncode == 0, first.stderr
    blocks = tour_blocks()
    assert len(blocks) == 9, "the tour has another number of command blocks: look at EDITS and UNORDERED"
    for steps in blocks:
        if steps[0][0] in EDITS:
            old, new = EDITS[steps[0][0]]
            with open(forgefile, encoding="utf-8") as f:
                text = f.read()
            assert old in text
            with open(forgefile, "w", encoding="utf-8") as f:
                f.write(text.replace(old, new, 1))
        for command, expected in steps:
            proc = sh(command)
            assert proc.returncode == 0, (command, proc.stderr)
            got = [masked(line, root) for line in proc.stdout.splitlines()]
            want = [masked(line, root) for line in expected]
            if command == UNORDERED:
                got, want = sorted(got), sorted(want)
            assert got == want, command
    verified = sh("forgebuild -f Forgefile.example.toml verify run:report")
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.splitlines()[-1].startswith("verified: 4 targets, "), verified.stdout
