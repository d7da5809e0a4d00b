"""ODPO: Direct Preference Optimization with an Offset (Amini, Vieira & Cotterell, 2024).

DPO asks the policy to prefer the chosen completion by any margin. ODPO asks for a margin that grows with
how much better the chosen completion scored:

    L = -log sigmoid(beta * ((logpi(y_w) - logref(y_w)) - (logpi(y_l) - logref(y_l))) - offset)
    offset = alpha * log(score_chosen - score_rejected)

with log-probabilities summed over completion tokens. With offset 0 this is TRL's ``sigmoid`` DPO loss.

This module imports torch and trl at the top: it is imported only inside a build process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import DPOTrainer

SCORE_COLUMNS = ("score_chosen", "score_rejected")


def odpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
              offsets: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mean loss, per-pair losses); every argument but ``beta`` has shape (pairs,)."""
    delta = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    offsets = torch.as_tensor(offsets, dtype=delta.dtype, device=delta.device)
    losses = -F.logsigmoid(beta * delta - offsets)
    return losses.mean(), losses


def odpo_offsets(score_chosen: torch.Tensor | Sequence[float], score_rejected: torch.Tensor | Sequence[float],
                 alpha: float) -> torch.Tensor:
    """``alpha * log(score_chosen - score_rejected)`` per pair, as float32; every difference must be > 0."""
    # float64 so that a small score difference does not round to 0 before the log
    diff = torch.as_tensor(score_chosen, dtype=torch.float64) - torch.as_tensor(score_rejected, dtype=torch.float64)
    bad = (~(diff > 0)).nonzero().flatten().tolist()  # `~(> 0)` also catches NaN
    if bad:
        raise ValueError(f"ODPO needs score_chosen > score_rejected; not so for pair(s) {bad[:10]} of the batch")
    return (alpha * torch.log(diff)).float()


@dataclass
class OffsetCollator:
    """Wraps a preference collator: the batch it returns also carries ``offset``, one value per pair."""

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    alpha: float

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)  # TRL's collator ignores keys it does not know, the scores included
        batch["offset"] = odpo_offsets([e["score_chosen"] for e in examples],
                                       [e["score_rejected"] for e in examples], self.alpha)
        return batch


class ODPOTrainer(DPOTrainer):
    """``trl.DPOTrainer`` with the ODPO loss. Takes DPOTrainer's arguments plus ``alpha``; the datasets need
    ``score_chosen`` and ``score_rejected`` columns. Reference log-probs come from TRL (reference model, PEFT
    adapter disabled, or ``precompute_ref_log_probs``)."""

    _NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", "offset"}

    def __init__(self, *args, alpha: float = 1.0, **kwargs):
        self.alpha = float(alpha)
        super().__init__(*args, **kwargs)
        # These DPOConfig options change the loss or the log-probs in ways ODPO does not define; refuse them
        # rather than silently ignore them.
        unsupported = {"loss_type": self.loss_types != ["sigmoid"], "ld_alpha": self.ld_alpha is not None,
                       "f_divergence_type": self.f_divergence_type != "reverse_kl",
                       "use_weighting": self.use_weighting}
        if any(unsupported.values()):
            raise ValueError(f"ODPOTrainer does not support DPOConfig {[k for k, v in unsupported.items() if v]}")
        # Wrapped only now: DPOTrainer builds its default collator inside __init__ and the reference precompute
        # there needs no offsets.
        self.data_collator = OffsetCollator(self.data_collator, self.alpha)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Check the scores up front so the error names the dataset row, not a position in some batch. An
        # IterableDataset can't be scanned here; the collator checks its batches instead.
        if isinstance(dataset, Dataset):
            missing = [c for c in SCORE_COLUMNS if c not in dataset.column_names]
            if missing:
                raise ValueError(f"ODPO {dataset_name} dataset lacks column(s) {missing}")
            for row, (c, r) in enumerate(zip(dataset["score_chosen"], dataset["score_rejected"])):
                if not c > r:
                    raise ValueError(f"ODPO {dataset_name} dataset row {row}: score_chosen ({c}) must be greater "
                                     f"than score_rejected ({r})")
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        # Trainer drops every column outside the signature before collation (remove_unused_columns=True)
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *SCORE_COLUMNS]

    def compute_ref_log_probs(self, model, inputs):
        # TRL forwards every batch key it doesn't know to the model, so keep `offset` away from it
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != "offset"})

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in self._NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        # The batch is [chosen rows; rejected rows]. TRL's fused LM head returns the log-prob of each next token
        # (shifted by one) and 0 where the label is -100, so a sum over the sequence is the completion log-prob.
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # Prompt-learning PEFT prepends virtual tokens; keep the positions of the real ones
        logps = outputs.log_probs[:, -(completion_mask.size(1) - 1):].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)

        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(self.ref_model or self.model, inputs)

        loss, _ = odpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
                            inputs["offset"], self.beta)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        # The subset of DPOTrainer's metrics that costs no extra forward
        chosen_rewards = self.beta * (chosen_logps - ref_chosen_logps).detach()
        rejected_rewards = self.beta * (rejected_logps - ref_rejected_logps).detach()
        gather = self.accelerator.gather_for_metrics
        metrics = {"rewards/chosen": chosen_rewards, "rewards/rejected": rejected_rewards,
                   "rewards/margins": chosen_rewards - rejected_rewards,
                   "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                   "logps/chosen": chosen_logps.detach(), "logps/rejected": rejected_logps.detach(),
                   "offset": inputs["offset"].float()}
        for name, value in metrics.items():
            self._metrics[mode][name].append(gather(value).mean().item())

        if return_outputs:
            # The fused head builds no logits; prediction_step wants them, so run a plain forward (as TRL does)
            with torch.no_grad():
                outputs = model(**{k: v for k, v in model_kwargs.items() if k != "output_router_logits"})
            return loss, outputs
        return loss
