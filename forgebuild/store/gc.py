"""Garbage collection over plain data: keep the action-cache entries it is given, drop the rest.

The caller says which entry to keep for each current target (`keep`: address -> action key).
Kept with each entry: the cached sub-steps (memos) it names, the blobs its manifest, provenance
and build record name, its materialised artifact, and the work folder of its target's last
build. Everything else in the local store and workspace goes, except objects touched less than
`grace` seconds ago: they may belong to a build running right now. An index member (a stored
checkpoint prefix, listed by step) goes with the memo it points at.
"""
from __future__ import annotations

import os
import time

from forgebuild.store.workspace import remove_tree


def _young(path: str, now: float, grace: float) -> bool:
    try:
        return now - os.lstat(path).st_ctime < grace  # a rename into the store updates ctime
    except OSError:
        return True


def _reached(store, keep: dict[str, str], lasts: dict[str, dict]) -> tuple[set[str], set[str], set[str]]:
    """The action keys, artifact digests and blobs the kept entries reach (`lasts`: each target's last build)."""
    keys, digests, blobs = set(), set(), set()
    for address, key in keep.items():
        entry = store.get_action(key, address)
        if entry is None:
            continue
        keys.add(key)
        digests.add(entry["digest"])
        blobs.update(f["digest"] for f in entry["files"])
        if entry.get("provenance"):
            blobs.add(entry["provenance"])
        for memo_key in entry.get("memos", []):  # cached sub-steps the build used
            memo = store.get_action(memo_key, address)
            if memo is not None:
                keys.add(memo_key)
                digests.add(memo["digest"])
                blobs.update(f["digest"] for f in memo["files"])
        record = store.get_record(entry.get("record") or lasts[address].get("record") or "")
        if record and record.get("log"):
            blobs.add(record["log"])
    return keys, digests, blobs


def collect(store, workspace, keep: dict[str, str], dry_run=False, grace=3600.0) -> dict:
    """Remove what `keep` does not reach (nothing when `dry_run`); the counts of what went."""
    now = time.time()
    lasts = {address: workspace.last_build(address) or {} for address in keep}  # each read once
    keep_keys, keep_digests, keep_blobs = _reached(store, keep, lasts)
    stats = {"actions": 0, "blobs": 0, "bytes": 0, "folders": 0, "kept_actions": len(keep_keys)}
    for key in list(store.action_keys()):
        if key not in keep_keys and not _young(store.action_path(key), now, grace):
            stats["actions"] += 1
            if not dry_run:
                store.remove_action(key)
    stats["actions"] += _collect_marks(store, keep_keys, now, grace, dry_run)  # pointers into the cache
    for digest in list(store.blob_digests()):
        path = store.blob_path(digest)
        if digest not in keep_blobs and not _young(path, now, grace):
            stats["blobs"] += 1
            stats["bytes"] += os.path.getsize(path)
            if not dry_run:
                store.remove_blob(digest)
    last_keys = {last.get("key") for last in lasts.values()}
    for folder, kept in (("artifacts", keep_digests), ("work", last_keys), ("scratch", set()), ("tmp", set())):
        base = workspace.path(folder) if folder != "tmp" else os.path.join(store.root, "tmp")
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            full = os.path.join(base, name)
            if name not in kept and not _young(full, now, grace):
                stats["folders"] += 1
                if not dry_run:
                    remove_tree(full)
    return stats


def _collect_marks(store, keep_keys: set[str], now: float, grace: float, dry_run: bool) -> int:
    """Remove the index members whose memo is not kept (a member that names none goes too); their count."""
    removed = 0
    for group, member in list(store.mark_paths()):
        path = store.mark_path(group, member)
        if _young(path, now, grace) or store.get_mark(group, member).get("memo") in keep_keys:
            continue
        removed += 1
        if not dry_run:
            store.remove_mark(group, member)
    return removed
