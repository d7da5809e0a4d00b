"""Checkpoint-prefix reuse in process (forgebuild/rules/model/prefix.py): the prefix identity, the store's
index of checkpoints by step, the lookup over a real store (a missing blob, a damaged entry or a member
without a memo is a miss), gc of the index, and the wsd schedule's lr before the decay."""
from __future__ import annotations

import json
import os

import pytest

from forgebuild.engine.context import BuildContext
from forgebuild.errors import StoreError
from forgebuild.rules.model import prefix
from forgebuild.rules.model.common import Train
from forgebuild.store import gc
from forgebuild.store.local import Store
from forgebuild.store.workspace import Workspace, remove_tree

IDENT = "1d" * 32
PARAMS = {"recipe": "pretrain", "arch": {"family": "llama", "hidden": 64}, "budget_tokens": None,
          "train": {"lr": 3e-3, "steps": 40, "warmup_steps": 3, "schedule": "wsd", "decay_steps": 10,
                    "decay_fraction": None, "decay_shape": None, "min_lr_rate": 0.1, "batch_size": 8}}


def ident_of(params=PARAMS, **changes) -> str:
    args = dict(kind="model", version="1/pretrain-1", seed=7, params=params, dep_digests={"corpus:c": "aa" * 32},
                file_digests={}, libraries={"torch": "2.13.0"})
    return prefix.identity(**{**args, **changes})


def with_train(**train) -> dict:
    return {**PARAMS, "train": {**PARAMS["train"], **train}}


def test_the_identity_ignores_the_length_and_the_decay_and_nothing_else():
    same = [with_train(steps=60), with_train(decay_steps=None, decay_fraction=0.3), with_train(decay_shape="1-sqrt"),
            with_train(min_lr_rate=0.0), {**PARAMS, "budget_tokens": 10_000}]
    assert {ident_of(p) for p in same} == {ident_of()}
    other = [ident_of(with_train(lr=1e-3)), ident_of(with_train(warmup_steps=4)), ident_of(with_train(batch_size=4)),
             ident_of({**PARAMS, "arch": {"family": "llama", "hidden": 32}}), ident_of(seed=8),
             ident_of(dep_digests={"corpus:c": "bb" * 32}), ident_of(file_digests={"a.txt": "cc" * 32}),
             ident_of(libraries={"torch": "2.14.0"}), ident_of(version="1/pretrain-2"), ident_of(kind="other")]
    assert len(set(other) | {ident_of()}) == len(other) + 1


def test_the_stable_end_is_the_step_the_decay_starts_after():
    assert Train(schedule="wsd", steps=40, decay_steps=10).stable_end(40) == 30
    assert Train(schedule="wsd", steps=40).stable_end(40) == 32  # the default fifth
    assert Train(schedule="wsd", steps=40, decay_fraction=0.01).stable_end(40) == 39  # at least one step decays
    assert Train(schedule="wsd", decay_steps=5).stable_end(17) == 12  # steps from budget_tokens


def context(root, target="model:a", key="ab" * 32) -> BuildContext:
    scratch = os.path.join(root, ".forge", "scratch", f"{key}.{target[-1]}")
    os.makedirs(os.path.join(scratch, "out"), exist_ok=True)
    return BuildContext(target=target, kind="model", key=key, inputs={}, out=os.path.join(scratch, "out"),
                        work=os.path.join(root, "work"), seed=1, project_dir=root, log_path=os.path.join(root, "log"),
                        raw_params={}, version="1/pretrain-1", store_root=os.path.join(root, ".forge"),
                        workspace_dir=os.path.join(root, ".forge"))


def checkpoint(root, step: int) -> str:
    folder = os.path.join(root, "ckpt", f"checkpoint-{step}")
    os.makedirs(folder, exist_ok=True)
    for name, text in (("model.safetensors", f"weights at {step}"), ("forge-complete", str(step))):
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return folder


def kept_at(root, steps, target="model:a") -> BuildContext:
    ctx = context(root, target)
    for step in steps:
        prefix.Run(IDENT, step).keep(ctx, checkpoint(root, step))
    return ctx


def test_the_longest_prefix_at_or_below_the_stable_end_is_found(tmp_path):
    root = str(tmp_path)
    kept_at(root, [10, 30])
    later = context(root, "model:b", "cd" * 32)
    found = prefix.Run(IDENT, 50).find(later)
    assert (found.step, found.key, found.target) == (30, "ab" * 32, "model:a")
    assert open(os.path.join(found.folder, "model.safetensors")).read() == "weights at 30"
    assert prefix.Run(IDENT, 29).find(later).step == 10
    assert prefix.Run(IDENT, 9).find(later) is None
    assert prefix.Run(IDENT, 50).find(later, below=30) is None  # its own checkpoint is as far
    assert prefix.Run("2e" * 32, 50).find(later) is None  # another identity


def test_keeping_a_prefix_twice_stores_it_once_and_keeps_the_first_maker(tmp_path):
    root = str(tmp_path)
    kept_at(root, [30])
    store = Store(os.path.join(root, ".forge"))
    before = sorted(store.action_keys())
    kept_at(root, [30], target="model:z")
    assert sorted(store.action_keys()) == before
    assert store.marks(IDENT)["30"]["target"] == "model:a"


