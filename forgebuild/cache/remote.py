"""The shared remote cache: read-through on a local miss, write-through after a build.

A remote is a store at any fsspec URL (`s3://bucket/prefix`, `file:///mnt/team/cache`,
`gs://...`) with the local store's layout. Credentials never appear in the Forgefile:
s3fs, gcsfs and the rest read their own configuration (environment, profiles).

- fetch: the entry (its manifest validated: no absolute paths, no `..`), then every
  blob the local store lacks, in parallel threads, each into a temporary file that is
  checked against its digest before it is renamed into the local store. A mismatch is
  an error naming the key and the blob, never a silent hit: the target is rebuilt.
  An interrupted fetch leaves whole blobs only, and the next run fetches the rest.
- push: the blobs the remote lacks (in parallel), the build record, then the entry:
  the entry is the commit point, so a reader sees a complete artifact or none. Two
  workspaces pushing one key write the same blobs and one whole entry each; the last
  entry stands, and both are consistent.
- A remote that cannot be reached degrades to local-only with one warning, unless
  --require-remote (then it is an error, exit 2).
"""
from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from ..errors import StoreError
from ..hashing import file_digest

class RemoteUnreachable(StoreError):
    """--require-remote and the remote cannot be reached: the build stops (exit 2)."""


THREADS = 8  # parallel transfers: object stores serve many streams; 8 fills a 1 Gb/s link with 4 MB blobs


class Remote:
    def __init__(self, url: str, push: bool = True, require: bool = False, report=None):
        self.url, self.push_enabled, self.require = url, push, require
        self.report = report or (lambda event: None)
        self._store = None
        self.disabled = False

    @property
    def store(self):
        if self._store is None:
            from .store import Store

            self._store = self._guard(Store, self.url)
        return self._store

    def _guard(self, call, *args):
        """Run a remote call; a remote that cannot be reached turns this remote off (one warning)."""
        if self.disabled:
            return None
        try:
            return call(*args)
        except StoreError:
            raise
        except (OSError, ImportError, ValueError) as e:
            self._unreachable(e)
        except Exception as e:  # botocore and aiohttp raise their own connection errors
            if "connect" not in type(e).__name__.lower() and "endpoint" not in str(e).lower():
                raise
            self._unreachable(e)
        return None

    def _unreachable(self, error: Exception) -> None:
        message = f"remote {self.url} cannot be reached ({type(error).__name__}: {error})"
        if self.require:
            raise RemoteUnreachable(message)
        self.disabled = True
        self.report({"event": "warning", "message": f"{message}; going on with the local cache only"})

    # ---------------------------------------------------------------- read-through

    def fetch(self, key: str, target: str, local, mat: dict | None = None) -> dict | None:
        """The remote's entry for `key`, with its blobs now in the local store; None on a miss.

        With `mat` (the action's material as this workspace computes it), the entry's
        provenance statement must vouch for this action, or the entry is refused."""
        if self.disabled or self.store is None:
            return None
        entry = self._guard(self.store.get_action, key, target)
        if entry is None:
            return None
        if mat is not None and not entry.get("provenance"):
            raise StoreError(f"remote entry {key} for {target} has no provenance statement")
        wanted = {f["digest"] for f in entry["files"]} | ({entry["provenance"]} if entry.get("provenance") else set())
        missing = sorted(d for d in wanted if not local.has_blob(d))
        with ThreadPoolExecutor(THREADS) as pool:
            for found in pool.map(lambda d: self._fetch_blob(d, key, target, local), missing):
                if found is False:
                    return None  # the remote went away mid-fetch: build locally
        if mat is not None:
            self._check_provenance(key, target, local, mat, entry)
        record_id = entry.get("record")
        if record_id and local.get_record(record_id) is None:
            record = self._guard(self.store.get_record, record_id)
            if record is not None:
                local.put_record_as(record)
        local.put_action(key, entry)  # last: the entry is the commit point
        return entry

    @staticmethod
    def _check_provenance(key: str, target: str, local, mat: dict, entry: dict) -> None:
        import json

        from ..provenance import problem

        with open(local.blob_path(entry["provenance"]), "rb") as f:
            found = problem(json.loads(f.read()), target, key, mat, entry)
        if found:
            raise StoreError(f"remote entry {key} for {target}: {found}")

    def _fetch_blob(self, digest: str, key: str, target: str, local) -> bool:
        tmp = os.path.join(local.root, "tmp", f"fetch-{uuid.uuid4().hex}")
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        try:
            try:
                self.store.fs.get_file(self.store.blob_path(digest), tmp)
            except FileNotFoundError:
                raise StoreError(f"remote entry {key} for {target}: blob {digest} is missing from the remote") from None
            except StoreError:
                raise
            except Exception as e:
                self._guard(_raise, e)
                return False
            got = file_digest(tmp)
            if got != digest:
                raise StoreError(f"remote entry {key} for {target}: blob {digest} does not match its digest "
                                 f"(the remote holds {got}): a corrupt or tampered remote")
            local.put_file(tmp, digest)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # ---------------------------------------------------------------- write-through

    def push(self, key: str, entry: dict, local) -> int:
        """Upload what the remote lacks; return the bytes sent."""
        if not self.push_enabled or self.disabled or self.store is None:
            return 0
        try:  # the same entry already there: its blobs were written before it (entries come last)
            there = self._guard(self.store.get_action, key)
        except StoreError:
            there = None  # a corrupt remote entry: overwrite it with a good one
        if there is not None and there.get("digest") == entry["digest"] and there.get("provenance"):
            return 0
        sizes = {f["digest"]: f["size"] for f in entry["files"]}
        if entry.get("provenance"):
            sizes[entry["provenance"]] = os.path.getsize(local.blob_path(entry["provenance"]))
        with ThreadPoolExecutor(THREADS) as pool:  # one existence check per blob, in parallel
            present = self._guard(lambda: {d for d, there in zip(sizes, pool.map(self.store.has_blob, sizes)) if there})
        if present is None:
            return 0
        missing = sorted(set(sizes) - present)
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda d: self._guard(self.store.copy_in, local.blob_path(d), d, False), missing))
        if self.disabled:
            return 0
        record_id = entry.get("record")
        record = local.get_record(record_id) if record_id else None
        if record is not None:
            self._guard(self.store.put_record_as, record)
        self._guard(self.store.put_action, key, entry)
        return sum(sizes[d] for d in missing)


