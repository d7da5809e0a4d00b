"""Checkpoint-prefix reuse: a warmup-stable-decay run resumes from the stable phase of an earlier one.

Under `train.schedule = "wsd"` the learning rate at a step before the decay does not depend on how
long the run is, and neither do the initial weights or the data order (the sampler's order of an
epoch follows the seed, not max_steps). Two runs whose action material differs only in the length
(`train.steps`, `budget_tokens`) and the decay (`decay_steps`, `decay_fraction`, `decay_shape`,
`min_lr_rate`: the floor it falls to) therefore train the same steps up to the earlier one's decay.
The material without those keys is the run's *prefix identity*.

A wsd build keeps the checkpoint at the end of its stable phase (step steps - decay, the resume
path's full state: weights, optimizer, scheduler, RNG states, data position) as a memo of its build,
keyed by (identity, step), and lists it in the store's index of the identity under its step. A
later build of the identity lists the index, takes the highest step at or below its own stable end
whose memo is still whole in the store (a member gc removed, or whose blob is gone, is a miss),
copies it into its work folder and resumes there (training.train). Gc keeps a checkpoint as long as
a kept build names it: the one that made it, or one that resumed from it.

Torch-free: the identity and the lookup are plain data and the context's memo calls.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass

from forgebuild.errors import ForgeError
from forgebuild.hashing import bytes_digest

MEMO = "stable-checkpoint"
# The pickled TrainingArguments a checkpoint holds: the saver's absolute work folder among them, and a
# resume never reads it (the resuming run has arguments of its own). Not kept.
LEFT_OUT = ("training_args.bin",)
# The keys two runs sharing a prefix may differ in: the length of the run, and its decay.
LENGTH_KEYS = ("budget_tokens",)
TRAIN_KEYS = ("steps", "decay_steps", "decay_fraction", "decay_shape", "min_lr_rate")


def identity(kind: str, version: str, seed: int, params: dict, dep_digests: dict, file_digests: dict,
             libraries: dict) -> str:
    """The digest of a build's material less its length and decay (`params`: its identity params)."""
    shared = {k: v for k, v in params.items() if k not in LENGTH_KEYS}
    shared["train"] = {k: v for k, v in params["train"].items() if k not in TRAIN_KEYS}
    material = {"rule": kind, "version": version, "seed": seed, "params": shared,
                "inputs": dep_digests, "files": file_digests, "libraries": libraries}
    return bytes_digest(json.dumps(material, sort_keys=True, separators=(",", ":")).encode())


def material(ident: str, step: int) -> dict:
    """What names one stored checkpoint (the memo's material)."""
    return {"identity": ident, "step": step}


@dataclass(frozen=True)
class Prefix:
    """One stored checkpoint of an identity, as a build found it."""
    step: int
    folder: str  # read-only: the store's files, never written to
    key: str  # the action key of the build that kept it
    target: str  # and its target


@dataclass(frozen=True)
class Run:
    """A wsd run's part in prefix reuse: its identity and where its stable phase ends."""
    ident: str
    stable_end: int

    def find(self, ctx, below: int = 0) -> Prefix | None:
        """The longest stored prefix of this identity at a step in (below, stable_end], or None."""
        listed = ctx.marked(self.ident)
        steps = sorted((int(m) for m in listed if m.isdigit() and below < int(m) <= self.stable_end), reverse=True)
        for step in steps:
            try:
                folder = ctx.memo(MEMO, material(self.ident, step))
            except ForgeError:  # a damaged cache entry: a miss like any other
                folder = None
            if folder is not None:
                about = listed[str(step)]
                return Prefix(step, folder, str(about.get("key", "?")), str(about.get("target", "?")))
        return None

    def keep(self, ctx, checkpoint: str) -> None:
        """Store the checkpoint folder at the stable end (unless an earlier build did) and list it."""
        step_material = material(self.ident, self.stable_end)
        if ctx.memo(MEMO, step_material) is None:
            ctx.keep(MEMO, [step_material], lambda out: copy_tree(checkpoint, out, leave=LEFT_OUT))
        self._list(ctx)

    def note(self, ctx) -> None:
        """At the end of the build: name this run's own stable checkpoint in the build's memos when it is
        stored (gc keeps it with the build), and list it if it is not, whichever attempt of the build kept
        it (one killed between storing and listing it, or one that resumed past it)."""
        try:
            if ctx.memo(MEMO, material(self.ident, self.stable_end)) is not None:
                self._list(ctx)
        except ForgeError:
            pass

    def _list(self, ctx) -> None:
        if str(self.stable_end) not in ctx.marked(self.ident):
            ctx.mark(self.ident, str(self.stable_end), MEMO, material(self.ident, self.stable_end),
                     {"key": ctx.key, "target": ctx.target})


def copy_tree(src: str, dst: str, last: str | None = None, leave: tuple[str, ...] = ()) -> None:
    """Copy every file of `src` but those named in `leave` into `dst` (plain copies: nothing links to
    the source), `last` after all the others (a marker that says the folder is whole)."""
    names = []
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        names += [os.path.normpath(os.path.join(rel, name)) for name in files if name not in leave]
    for rel in sorted(names, key=lambda name: name == last):
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), target)
