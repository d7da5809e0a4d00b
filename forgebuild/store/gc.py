"""Garbage collection: keep what the current Forgefile's targets last built, drop the rest.

Kept: the action-cache entry of each current target (the one it resolves to now
when fresh, else its last build's), the blobs
its manifest and build record name, and its materialised artifact. Everything
else in the local store and workspace goes, except objects touched less than
`grace` seconds ago: they may belong to a build running right now.
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


def collect(session, dry_run=False, grace=3600.0) -> dict:
    store, ws, now = session.store, session.workspace, time.time()
    keep_keys, keep_digests, keep_blobs = set(), set(), set()
    decisions = session.decide(list(session.plan.order))
    for address in session.plan.targets:
        # The key the Forgefile resolves to now when the target is fresh (so `clean`, which
        # forgets the last builds, does not make everything garbage), else its last build's.
        last = ws.last_build(address) or {}
        key = decisions[address].key if decisions[address].state == "fresh" else last.get("key")
        entry = store.get_action(key, address) if key else None
        if entry is None:
            continue
        keep_keys.add(key)
        keep_digests.add(entry["digest"])
        keep_blobs.update(f["digest"] for f in entry["files"])
        if entry.get("provenance"):
            keep_blobs.add(entry["provenance"])
        for memo_key in entry.get("memos", []):  # cached sub-steps the build used
            memo = store.get_action(memo_key, address)
            if memo is not None:
                keep_keys.add(memo_key)
                keep_digests.add(memo["digest"])
                keep_blobs.update(f["digest"] for f in memo["files"])
        record = store.get_record(entry.get("record") or last.get("record") or "")
        if record and record.get("log"):
            keep_blobs.add(record["log"])
    stats = {"actions": 0, "blobs": 0, "bytes": 0, "folders": 0, "kept_actions": len(keep_keys)}
    for key in list(store.action_keys()):
        if key not in keep_keys and not _young(store.action_path(key), now, grace):
            stats["actions"] += 1
            if not dry_run:
                store.remove_action(key)
    for digest in list(store.blob_digests()):
        path = store.blob_path(digest)
        if digest not in keep_blobs and not _young(path, now, grace):
            stats["blobs"] += 1
            stats["bytes"] += os.path.getsize(path)
            if not dry_run:
                store.remove_blob(digest)
    current_keys = {(ws.last_build(a) or {}).get("key") for a in session.plan.targets}
    for folder, keep in (("artifacts", keep_digests), ("work", current_keys), ("scratch", set()), ("tmp", set())):
        base = ws.path(folder) if folder != "tmp" else os.path.join(store.root, "tmp")
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            full = os.path.join(base, name)
            if name not in keep and not _young(full, now, grace):
                stats["folders"] += 1
                if not dry_run:
                    remove_tree(full)
    return stats
