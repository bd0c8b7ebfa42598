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
from .base import AdapterMethod, CacheState, MethodOutput, TrainingRecipe, as_input_of, register_method

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
    a ReLU. With ``r = 0`` the logits are exactly zero-shot CLIP's. The two layers are plain `nn.Linear`s initialised
    as PyTorch does (kaiming-uniform), as in the authors' `clip_adapter.py` (`reset_own_parameters`).

    Recipe: the authors' code trains with CoOp's Dassl trainer and configs (its README: "follow CoOp's command"), i.e.
    CoOp's `configs/trainers/CoOp/rn50.yaml`: SGD(lr 2e-3, momentum 0.9, weight decay 5e-4: Dassl's defaults), cosine
    schedule, 200 epochs, batch 32. CoOp's one warm-up epoch at a constant 1e-5 is left out (no transformers schedule
    has it). docs/methods.md cites the sources.

    Args:
        config ([`XMAdapterConfig`]): reads `clip_adapter_ratio` (``r``) and `clip_adapter_reduction` (``red``).
        embed_dim (`int`): ``C``, the backbone's projection dim.
    """

    colour = "#2ca02c"  # tab10
    trainable = True
    config_fields = ClipAdapterFields
    recipe = TrainingRecipe(
        optimizer="sgd", learning_rate=2e-3, momentum=0.9, weight_decay=5e-4, epochs=200, batch_size=32
    )

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        hidden = max(1, embed_dim // config.clip_adapter_reduction)
        self.adapter = nn.Sequential(
            nn.Linear(embed_dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, embed_dim, bias=False), nn.ReLU()
        )

    def reset_own_parameters(self) -> None:
        """PyTorch's construction-time init (kaiming-uniform), the authors'; the model's `_init_weights` calls it."""
        for module in self.adapter:
            if isinstance(module, nn.Linear):
                module.reset_parameters()

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
