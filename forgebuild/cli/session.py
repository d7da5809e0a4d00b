"""The loaded project every verb works on (`Session`), and the remote cache its flags and settings name."""
from __future__ import annotations

import os

from forgebuild.planning import plan as planlib
from forgebuild.errors import UsageError, did_you_mean, suggest_address
from forgebuild.hashing import StatCache
from forgebuild.store.workspace import Workspace


class Session:
    """The loaded project: plan (cached when possible), workspace, store and stat cache."""

    def __init__(self, args, report=None):
        given = args.file or "Forgefile.toml"
        path = os.path.abspath(given)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            hint = "" if args.file else " (use -f FILE to name another)"
            raise UsageError(f"no Forgefile at {given}{hint}") from None
        except OSError as e:
            raise UsageError(f"cannot read {given}: {e.strerror}") from None
        self.workspace = Workspace(os.path.dirname(path))
        self._warned: set[str] = set()  # a cache file that cannot be saved is said once
        self.report = report
        self._digest = planlib.forgefile_digest(data + path.encode())
        self.plan = planlib.load_cached(self.workspace.plan_path, self._digest)
        self._rules = None
        if self.plan is None:
            self.replan(path, report)
        cache = self.plan.settings.get("cache")
        from forgebuild.store.local import Store

        self.store = Store(os.path.join(self.plan.root, cache) if cache else self.workspace.dir)
        self.stat_cache = StatCache(self.workspace.statcache_path)
        self.args, self.report, self._remote = args, report, False

    def replan(self, path: str | None = None, report=None) -> None:
        """Read the Forgefile (and the files beside it that planning reads: search records) again."""
        from forgebuild.planning import forgefile

        self.plan = forgefile.load(path or self.plan.forgefile, self.rules)
        self._save_cache(report if report is not None else self.report, "plan cache", self.workspace.plan_path,
                         lambda: planlib.save(self.plan, self.workspace.plan_path, self._digest))

    @property
    def remote(self):
        """The shared cache, when one is configured (made on first use: fsspec stays unimported otherwise)."""
        if self._remote is False:
            self._remote = self._make_remote()
        return self._remote

    def _make_remote(self):
        """--remote, else FORGE_REMOTE, else [forge] remote; a plain path is relative to the Forgefile.
        Trusted keys: [forge] trusted_keys, and FORGE_TRUSTED_KEYS (OpenSSH lines, one a line)."""
        from forgebuild.store.remote import Remote
        from forgebuild.store.signing import trusted_keys

        settings, root = self.plan.settings, self.plan.root
        url = getattr(self.args, "remote", None) or os.environ.get("FORGE_REMOTE") or settings.get("remote")
        if not url:
            return None
        if "://" not in url:
            url = os.path.join(root, url)
        push = settings.get("push", True) and not getattr(self.args, "no_push", False)
        trusted = trusted_keys(settings.get("trusted_keys") or [], root,
                               f"{self.plan.display_name}: [forge] trusted_keys")
        extra = [line for line in os.environ.get("FORGE_TRUSTED_KEYS", "").splitlines() if line.strip()]
        trusted.update(trusted_keys(extra, root, "FORGE_TRUSTED_KEYS"))
        return Remote(url, push=push, require=getattr(self.args, "require_remote", False), report=self.report,
                      workspace_dir=self.workspace.dir, trusted=trusted)

    @property
    def rules(self):
        if self._rules is None:
            from forgebuild.rules import load_rules

            self._rules = load_rules()
        return self._rules

    def resolve(self, names: list[str], use_default=False) -> list[str]:
        """Named targets; with none, `[forge] default` (when use_default) or every target."""
        groups = self.plan.groups  # a matrix's address: all its cells
        if not names:
            default = self.plan.settings.get("default") if use_default else None
            return [c for a in default for c in groups.get(a, [a])] if default else list(self.plan.order)
        found, by_name = [], {}
        for address in [*self.plan.targets, *groups]:
            by_name.setdefault(address.split(":", 1)[1], []).append(address)
        for name in names:
            if name in self.plan.targets:
                found.append(name)
            elif name in groups:
                found.extend(groups[name])
            elif ":" not in name and len(by_name.get(name, [])) == 1:
                found.extend(groups.get(by_name[name][0], by_name[name]))
            elif ":" not in name and name in by_name:
                raise UsageError(f"'{name}' is ambiguous: {', '.join(sorted(by_name[name]))}")
            else:
                hint = suggest_address(name, self.plan.targets) if ":" in name else did_you_mean(name, by_name)
                raise UsageError(f"no target '{name}' in {self.plan.display_name}{hint}")
        return found

    def decide(self, addresses, force=False, remote=True):
        """Each target's Decision. A target the local cache lacks is looked up on the remote (when one is
        configured and `remote`): `remote` state when a signed entry is there. The remote is made only on
        such a miss, so an all-fresh project (the no-op path) sends no request and imports no fsspec."""
        from forgebuild.planning.keys import decide

        return decide(self.plan, addresses, self.stat_cache, self.store.get_action, self.workspace.last_build, force,
                      self._remote_lookup if remote and self._has_remote() else None)

    def _has_remote(self) -> bool:
        """Whether a remote is named at all (read without making it)."""
        if self._remote is not False:
            return self._remote is not None
        return bool(getattr(self.args, "remote", None) or os.environ.get("FORGE_REMOTE")
                    or self.plan.settings.get("remote"))

    def _remote_lookup(self, key: str, address: str):
        remote = self.remote
        return None if remote is None else remote.lookup(key, address)

    def close(self) -> None:
        """Save the stat cache (main calls this just before the summary, and again at the end)."""
        self._save_cache(self.report, "stat cache", self.stat_cache.path, self.stat_cache.save)

    def _save_cache(self, report, what: str, path: str, save) -> None:
        """The plan and stat caches only save work: a folder that cannot be written (read-only, full) is one
        warning, never a failed `status` or no-op build."""
        try:
            save()
        except OSError as e:
            if report is not None and what not in self._warned:
                self._warned.add(what)
                report({"event": "warning", "message": f"cannot save the {what} {self.workspace.display(path)}: "
                                                       f"[Errno {e.errno}] {e.strerror} (going on without it)"})
