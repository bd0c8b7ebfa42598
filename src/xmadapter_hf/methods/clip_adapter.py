"""CLIP-Adapter (Gao et al., 2021; docs/methods.md): a residual bottleneck MLP on the image embedding.

Everything CLIP-Adapter is lives in this file: its config fields, its module, its training recipe. It has no cache
term, so it declares no search space (the validation search has nothing to tune for it).
"""

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict, validated_field
from torch import nn

from .. import functional as Fn
from ..validation import at_least, in_interval
from .base import AdapterMethod, CacheState, MethodOutput, TrainingRecipe, adapter_linear, as_input_of, register_method

__all__ = ["ClipAdapter", "ClipAdapterFields"]


@strict
@dataclass(kw_only=True)
class ClipAdapterFields:
    r"""CLIP-Adapter's fields of [`XMAdapterConfig`].

    Args:
        clip_adapter_ratio (`float`, *optional*, defaults to 0.2):
            `r`, the residual blend `f' = r * MLP(f) + (1 - r) * f`, in [0, 1] (0.6 on ImageNet in the paper).
        clip_adapter_reduction (`int`, *optional*, defaults to 4):
            The bottleneck `C -> C / reduction -> C`.
    """

    clip_adapter_ratio: int | float = validated_field(
        in_interval("clip_adapter_ratio", 0.0, 1.0), default=0.2, metadata={"symbol": "r"}
    )
    clip_adapter_reduction: int = validated_field(at_least("clip_adapter_reduction", 1), default=4)


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

    Recipe: AdamW(lr 1e-3, eps 1e-4, weight decay 0.01), cosine schedule, 20 epochs, batch 256 (Tip-Adapter-F's;
    docs/methods.md says what of the authors' recipe could be found).

    Args:
        config ([`XMAdapterConfig`]): reads `clip_adapter_ratio` (``r``) and `clip_adapter_reduction` (``red``).
        embed_dim (`int`): ``C``, the backbone's projection dim.
    """

    trainable = True
    config_fields = ClipAdapterFields
    recipe = TrainingRecipe()

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
