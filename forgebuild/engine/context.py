"""What a rule's build() gets: resolved inputs, validated params, folders, seed, a log."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from forgebuild.engine.launcher import marker, run_logged
from forgebuild.engine.scratch import (MEMO_DIR, Lines, add_metrics, read_context, read_failure, write_context,
                                       write_verdict)
from forgebuild.errors import BadInput, RuleFailed


@dataclass
class BuildContext:
    target: str
    kind: str
    key: str  # the action key being built
    inputs: dict  # Forgefile key path -> path (str) or paths (list), as the command sees them
    out: str  # fresh, empty output folder: everything written here is the artifact
    work: str  # kept across failed or killed runs of the same action key
    seed: int
    project_dir: str  # commands run here
    log_path: str
    raw_params: dict  # validated params, runtime ones included, as JSON
    version: str = ""  # the rule's version
    sources: dict = field(default_factory=dict)  # key path -> [{spec, kind, path, files, address?, digest?}]
    digests: dict = field(default_factory=dict)  # project-relative source path -> content digest
    dep_digests: dict = field(default_factory=dict)  # dependency address -> output digest
    store_root: str = ""
    workspace_dir: str = ""
    params: object = None  # the rule's Params instance

    def log(self, message: str) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(message.rstrip("\n") + "\n")

    def failure(self, message: str) -> RuleFailed:
        return RuleFailed(self.target, message)

    def bad_input(self, message: str) -> RuleFailed:
        """For data the user must fix (name the file, line and field): the build exits 2."""
        return BadInput(self.target, message)

    @property
    def scratch_dir(self) -> str:
        """The folder of this attempt's messages to the executor (scratch.py), the output's parent."""
        return os.path.dirname(self.out)

    def run_command(self, argv, shell=False, env=None, timeout=None) -> int:
        """The launcher's `run_logged`, in the project folder, output to the stage log, tagged with the build."""
        return run_logged(argv, self.log_path, self.project_dir, env=env, shell=shell, timeout=timeout,
                          key=marker(self.key, self.workspace_dir))

    def memo(self, name: str, material: dict, produce=None) -> str | None:
        """A cached sub-step: `produce(folder)` runs only if no earlier build made the same thing.

        The result is stored like an artifact (content-addressed, atomic), keyed by
        the rule, its version, `name` and `material` (which must name everything the
        step reads, e.g. a source file's digest and the params it uses), and
        returned as a read-only folder. A corpus processes each source file this
        way, so adding one file to a thousand processes one file. Without
        `produce` it only looks: None when no earlier build made it.
        """
        found = self.recall(name, [material])[0]
        if found is None and produce is not None:
            found = self.keep(name, [material], produce)
        return found

    def recall(self, name: str, materials: list[dict]) -> list[str | None]:
        """For each material, the read-only folder of an earlier result of step `name` that holds its
        item (see `keep`), or None. Items kept together come back as one folder, materialised once."""
        store, ws = self._store_and_workspace()
        found, folders = [], {}
        for material in materials:
            key = self._memo_key(name, material)
            entry = store.get_action(key, f"{self.target} ({name})")
            if entry is not None and entry["digest"] not in folders:
                folders[entry["digest"]] = self._handed_folder(key, name, entry)
            folder = folders.get(entry["digest"]) if entry is not None else None
            if folder is not None:
                self._lines().memo(key)  # the build's cache entry lists them, so gc keeps them
            found.append(folder)
        return found

    def keep(self, name: str, materials: list[dict], produce) -> str:
        """Store one result of step `name` that holds several items (a batch of generated samples):
        `produce(folder)` writes it once, and each material's key names it, so a later build finds
        every item alone with `recall`, whatever batch it was made in. Its read-only folder."""
        store, _ = self._store_and_workspace()
        keys = [self._memo_key(name, m) for m in materials]
        # Under the scratch folder, removed with it when the build ends: one rmdir per
        # step costs ~2.5 ms on this disk, seconds for a thousand-file corpus.
        folder = os.path.join(self.scratch_dir, MEMO_DIR, keys[0])
        if os.path.exists(folder):
            from forgebuild.store.workspace import remove_tree

            remove_tree(folder)
        os.makedirs(folder)
        produce(folder)
        tree = store.ingest_tree(folder)
        for key in keys:  # one small entry per item, all naming the same tree (stored once)
            store.put_action(key, {**tree, "target": self.target, "key": key, "memo": name})
            self._lines().memo(key)
        return self._handed_folder(keys[0], name, {**tree, "key": keys[0]})

    def mark(self, group: str, member: str, name: str, material: dict, about: dict) -> None:
        """List step `name`'s result for `material` in an index `group` as `member`, with `about` (who made
        it): a later build that cannot name the material whole (the longest checkpoint prefix of a run,
        at a step it does not know) finds it with `marked`. One small file per member, written whole."""
        store, _ = self._store_and_workspace()
        store.put_mark(group, member, {**about, "memo": self._memo_key(name, material)})

    def marked(self, group: str) -> dict[str, dict]:
        """The members of index `group` and what `mark` said of each. A listing, not a promise: `recall`
        (or `memo` without produce) says whether a member's result is still whole in the store."""
        store, _ = self._store_and_workspace()
        return store.marks(group)

    def _memo_key(self, name: str, material: dict) -> str:
        from forgebuild.planning.keys import action_key

        return action_key({"memo": name, "rule": self.kind, "version": self.version, "material": material})

    def _handed_folder(self, key: str, name: str, entry: dict) -> str | None:
        """The result's folder, its files noted as handed to the rule; None when a blob of it is gone
        (another item's result was found damaged and dropped): the item is made again."""
        from forgebuild.errors import StoreError

        store, ws = self._store_and_workspace()
        try:
            folder = ws.artifact(entry, store, self.target)
        except StoreError:
            return None
        self._hand_over(key, name, entry, folder)
        return folder

    def _hand_over(self, key: str, name: str, entry: dict, folder: str) -> None:
        """Note each file of a step's result as the rule gets it (a hardlink of a blob): the executor
        checks after the stage that none changed (guard.py)."""
        lines = self._lines()
        for item in entry["files"]:
            st = os.stat(os.path.join(folder, *item["path"].split("/")))
            lines.handed(key, name, entry["digest"], item["path"], item["digest"],
                         [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])

    def _lines(self) -> Lines:
        if getattr(self, "_appends", None) is None:
            self._appends = Lines(self.scratch_dir)
        return self._appends

    def place(self, cached_file: str, rel: str) -> None:
        """Put a file from a memo folder or an input into the output at `rel`: a reflink where the
        filesystem has them, else a copy, never a hardlink. The build may go on writing its output
        (release writes its README.md over the model's), and through a hardlink that write would
        change the stored blob. The file is still stored once: ingesting finds its blob present."""
        from forgebuild.store.workspace import clone_file

        dst = os.path.join(self.out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        clone_file(cached_file, dst, link=False)

    def __getstate__(self):
        """For a rule's process pool: an open log handle does not cross processes."""
        state = dict(self.__dict__)
        state.pop("_appends", None)
        return state

    def _store_and_workspace(self):
        if getattr(self, "_stores", None) is None:
            from forgebuild.store.local import Store
            from forgebuild.store.workspace import Workspace

            self._stores = Store(self.store_root), Workspace(self.project_dir, self.workspace_dir)
        return self._stores

    def verdict(self, message: str) -> None:
        """Fail the build, but keep the artifact: it is stored and cached like any other, and the
        target reports this failure (exit 1) whenever it is asked for, without rebuilding. For an
        eval whose gates fail: the report is the evidence, and re-evaluating would say the same."""
        write_verdict(self.scratch_dir, message)

    def metrics(self, values: dict) -> None:
        """Measurements of this build (tokens/s, losses, scores) for its build record.

        Timings must not go into the artifact: they would change its digest on
        every build. The record keeps them; `show`, `log --json` and the
        `built` event report them. Later calls update earlier keys.
        """
        add_metrics(self.scratch_dir, values)

    def process_failure(self) -> str | None:
        """What a build process of this context wrote as its failure, as the worker prints it: a
        launcher's processes run the worker again, in this scratch folder. None if none did."""
        found = read_failure(self.scratch_dir)
        return None if found is None else str(found)

    def save(self) -> str:
        """context.json for a worker, in the scratch folder; its path."""
        fields = asdict(self)
        fields.pop("params")
        return write_context(self.scratch_dir, fields)

    @classmethod
    def load(cls, path: str) -> "BuildContext":
        return cls(**read_context(path))