def test_a_prefix_whose_blob_is_gone_or_whose_entry_is_damaged_is_a_miss(tmp_path):
    root = str(tmp_path)
    kept_at(root, [10, 30])
    store = Store(os.path.join(root, ".forge"))
    memo = store.get_mark(IDENT, "30")["memo"]
    entry = store.get_action(memo)
    remove_tree(Workspace(root, os.path.join(root, ".forge")).artifact_dir(entry["digest"]))
    store.remove_blob(entry["files"][0]["digest"])
    assert prefix.Run(IDENT, 50).find(context(root, "model:b", "cd" * 32)).step == 10
    with open(store.action_path(store.get_mark(IDENT, "10")["memo"]), "w") as f:
        f.write("{not json")
    assert prefix.Run(IDENT, 50).find(context(root, "model:c", "ef" * 32)) is None


def test_a_member_without_its_memo_is_a_miss(tmp_path):
    root = str(tmp_path)
    store = Store(os.path.join(root, ".forge"))
    store.put_mark(IDENT, "30", {"memo": "00" * 32, "key": "ab" * 32, "target": "model:a"})
    store.put_mark(IDENT, "not-a-step", {})
    assert prefix.Run(IDENT, 50).find(context(root)) is None


def test_index_members_are_named_safely_and_read_whatever_their_file_holds(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(StoreError, match="not an index name"):
        store.put_mark(IDENT, "../x", {})
    with pytest.raises(StoreError, match="not an index name"):
        store.put_mark("../" + IDENT, "30", {})
    store.put_mark(IDENT, "30", {"memo": "m"})
    store.put_mark(IDENT, "40", {"memo": "n"})
    with open(store.mark_path(IDENT, "40"), "w") as f:
        f.write("[1, 2")
    assert store.marks(IDENT) == {"30": {"memo": "m"}, "40": {}}
    assert store.marks("../etc") == {} and sorted(store.mark_paths()) == [(IDENT, "30"), (IDENT, "40")]


def test_gc_drops_a_member_with_its_memo_and_keeps_one_a_kept_build_names(tmp_path):
    root = str(tmp_path)
    kept_at(root, [10, 30])
    store, ws = Store(os.path.join(root, ".forge")), Workspace(root, os.path.join(root, ".forge"))
    memo30 = store.get_mark(IDENT, "30")["memo"]
    build = {**store.get_action(memo30), "memos": [memo30]}  # a build entry that names the 30-step checkpoint
    store.put_action("ee" * 32, build)
    stats = gc.collect(store, ws, {"model:a": "ee" * 32}, grace=0)
    assert list(store.mark_paths()) == [(IDENT, "30")] and stats["actions"] == 2  # the 10-step memo and member
    assert prefix.Run(IDENT, 50).find(context(root, "model:b", "cd" * 32)).step == 30


def test_a_restored_prefix_is_a_copy_never_a_link_and_its_marker_comes_last(tmp_path):
    src = checkpoint(str(tmp_path), 30)
    dst = str(tmp_path / "work" / "checkpoint-30")
    order = []
    real = prefix.shutil.copyfile
    prefix.shutil.copyfile = lambda a, b: order.append(os.path.basename(b)) or real(a, b)
    try:
        open(os.path.join(src, "training_args.bin"), "w").write("paths")
        prefix.copy_tree(src, dst, last="forge-complete", leave=("training_args.bin",))
    finally:
        prefix.shutil.copyfile = real
    assert order == ["model.safetensors", "forge-complete"]  # and not the arguments left out
    for name in order:
        assert not os.path.samefile(os.path.join(src, name), os.path.join(dst, name))


def test_the_wsd_lr_before_the_decay_does_not_depend_on_the_length():
    import torch
    from transformers import get_scheduler

    from forgebuild.rules.model.training import schedule_args

    def lrs(steps: int) -> list[float]:
        t = Train(lr=1.0, schedule="wsd", steps=steps, warmup_steps=3, decay_steps=10)
        args = schedule_args(t, steps)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = get_scheduler(args["lr_scheduler_type"], optimizer, num_warmup_steps=3, num_training_steps=steps,
                                  scheduler_specific_kwargs=args["lr_scheduler_kwargs"])
        found = []
        for _ in range(steps):
            found.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return found

    short, long = lrs(40), lrs(60)
    assert short[:31] == long[:31] and short[3:31] == [1.0] * 28  # the stable end (30) included
    assert short[-1] < 0.2 and long[-1] < 0.2 and long[40] == 1.0
    assert json.dumps(schedule_args(Train(schedule="wsd", steps=40), 40)["lr_scheduler_kwargs"], sort_keys=True) == (
        '{"decay_type": "linear", "min_lr_ratio": 0.1, "num_decay_steps": 8}')


def test_a_checkpoint_stored_but_never_listed_is_listed_by_the_next_attempt(tmp_path):
    """A build killed between storing its stable checkpoint and listing it: the next attempt of the same
    key finds the memo already stored and lists it (at its stable end, or at the end of the build)."""
    root = str(tmp_path)
    kept_at(root, [30])
    store = Store(os.path.join(root, ".forge"))
    store.remove_mark(IDENT, "30")
    prefix.Run(IDENT, 30).note(context(root))
    assert store.get_mark(IDENT, "30")["target"] == "model:a"
    store.remove_mark(IDENT, "30")
    kept_at(root, [30])
    assert prefix.Run(IDENT, 50).find(context(root, "model:b", "cd" * 32)).step == 30
