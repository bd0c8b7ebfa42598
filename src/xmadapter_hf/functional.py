"""Pure tensor functions for the formulas of docs/methods.md (the cache term ``A L`` is `methods/cache.py`).

The method modules are thin layers over these functions, so the tests can compare each of them with the
formula on random tensors. All affinity maths runs in float32, whatever dtype the inputs come in, and also under
`torch.autocast` (bf16/fp16 mixed precision), which would otherwise run the cosine matmuls in half precision: an error
of 0.4% in a cosine of 0.97 becomes an error of about 20% in ``exp(-beta * (1 - cos))`` at beta = 50.

Notation (docs/methods.md): ``f`` query embeddings (B, C), ``W`` class text embeddings (N, C), ``s`` the logit
scale.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

__all__ = [
    "full_precision",
    "fuse_affinities",
    "l2_normalize",
    "template_ensemble",
    "zero_shot_logits",
]


def full_precision(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context that turns `torch.autocast` off on ``tensor``'s device, so that its maths runs in float32."""
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Divides ``x`` by its L2 norm along ``dim`` (float32 for half inputs)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return F.normalize(x, dim=dim)


def template_ensemble(text_embeds: torch.Tensor) -> torch.Tensor:
    """Class weights from per-template text embeddings: normalise, average over templates, renormalise.

    Args:
        text_embeds (`torch.Tensor` of shape `(N, T, C)`): raw text embeddings, T templates per class.

    Returns:
        `torch.Tensor` of shape `(N, C)`: the L2-normalised class weights ``W``.
    """
    return l2_normalize(l2_normalize(text_embeds).mean(dim=1))  # (N, T, C) -> (N, C)


def zero_shot_logits(
    image_embeds: torch.Tensor, class_weights: torch.Tensor, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """``s * f W^T`` with ``f`` and ``W`` already normalised. (B, C) @ (C, N) -> (B, N), float32 under autocast too.

    ``s`` may be a 0-dim tensor (the backbone's, read without a host synchronisation)."""
    with full_precision(image_embeds):
        return logit_scale * image_embeds.float() @ class_weights.float().t()


def fuse_affinities(image_affinity: torch.Tensor, text_affinity: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """XMAdapter's fused affinity ``gamma * A_img + (1 - gamma) * A_txt``; ``ratio`` broadcasts (scalar or (B, 1))."""
    return ratio * image_affinity + (1.0 - ratio) * text_affinity
