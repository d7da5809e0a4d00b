"""ODPO (DPO with an offset) on TRL's DPOTrainer: the loss by hand, and the trainer on a tiny Llama on CPU."""
from __future__ import annotations

import copy
import math
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

import torch.nn.functional as F  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from forgebuild.rules.model.offset_dpo import ODPOTrainer, odpo_loss, odpo_offsets  # noqa: E402

torch.set_num_threads(1)
CPU = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
           disable_tqdm=True, seed=0, max_length=32)
BETA, ALPHA = 0.1, 0.5


def log_sigmoid(z: float) -> float:
    return -math.log(1.0 + math.exp(-z))


# ---- the loss as a pure function ----

def test_odpo_loss_matches_hand_computed_values():
    pc, pr = [-1.0, -2.5, -0.3], [-2.0, -1.5, -4.0]  # policy chosen / rejected
    rc, rr = [-1.5, -2.0, -0.5], [-1.8, -1.0, -3.0]  # reference chosen / rejected
    offsets = [ALPHA * math.log(0.5), ALPHA * math.log(0.2), ALPHA * math.log(3.0)]
    # pair 0: delta = (-1.0 + 1.5) - (-2.0 + 1.8) = 0.5 + 0.2 = 0.7
    # pair 1: delta = (-2.5 + 2.0) - (-1.5 + 1.0) = -0.5 + 0.5 = 0.0
    # pair 2: delta = (-0.3 + 0.5) - (-4.0 + 3.0) = 0.2 + 1.0 = 1.2
    expected = [-log_sigmoid(BETA * 0.7 - ALPHA * math.log(0.5)),
                -log_sigmoid(BETA * 0.0 - ALPHA * math.log(0.2)),
                -log_sigmoid(BETA * 1.2 - ALPHA * math.log(3.0))]
    t = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    mean, per_pair = odpo_loss(t(pc), t(pr), t(rc), t(rr), t(offsets), BETA)
    assert per_pair.tolist() == pytest.approx(expected, abs=1e-12)
    assert mean.item() == pytest.approx(sum(expected) / 3, abs=1e-12)


def test_zero_offset_is_sigmoid_dpo():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=g) * 5 for _ in range(4))
    mean, per_pair = odpo_loss(pc, pr, rc, rr, torch.zeros(16), BETA)
    dpo = -F.logsigmoid(BETA * ((pc - rc) - (pr - rr)))  # TRL's loss_type="sigmoid"
    torch.testing.assert_close(per_pair, dpo)
    torch.testing.assert_close(mean, dpo.mean())


def test_odpo_offsets():
    got = odpo_offsets([1.0, 1.0, 3.0], [0.5, 0.9, 0.0], ALPHA)
    assert got.tolist() == pytest.approx([ALPHA * math.log(0.5), ALPHA * math.log(0.1), ALPHA * math.log(3.0)],
                                         abs=1e-6)
    with pytest.raises(ValueError, match=r"\[1\]"):
        odpo_offsets([1.0, 0.5], [0.5, 0.5], ALPHA)


# ---- the trainer on a tiny model ----

