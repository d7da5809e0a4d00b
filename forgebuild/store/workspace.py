"""The local workspace beside a Forgefile (``.forge/`` by default).

    out/<kind>/<name>     stable path of each target's artifact (a link into artifacts/)
    artifacts/<digest>/   materialised outputs: read-only hardlinks of store blobs
    scratch/<key>.<id>/out  a stage's fresh output folder while it builds (new for each attempt)
    work/<key>/           kept across failed or killed runs of the same key (checkpoints)
    logs/<kind>/<name>.log
    state/targets/...     each target's last build (key, digest, key material) for `explain`
    state/log.jsonl       build history
    statcache.json, plan.json

The local store (cas/, ac/, records/) lives in the same folder unless
``[forge] cache`` moves it. Standard library only.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid

from forgebuild.errors import StoreError
from forgebuild.hashing import save_json

FICLONE = 0x40049409  # Linux ioctl: share extents copy-on-write (btrfs, XFS)


def clone_file(src: str, dst: str, link: bool = True) -> None:
    """Hardlink, else reflink, else copy: a 10 GB model is stored once where the filesystem allows.

    link=False for a file a build may still write (an output): a hardlink of a blob would let that
    write change the stored bytes, whatever the blob's mode (builds often run as root); a reflink
    shares extents copy-on-write, so a write lands in a new extent. ext4 has no reflink: a copy.
    """
    if link:
        try:
            os.link(src, dst)
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.ENOTSUP):
                raise
    try:
        import fcntl

        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
        return
    except (OSError, ImportError):
        pass
    shutil.copyfile(src, dst)


def make_writable(path: str) -> None:
    """Read-only trees cannot be deleted until their folders are writable again."""
    for dirpath, dirnames, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)


def remove_tree(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        make_writable(path)
        shutil.rmtree(path)


class Workspace:
    def __init__(self, root_dir: str, dot: str = ".forge"):
        self.project = root_dir
        self.dir = os.path.join(root_dir, dot) if not os.path.isabs(dot) else dot

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def statcache_path(self) -> str:
        return self.path("statcache.json")

    @property
    def plan_path(self) -> str:
        return self.path("plan.json")

    def out_link(self, address: str) -> str:
        kind, name = address.split(":", 1)
        return self.path("out", kind, name)

    def artifact_dir(self, digest: str) -> str:
        return self.path("artifacts", digest)

    def scratch(self, key: str) -> str:
        """A folder no earlier attempt has used: a process that outlived a killed build
        cannot write into the next attempt's output."""
        return self.path("scratch", f"{key}.{uuid.uuid4().hex[:8]}")

    def leftover_scratch(self, key: str) -> list[str]:
        base = self.path("scratch")
        names = os.listdir(base) if os.path.isdir(base) else []
        return [os.path.join(base, n) for n in names if n.startswith(key + ".")]

    def work(self, key: str) -> str:
        return self.path("work", key)

    def log_path(self, address: str) -> str:
        kind, name = address.split(":", 1)
        return self.path("logs", kind, f"{name}.log")

    def display(self, path: str) -> str:
        """A path as the user's commands see it: relative to the project when inside it."""
        rel = os.path.relpath(path, self.project)
        return path if rel.startswith("..") else rel

    # ---------------------------------------------------------------- artifacts

    def is_materialised(self, address: str, digest: str) -> bool:
        try:
            linked = os.readlink(self.out_link(address)) == self._link_text(address, digest)
        except OSError:
            return False
        return linked and os.path.isdir(self.artifact_dir(digest))

    def _link_text(self, address: str, digest: str) -> str:
        return os.path.relpath(self.artifact_dir(digest), os.path.dirname(self.out_link(address)))

    def materialise(self, address: str, entry: dict, store) -> str:
        """Make the artifact visible (read-only) at its stable path; return that path."""
        digest = entry["digest"]
        self.artifact(entry, store, address)
        link = self.out_link(address)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        tmp_link = f"{link}.{uuid.uuid4().hex[:8]}.tmp"
        os.symlink(self._link_text(address, digest), tmp_link)
        os.replace(tmp_link, link)  # the stable path switches atomically
        return link

    def artifact(self, entry: dict, store, owner: str = "") -> str:
        """The read-only folder artifacts/<digest> holding a manifest's files (made if absent)."""
        digest = entry["digest"]
        final = self.artifact_dir(digest)
        if not os.path.isdir(final):
            tmp = self.path("artifacts", f".tmp-{uuid.uuid4().hex}")
            os.makedirs(tmp)
            try:
                for item in entry["files"]:
                    blob = store.blob_path(item["digest"])
                    if not os.path.exists(blob):
                        raise StoreError(
                            f"{blob}: {owner}: blob {item['digest']} of {item['path']} is missing from the cache; "
                            f"rebuild it with `forgebuild -B {owner}`")
                    dst = os.path.join(tmp, *item["path"].split("/"))
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    if item.get("x"):
                        shutil.copyfile(blob, dst)  # the blob is shared 0444; an executable needs its own mode
                        os.chmod(dst, 0o555)
                    else:
                        clone_file(blob, dst)
                        os.chmod(dst, 0o444)
                for dirpath, _, _ in os.walk(tmp, topdown=False):
                    os.chmod(dirpath, 0o555)
                os.rename(tmp, final)
            except FileExistsError:
                pass  # another builder materialised the same digest first
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            finally:
                if os.path.exists(tmp):
                    remove_tree(tmp)
        return final

    # ---------------------------------------------------------------- state

    def _state_file(self, address: str) -> str:
        kind, name = address.split(":", 1)
        return self.path("state", "targets", kind, f"{name}.json")

    def last_build(self, address: str) -> dict | None:
        try:
            with open(self._state_file(address), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def record_build(self, address: str, state: dict) -> None:
        save_json(self._state_file(address), state)

    def append_log(self, event: dict) -> None:
        path = self.path("state", "log.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        line = json.dumps({"time": round(time.time(), 3), **event}) + "\n"
        with open(path, "a", encoding="utf-8") as f:  # one short append: atomic on local filesystems
            f.write(line)

    def history(self) -> list[dict]:
        try:
            with open(self.path("state", "log.jsonl"), encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        except OSError:
            return []

