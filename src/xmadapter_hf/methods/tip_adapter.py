"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022; docs/methods.md)."""

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict, validated_field
from torch import nn

from .. import functional as Fn
from ..validation import in_interval
from . import cache
from .base import AdapterMethod, CacheState, CacheTerm, MethodOutput, SearchSpace, TrainingRecipe, register_method

__all__ = ["MAX_SHARPNESS", "TipAdapter", "TipAdapterF", "TipAdapterFFields", "TipAdapterFields"]

#: Sharpness above this makes exp(-beta * (1 - cos)) underflow to 0 in float32 for dissimilar entries.
MAX_SHARPNESS = 100.0


def sharpness_validator(name: str):
    """A sharpness lies in (0, MAX_SHARPNESS]."""
    return in_interval(name, 0.0, MAX_SHARPNESS, low_open=True)


@strict
@dataclass(kw_only=True)
class TipAdapterFields:
    r"""Tip-Adapter's fields of [`XMAdapterConfig`].

    Args:
        residual_ratio (`float`, *optional*, defaults to 1.0):
            `alpha`, the weight of the cache logits: `logits = zero_shot + alpha * A L`. Searched on validation.
        sharpness (`float`, *optional*, defaults to 1.0):
            `beta`, the image cache's sharpness in `exp(-beta * (1 - f F^T))`, in (0, 100]. Searched on validation.
    """

    residual_ratio: int | float = validated_field(
        in_interval("residual_ratio", 0.0, float("inf"), high_open=True), default=1.0, metadata={"symbol": "alpha"}
    )
    sharpness: int | float = validated_field(
        sharpness_validator("sharpness"), default=1.0, metadata={"symbol": "beta"}
    )


@strict
@dataclass(kw_only=True)
class TipAdapterFFields(TipAdapterFields):
    r"""Tip-Adapter-F's fields of [`XMAdapterConfig`]: Tip-Adapter's, and

    Args:
        normalize_keys (`bool`, *optional*, defaults to `False`):
            Renormalise the learned cache keys in forward. The reference code does not (its keys are a linear layer),
            so affinities may exceed 1 after training; `True` keeps them in (0, 1].
    """

    normalize_keys: bool = False


@register_method("tip-adapter")
class TipAdapter(AdapterMethod):
    """Tip-Adapter: ``logits = s f W^T + alpha * exp(-beta (1 - f F^T)) L`` with the frozen cache keys ``F = E``."""

    colour = "#1f77b4"  # tab10
    uses_cache = True
    config_fields = TipAdapterFields

    def keys(self, state: CacheState) -> torch.Tensor:
        """The image cache's keys `(NK, C)` (as stored: renormalised in the maths when `normalize_keys`)."""
        return state.cache_embeds

    @property
    def normalizes_keys(self) -> bool:
        return False

    def image_cache_logits(self, image_embeds: torch.Tensor, state: CacheState) -> torch.Tensor:
        """``A_img L``, `(B, C)` -> `(B, N)`."""
        return cache.cache_logits(
            image_embeds, self.keys(state), state.cache_labels, state.num_classes, self.config.sharpness,
            self.config.cache_chunk_size, shots=state.shots, normalize_keys=self.normalizes_keys,
        )  # fmt: skip

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)  # (B, N)
        image_cache = self.image_cache_logits(image_embeds, state)  # (B, N)
        logits = zs + self.config.residual_ratio * image_cache
        return MethodOutput(
            logits=logits, zero_shot_logits=zs, cache_logits=image_cache, image_cache_logits=image_cache
        )

    def logit_parts(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        """Zero-shot and ``alpha * A L`` (the image cache)."""
        alpha = self.config.residual_ratio
        return {"zero_shot": output.zero_shot_logits.float(), "image_cache": alpha * output.cache_logits.float()}

    def image_cosines(self, image_embeds: torch.Tensor, state: CacheState) -> torch.Tensor:
        """Cosines `(M, NK)` of normalised embeddings with the image keys, float32 (for the search)."""
        keys = self.keys(state).float()
        if self.normalizes_keys:
            keys = Fn.l2_normalize(keys)
        with Fn.full_precision(image_embeds):
            return image_embeds.float() @ keys.t()

    @classmethod
    def searched_fields(cls, config) -> tuple[str, ...]:
        return ("residual_ratio", "sharpness")

    def search_space(self, image_embeds: torch.Tensor, state: CacheState) -> SearchSpace:
        """The residual ratio and the image cache's sharpness."""
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)
        term = CacheTerm(self.image_cosines(image_embeds, state), "sharpness")
        return SearchSpace(zs, state.cache_labels, [term], shots=state.shots)


@register_method("tip-adapter-f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: Tip-Adapter with learnable keys ``F`` initialised from the cache.

    Keys are not renormalised in forward (as in the official code, where they are a linear layer) unless
    `normalize_keys=True`. Recipe: the official code's AdamW(lr 1e-3, eps 1e-4), cosine schedule, 20 epochs, batch
    256 (with at least 8 steps per epoch, see docs/training.md).
    """

    colour = "#ff7f0e"  # tab10
    trainable = True
    config_fields = TipAdapterFFields
    recipe = TrainingRecipe(dataset_defaults=True)  # data.defaults' epochs and learning rates are Tip-Adapter-F's
    cache_parameters = ("cache_keys",)

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        self.cache_keys = nn.Parameter(torch.zeros(config.cache_size, embed_dim))  # F, (NK, C)

    def keys(self, state: CacheState) -> torch.Tensor:
        return self.cache_keys

    @property
    def normalizes_keys(self) -> bool:
        return self.config.normalize_keys