def arithmetic_pairs(n=32, seed=0, score_rejected=None):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"What is {a}+{b}?", "chosen": f" {a + b}", "rejected": f" {a + b + rng.randint(1, 5)}",
                     "score_chosen": 1.0,
                     "score_rejected": rng.uniform(0.0, 0.9) if score_rejected is None else score_rejected})
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [r["prompt"] + r["chosen"] for r in arithmetic_pairs(64, seed=1)] + ["What is 12+13? 25"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_llama(tokenizer, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(cfg)


def perturbed_copy(model, seed=1):
    """A reference that differs from the policy, so the policy's log-probs don't cancel out of the loss."""
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return ref


def completion_logps(model, batch):
    """Summed log-prob of the completion tokens, from plain logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token_logps * batch["completion_mask"][:, 1:]).sum(1)


@pytest.mark.parametrize("precompute", [False, True])
def test_trainer_loss_matches_hand_computation(tokenizer, tmp_path, precompute):
    rows = arithmetic_pairs(8)
    model = tiny_llama(tokenizer)
    ref = perturbed_copy(model)
    trainer = ODPOTrainer(model=model, ref_model=ref, alpha=ALPHA, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows),
                          args=DPOConfig(output_dir=str(tmp_path), beta=BETA, per_device_train_batch_size=4,
                                         precompute_ref_log_probs=precompute, **CPU))
    # The score columns survive Trainer's column removal and reach the batch as offsets
    assert next(iter(trainer.get_train_dataloader()))["offset"].shape == (4,)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert ("ref_chosen_logps" in batch) == precompute
    loss = trainer.compute_loss(trainer.model, batch)

    with torch.no_grad():
        pol_c, pol_r = completion_logps(model, batch).double().chunk(2)
        ref_c, ref_r = completion_logps(ref, batch).double().chunk(2)
    expected = []
    for i in range(4):
        delta = (pol_c[i].item() - ref_c[i].item()) - (pol_r[i].item() - ref_r[i].item())
        offset = ALPHA * math.log(rows[i]["score_chosen"] - rows[i]["score_rejected"])
        expected.append(-log_sigmoid(BETA * delta - offset))
    assert loss.item() == pytest.approx(sum(expected) / 4, abs=1e-5)
    assert set(trainer._metrics["train"]) >= {"rewards/chosen", "rewards/rejected", "rewards/margins",
                                              "rewards/accuracies"}


def test_zero_offset_trainer_matches_trl_dpo(tokenizer, tmp_path):
    """Scores 1 and 0 give offset log(1) = 0: the loss must be TRL's own sigmoid DPO loss on the same batch."""
    rows = arithmetic_pairs(8, score_rejected=0.0)
    model = tiny_llama(tokenizer)
    ref = perturbed_copy(model)
    args = DPOConfig(output_dir=str(tmp_path), beta=BETA, per_device_train_batch_size=4, **CPU)
    odpo = ODPOTrainer(model=model, ref_model=ref, alpha=ALPHA, processing_class=tokenizer,
                       train_dataset=Dataset.from_list(rows), args=args)
    batch = odpo.data_collator([odpo.train_dataset[i] for i in range(4)])
    odpo_value = odpo.compute_loss(odpo.model, batch).item()
    dpo = DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(ref), processing_class=tokenizer,
                     train_dataset=Dataset.from_list(rows), args=args)
    dpo_batch = {k: v for k, v in batch.items() if k != "offset"}
    assert odpo_value == pytest.approx(dpo.compute_loss(dpo.model, dpo_batch).item(), abs=1e-6)


def test_odpo_and_dpo_training_diverge(tokenizer, tmp_path):
    rows = arithmetic_pairs(32)
    base = tiny_llama(tokenizer)
    args = DPOConfig(output_dir=str(tmp_path), beta=BETA, per_device_train_batch_size=8, max_steps=3,
                     learning_rate=1e-3, logging_steps=1, **CPU)
    trained = {}
    for name, cls, extra in [("odpo", ODPOTrainer, {"alpha": ALPHA}), ("dpo", DPOTrainer, {})]:
        model = copy.deepcopy(base)
        trainer = cls(model=model, ref_model=copy.deepcopy(base), processing_class=tokenizer,
                      train_dataset=Dataset.from_list(rows), args=args, **extra)
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses), (name, losses)
        trained[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    changed = [k for k in trained["odpo"] if not torch.allclose(trained["odpo"][k], trained["dpo"][k])]
    assert changed, "ODPO and DPO trained to the same weights"
    assert any(not torch.allclose(trained["odpo"][k], v) for k, v in base.state_dict().items())


def test_rejects_pair_whose_chosen_does_not_score_higher(tokenizer, tmp_path):
    rows = arithmetic_pairs(4)
    rows[2]["score_rejected"] = rows[2]["score_chosen"]
    model = tiny_llama(tokenizer)
    with pytest.raises(ValueError, match="row 2"):
        ODPOTrainer(model=model, ref_model=copy.deepcopy(model), alpha=ALPHA, processing_class=tokenizer,
                    train_dataset=Dataset.from_list(rows), args=DPOConfig(output_dir=str(tmp_path), **CPU))
