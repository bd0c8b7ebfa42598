"""The training loss: cross-entropy with detached per-item hard-sample weights, normalised by the item count.

``loss = sum_i(w_i * CE_i) / n_items`` with ``w_i = 1 + lambda_hard * d_i``. It is *not* renormalised by the weights:
a per-item weight divided by the number of labelled items gives the same loss and gradients whether a global
batch is split by gradient accumulation or across processes (Trainer passes ``num_items_in_batch``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "adapter_loss", "hard_sample_weights", "weighted_cross_entropy"]

#: Labels equal to this are ignored (and not counted), as in transformers.
IGNORE_INDEX = -100


def hard_sample_weights(
    logits: torch.Tensor,
    labels: torch.Tensor,
    strength: float,
    criterion: str = "disagreement",
    disagreement: torch.Tensor | None = None,
    focal_power: float = 2.0,
) -> torch.Tensor | None:
    """Per-item weights ``1 + strength * d`` (detached), or `None` when ``strength == 0``.

    Args:
        logits (`torch.Tensor` of shape `(B, N)`): final logits (used by the `focal` criterion).
        labels (`torch.LongTensor` of shape `(B,)`).
        strength (`float`): `lambda_hard`.
        criterion (`str`): `disagreement` (``d`` given by the method) or `focal` (``d = (1 - p[y]) ** k``).
        disagreement (`torch.Tensor` of shape `(B,)`, *optional*): XMAdapter's cross-modal disagreement.
        focal_power (`float`): `k`.
    """
    if strength == 0:
        return None
    if criterion == "disagreement":
        if disagreement is None:
            raise ValueError("The 'disagreement' criterion needs the method's cross-modal disagreement (XMAdapter).")
        d = disagreement
    elif criterion == "focal":
        p = torch.softmax(logits.detach().float(), dim=-1).gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
        d = (1.0 - p) ** focal_power
    else:
        raise ValueError(f"Unknown hard-sample criterion {criterion!r}; expected 'disagreement' or 'focal'.")
    return (1.0 + strength * d).detach()


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum_i(w_i * CE_i) / n_items``; ``n_items`` defaults to the number of labels that are not `IGNORE_INDEX`."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=IGNORE_INDEX)  # (B,)
    if weights is not None:
        ce = ce * weights
    if num_items is None:
        num_items = (labels != IGNORE_INDEX).sum().clamp(min=1)
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.to(ce.device)
    return ce.sum() / num_items


def adapter_loss(out, labels: torch.Tensor, config, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """The model's loss: [`weighted_cross_entropy`] of a method's output (its ``logits``, and its ``disagreement``
    for the hard-sample weights) with the config's hard-sample settings."""
    weights = hard_sample_weights(
        out.logits, labels, config.hard_sample_strength, config.hard_sample_criterion,
        out.disagreement, config.hard_sample_focal_power,
    )  # fmt: skip
    return weighted_cross_entropy(out.logits, labels, weights, num_items)
