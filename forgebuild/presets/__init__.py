"""The presets `forgebuild init` writes: each folder here holds one preset's files exactly as they are
written out (its Forgefile.toml, and the small scripts that Forgefile runs), so a preset is read and
edited as the project it becomes.

Plain standard library: `importlib.resources` reads the files wherever the package lies (a checkout,
a wheel). Nothing here imports another part of forgebuild, and the preset files are data: they are
never imported from this package (their scripts run in the project `init` writes).
"""
from __future__ import annotations

from importlib import resources

FORGEFILE = "Forgefile.toml"
BUILD_IT = "# Build it:"
NOT_COPIED = ("__pycache__",)  # what running a preset's script in place may leave beside it


def names() -> list[str]:
    """Every preset: a folder here with a Forgefile.toml, by name."""
    return sorted(entry.name for entry in resources.files(__name__).iterdir()
                  if entry.is_dir() and entry.joinpath(FORGEFILE).is_file())


def summary(name: str) -> str:
    """The first line of the preset's Forgefile header (its first comment), without the `#`."""
    return next((line.lstrip("#").strip() for line in _comments(name)), "")


def build_command(name: str) -> str:
    """How to build the preset: its header's `# Build it:` line, or a plain `forgebuild`."""
    said = [line.split(":", 1)[1].strip() for line in _comments(name) if line.startswith(BUILD_IT)]
    return said[0] if said else "forgebuild"


def _comments(name: str) -> list[str]:
    text = resources.files(__name__).joinpath(name, FORGEFILE).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.startswith("#")]


def files(name: str) -> dict[str, bytes]:
    """The preset's files: {path relative to the project, with `/`: content}, in path order."""
    found: dict[str, bytes] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.name in NOT_COPIED:
                continue
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                found[prefix + entry.name] = entry.read_bytes()

    walk(resources.files(__name__).joinpath(name), "")
    return dict(sorted(found.items()))
