"""Typed failures. Each one knows how to say itself in one clear message.

The CLI turns ForgefileError and UsageError into exit code 2, RuleFailed into
exit code 1 and StoreError into exit code 2; none of them ever shows a traceback.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a Forgefile, located as precisely as we can."""

    file: str
    line: int | None
    message: str
    target: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where, ": error: "]
        if self.target:
            parts.append(f"{self.target}: ")
        if self.key:
            parts.append(f"key '{self.key}': ")
        parts.append(self.message)
        return shown("".join(parts))


def shown(text: str) -> str:
    r"""Text as one readable line: a key named "\x1e" or "a\u2028b" would break it, or hide in it."""
    return text if text.isprintable() else "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class ForgeError(Exception):
    """Base of every failure forgebuild reports without a traceback."""

    exit_code = 2


class ForgefileError(ForgeError):
    """The Forgefile (or a file it names) is wrong; carries every problem found in one pass."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line or 0, p.target or "", p.key or ""))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(ForgeError):
    """The command line asks for something that does not exist or does not make sense."""


class StoreError(ForgeError):
    """The cache is corrupt, unreadable or inconsistent."""


class RuleFailed(ForgeError):
    """A stage's build step failed; the message carries its log tail."""

    exit_code = 1

    def __init__(self, target: str, message: str, log_tail: str = ""):
        self.target = target
        self.message = message
        self.log_tail = log_tail
        super().__init__(f"{target}: {message}")


def suggest_address(word: str, addresses) -> str:
    """Like did_you_mean, but 'run:nope' is compared by name with targets of its own kind first,
    so a shared 'run:' prefix alone does not make two addresses look alike."""
    kind, _, name = word.rpartition(":")
    same_kind = {a.split(":", 1)[1]: a for a in addresses if a.split(":", 1)[0] == kind}
    found = closest(name, same_kind)
    if found:
        return f" (did you mean '{same_kind[found]}'?)"
    return did_you_mean(word, [a for a in addresses if a.split(":", 1)[0] != kind]) if kind else did_you_mean(word, addresses)


class BadInput(RuleFailed):
    """A stage found its input data wrong (a bad row, a missing field): bad input, exit code 2."""

    exit_code = 2


def closest(word: str, choices, cutoff: float = 0.6) -> str | None:
    import difflib  # only on the error path

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: str, choices, quote: str = "'", cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    found = closest(word, choices, cutoff)
    return f" (did you mean {quote}{found}{quote}?)" if found else ""


class Delegated(Exception):
    """A build handed to a launcher (torchrun) that ran it to completion: the process that
    raised it has nothing more to do."""
