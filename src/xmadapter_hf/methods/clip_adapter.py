"""CLIP-Adapter (Gao et al., 2021; docs/methods.md): a residual bottleneck MLP on the image embedding."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as Fn
from .base import AdapterMethod, CacheState, MethodOutput, adapter_linear, as_input_of, register_method

__all__ = ["ClipAdapter"]


@register_method("clip-adapter")
class ClipAdapter(AdapterMethod):
    r"""CLIP-Adapter: a residual bottleneck MLP on the image embedding, then zero-shot style logits.

    ```
    MLP(f)  = ReLU(ReLU(f A^T) B^T)                  # A: (C/red, C), B: (C, C/red), no biases
    f'      = r * MLP(f) + (1 - r) * f               # r = clip_adapter_ratio
    logits  = s * normalise(f') W^T
    ```
    As in Gao et al.'s code, the adapted feature is renormalised before the product with ``W`` and the MLP ends with
    a ReLU. With ``r = 0`` the logits are exactly zero-shot CLIP's. The two layers are `adapter_linear`s, so the
    model initialises them with normal(0, 0.02): a zero layer would leave the other one without gradient.

    Args:
        config ([`XMAdapterConfig`]): reads `clip_adapter_ratio` (``r``) and `clip_adapter_reduction` (``red``).
        embed_dim (`int`): ``C``, the backbone's projection dim.
    """

    trainable = True

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        hidden = max(1, embed_dim // config.clip_adapter_reduction)
        self.adapter = nn.Sequential(
            adapter_linear(embed_dim, hidden, bias=False),
            nn.ReLU(),
            adapter_linear(hidden, embed_dim, bias=False),
            nn.ReLU(),
        )

    def adapt(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``normalise(r * MLP(f) + (1 - r) * f)``, (B, C) -> (B, C)."""
        ratio = self.config.clip_adapter_ratio
        image = image_embeds.float()  # (B, C)
        adapted = self.adapter(as_input_of(self.adapter, image)).float()  # the MLP in its weights' dtype
        return Fn.l2_normalize(ratio * adapted + (1.0 - ratio) * image)  # (B, C)

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)  # (B, N)
        logits = Fn.zero_shot_logits(self.adapt(image_embeds), state.class_embeds, state.logit_scale)  # (B, N)
        return MethodOutput(logits=logits, zero_shot_logits=zs)
