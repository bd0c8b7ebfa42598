"""Zero-shot CLIP, Tip-Adapter and Tip-Adapter-F (docs/methods.md)."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as Fn
from .base import AdapterMethod, CacheState, MethodOutput, chunked_cache_logits, register_method

__all__ = ["TipAdapter", "TipAdapterF", "ZeroShot"]


@register_method("zero-shot")
class ZeroShot(AdapterMethod):
    """Zero-shot CLIP: ``logits = s * f W^T``. Training-free; the floor every method must beat."""

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)  # (B, N)
        return MethodOutput(logits=zs, zero_shot_logits=zs)


@register_method("tip-adapter")
class TipAdapter(AdapterMethod):
    """Tip-Adapter: ``logits = s f W^T + alpha * exp(-beta (1 - f F^T)) L`` with the frozen cache keys ``F``."""

    uses_cache = True

    def keys(self, state: CacheState) -> torch.Tensor:
        return state.cache_embeds

    def image_cache_logits(self, image_embeds, state: CacheState) -> torch.Tensor:
        return chunked_cache_logits(
            image_embeds,
            self.keys(state),
            state.cache_labels,
            state.num_classes,
            self.config.sharpness,
            self.config.cache_chunk_size,
            normalize_keys=self.config.normalize_keys and self.trainable,
        )  # (B, N)

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)
        cache = self.image_cache_logits(image_embeds, state)
        logits = zs + self.config.residual_ratio * cache
        return MethodOutput(logits=logits, zero_shot_logits=zs, cache_logits=cache, image_cache_logits=cache)


@register_method("tip-adapter-f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: Tip-Adapter with learnable keys ``F`` initialised from the cache.

    Keys are not renormalised in forward (as in the official code, where they are a linear layer) unless
    `normalize_keys=True`.
    """

    trainable = True

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        self.cache_keys = nn.Parameter(torch.zeros(config.cache_size, embed_dim))

    def resize_cache(self, num_entries: int) -> None:
        if self.cache_keys.shape[0] != num_entries:
            # keep the storage dtype: after `half_cache()` an inference-only model never allocates float32 keys
            old = self.cache_keys
            keys = torch.zeros(num_entries, self.embed_dim, device=old.device, dtype=old.dtype)  # (NK, C)
            self.cache_keys = nn.Parameter(keys, requires_grad=old.requires_grad)

    def init_from_cache(self, state: CacheState) -> None:
        with torch.no_grad():
            self.cache_keys.copy_(state.cache_embeds)  # casts in place: no float32 copy of the whole cache

    def cast_cache(self, dtype: torch.dtype) -> None:
        """Float32 keys are trainable; fp16/bf16 keys are an inference-only storage and frozen."""
        if self.cache_keys.dtype != dtype:
            keys = self.cache_keys.detach().to(dtype)
            self.cache_keys = nn.Parameter(keys, requires_grad=dtype == torch.float32)

    def keys(self, state: CacheState) -> torch.Tensor:
        return self.cache_keys
