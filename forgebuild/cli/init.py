"""The `init` verb: write a preset (a commented Forgefile and its small scripts) into a folder, or list
the presets. It needs no Forgefile, never overwrites a file and writes nothing outside the folder."""
from __future__ import annotations

import os
import shlex

from forgebuild import presets
from forgebuild.errors import UsageError, did_you_mean

DEFAULT = "learn"  # `forgebuild init` alone: the learning example


def cmd_init(args, session, report) -> int:
    if args.list:
        return _list(args, report)
    name = args.preset or DEFAULT
    known = presets.names()
    if name not in known:
        raise UsageError(f"no preset '{name}'{did_you_mean(name, known)}; the presets: {', '.join(known)} "
                         f"(`forgebuild init --list` says what each is)")
    folder = args.dir or "."
    found = presets.files(name)
    _check(folder, list(found))
    written = []
    for rel, data in found.items():
        path = os.path.join(folder, *rel.split("/"))
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "xb") as f:  # "x": a file that appeared since the check is still never overwritten
            f.write(data)
        written.append(os.path.normpath(path))
        if not args.json and not args.quiet:
            print(f"wrote {written[-1]}")
    if args.json:
        report({"event": "summary", "ok": True, "preset": name, "dir": os.path.abspath(folder), "files": written})
    elif not args.quiet:
        where = "" if os.path.abspath(folder) == os.getcwd() else f"cd {shlex.quote(folder)} && "
        print(f"next: {where}{presets.build_command(name)}    (the header of {presets.FORGEFILE} says what it builds "
              f"and what to expect)")
    return 0


def _list(args, report) -> int:
    known = presets.names()
    width = max((len(n) for n in known), default=0)
    for name in known:
        if args.json:
            report({"event": "preset", "name": name, "summary": presets.summary(name)})
        else:
            print(f"{name:<{width}}  {presets.summary(name)}")
    return 0


def _check(folder: str, rels: list[str]) -> None:
    """Every problem before the first byte is written: a file that exists, a file where a folder goes,
    a link that would carry a file outside the folder."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{folder} is a file, not a folder: nothing written")
    top = os.path.realpath(folder)
    for rel in rels:
        parts = rel.split("/")
        path = os.path.join(folder, *parts)
        if os.path.lexists(path):
            raise UsageError(f"{os.path.normpath(path)} exists; init never overwrites a file: nothing written")
        for depth in range(1, len(parts)):
            above = os.path.join(folder, *parts[:depth])
            if os.path.lexists(above) and not os.path.isdir(above):
                raise UsageError(f"{os.path.normpath(above)} is a file where init writes a folder: nothing written")
        if os.path.commonpath([top, os.path.realpath(os.path.dirname(path))]) != top:
            raise UsageError(f"{os.path.normpath(os.path.dirname(path))} leads outside {folder} (a link): "
                             f"nothing written")