def _raise(error: Exception):
    raise error


def remote_for(args, settings: dict, root: str, report) -> Remote | None:
    """--remote, else FORGE_REMOTE, else [forge] remote; a plain path is relative to the Forgefile."""
    url = getattr(args, "remote", None) or os.environ.get("FORGE_REMOTE") or settings.get("remote")
    if not url:
        return None
    if "://" not in url:
        url = os.path.join(root, url)
    push = settings.get("push", True) and not getattr(args, "no_push", False)
    return Remote(url, push=push, require=getattr(args, "require_remote", False), report=report)


# ------------------------------------------------------------------ forgebuild cache push|pull

def cmd_cache(args, session, report) -> int:
    from ..errors import UsageError

    remote = session.remote
    if remote is None:
        raise UsageError("no remote: give --remote URL, set FORGE_REMOTE, or [forge] remote")
    addresses = session.plan.closure(session.resolve(args.targets, use_default=False))
    if args.action == "push":
        return _push(session, remote, addresses, report)
    return _pull(session, remote, addresses, report)


def _push(session, remote, addresses, report) -> int:
    decisions = session.decide(addresses)
    pushed = sent = skipped = 0
    for address in addresses:
        d = decisions[address]
        entry = session.store.get_action(d.key, address) if d.state == "fresh" else None
        if entry is None:
            skipped += 1
            continue
        sent += remote.push(d.key, entry, session.store)
        pushed += 1
        report({"event": "pushed", "target": address, "key": d.key, "digest": d.digest})
    ok = not remote.disabled
    message = (f"pushed {pushed} targets ({sent / 1e6:.1f} MB sent) to {remote.url}"
               + (f"; {skipped} not built here" if skipped else ""))
    report({"event": "summary", "ok": ok, "pushed": pushed, "not_built": skipped, "bytes": sent, "message": message})
    return 0 if ok else 1


def _pull(session, remote, addresses, report) -> int:
    """In build order: each target's key from its dependencies' digests, fetched when the remote has it."""
    from ..keys import action_key, material

    digests, pulled, missing = {}, 0, []
    for address in addresses:
        target = session.plan.targets[address]
        if any(d not in digests for d in target.deps):
            missing.append(address)
            continue
        mat = material(session.plan, target, session.stat_cache, {d: digests[d] for d in target.deps})
        key = action_key(mat)
        entry = session.store.get_action(key, address)
        if entry is None:
            try:
                entry = remote.fetch(key, address, session.store, mat)
            except StoreError as e:
                report({"event": "warning", "message": str(e)})
                entry = None
            pulled += entry is not None
        if entry is None:
            missing.append(address)
            continue
        session.workspace.materialise(address, entry, session.store)
        session.workspace.record_build(address, {"key": key, "digest": entry["digest"], "material": mat,
                                                 "record": entry.get("record")})
        digests[address] = entry["digest"]
        report({"event": "pulled", "target": address, "key": key, "digest": entry["digest"]})
    message = f"pulled {pulled} targets from {remote.url}" + (f"; not there: {', '.join(missing)}" if missing else "")
    report({"event": "summary", "ok": not missing, "pulled": pulled, "missing": missing, "message": message})
    return 0 if not missing else 1
