"""Whether a cached output is still what its digest says, and the commands that put it right.

`verify` re-hashes every cached output with these checks; `build --frozen` and `verify --rebuild`
trust no cached byte they have not checked. `lock` and `verify` refuse a target that is not built
with `not_built`'s lines.
"""
from __future__ import annotations

import os

from forgebuild.hashing import tree_digest
from forgebuild.planning.plan import display_path


def prefix(args) -> str:
    """`forgebuild` plus the -f option the user gave, for the commands we suggest."""
    return "forgebuild" + (f" -f {args.file}" if getattr(args, "file", None) else "")


def not_built(args, decisions, verb: str) -> list[str]:
    """Lines naming the targets of the closure that are not fresh; [] when all are."""
    unbuilt = [d for d in decisions.values() if d.state != "fresh"]
    if not unbuilt:
        return []
    lines = [f"forgebuild: cannot {verb} {d.address}: it is {d.state} ({'; '.join(d.reasons)})" for d in unbuilt]
    them = "it" if len(unbuilt) == 1 else "them"
    lines.append(f"forgebuild: build {them} first: {prefix(args)} {' '.join(d.address for d in unbuilt)}")
    return lines


def entry_problems(store, ws, address: str, entry: dict, digest_of) -> list[dict]:
    """What no longer holds of a cache entry: its manifest makes up its digest, every blob is present and
    hashes to its name, and every materialised file that is not a hardlink of its blob does too.
    `digest_of(path)`: file_digest, or a stat cache's digest (a file unchanged since it hashed it is
    only stat()ed)."""
    problems = []
    listed = [(f["path"], bool(f.get("x")), f["digest"]) for f in entry["files"]]
    if tree_digest(listed) != entry["digest"]:
        problems.append({"path": None, "problem": "manifest",
                         "message": f"the manifest's files do not make up output {entry['digest']}"})
    materialised = ws.is_materialised(address, entry["digest"])
    for item in entry["files"]:
        blob = store.blob_path(item["digest"])
        if not os.path.exists(blob):
            problems.append({"path": item["path"], "problem": "missing", "blob": blob, "digest": item["digest"],
                             "message": f"blob {item['digest']} is missing: {display_path(blob)}"})
            continue
        found = digest_of(blob)
        if found != item["digest"]:
            problems.append({"path": item["path"], "problem": "corrupt", "blob": blob, "digest": item["digest"],
                             "found": found, "message": f"blob {item['digest']} now hashes to {found}: "
                                                        f"{display_path(blob)}"})
            continue
        copy_path = os.path.join(ws.artifact_dir(entry["digest"]), *item["path"].split("/"))
        if materialised and os.path.exists(copy_path) and not os.path.samefile(copy_path, blob):
            found = digest_of(copy_path)
            if found != item["digest"]:
                problems.append({"path": item["path"], "problem": "corrupt", "blob": copy_path,
                                 "digest": item["digest"], "found": found,
                                 "message": f"the materialised copy of blob {item['digest']} now hashes to "
                                            f"{found}: {display_path(copy_path)}"})
    return problems


def corrupt_outputs(session, decisions, digest_of) -> list[dict]:
    """Fresh targets whose stored files no longer hash to their digests (`--frozen` and
    `verify --rebuild` trust no cached byte they have not checked)."""
    found = []
    for address, d in decisions.items():
        entry = session.store.get_action(d.key, address) if d.state == "fresh" else None
        problems = entry_problems(session.store, session.workspace, address, entry, digest_of) if entry else []
        if problems:
            found.append({"target": address, "digest": entry["digest"], "problems": problems})
    return found


def repair_line(args, bad_targets: list[str], bad_blobs: list[str]) -> str:
    blobs = " ".join(display_path(b) for b in dict.fromkeys(bad_blobs))
    return f"{prefix(args)} clean && {'rm -f ' + blobs + ' && ' if blobs else ''}" \
           f"{prefix(args)} -B {' '.join(bad_targets)}"
