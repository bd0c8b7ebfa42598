"""The method registry and what every method shares: the cache state it reads and the output it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .. import functional as Fn
from ..configuration_xmadapter import XMAdapterConfig

__all__ = [
    "AdapterMethod",
    "CacheState",
    "MethodOutput",
    "adapter_linear",
    "as_input_of",
    "chunked_cache_logits",
    "get_method_class",
    "register_method",
    "registered_methods",
]

_REGISTRY: dict[str, type[AdapterMethod]] = {}


def register_method(name: str):
    """Class decorator registering an [`AdapterMethod`] under ``name`` (a value of `config.method`)."""

    def wrap(cls: type[AdapterMethod]) -> type[AdapterMethod]:
        if name in _REGISTRY:
            raise ValueError(f"A method named {name!r} is already registered ({_REGISTRY[name].__name__}).")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_method_class(name: str) -> type[AdapterMethod]:
    """The class registered under ``name``; `ValueError` naming the registered methods otherwise."""
    if name not in _REGISTRY:
        raise ValueError(
            f"`method` must be a registered method ({', '.join(sorted(_REGISTRY))}); got {name!r}. A method of your "
            "own must be registered with `xmadapter_hf.register_method` (its module imported) before the config."
        )
    return _REGISTRY[name]


def registered_methods() -> list[str]:
    """The names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def adapter_linear(in_features: int, out_features: int, bias: bool = True, zero_init: bool = False) -> nn.Linear:
    """A `nn.Linear` that the model's `_init_weights` initialises (normal(0, 0.02), or zeros when ``zero_init``)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer._xmadapter_init = "zeros" if zero_init else "normal"
    return layer


def as_input_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s weights: a layer runs in the dtype it is given (bf16 after
    `model.to(torch.bfloat16)`), while the affinity maths around it stays float32."""
    weight = next(module.parameters(), None)
    return x if weight is None else x.to(weight.dtype)


@dataclass
class CacheState:
    """The frozen tensors a method reads (all owned by the model as buffers).

    Attributes:
        class_embeds (`torch.Tensor` of shape `(N, C)`): normalised class text embeddings `W`.
        cache_embeds (`torch.Tensor` of shape `(NK, C)`): the initial normalised cache embeddings `E` (Tip-Adapter's
            keys; XMAdapter's text keys are built from them). Possibly stored in half precision.
        cache_labels (`torch.LongTensor` of shape `(NK,)`): the class of each cache entry.
        logit_scale (`float` or 0-dim `torch.Tensor`): `s` (a tensor when read from the backbone, so that forward
            never synchronises with the device to read it).
    """

    class_embeds: torch.Tensor
    cache_embeds: torch.Tensor
    cache_labels: torch.Tensor
    logit_scale: float | torch.Tensor

    @property
    def num_classes(self) -> int:
        return self.class_embeds.shape[0]


@dataclass
class MethodOutput:
    """What a method returns; the model wraps it into [`XMAdapterImageClassifierOutput`]."""

    logits: torch.Tensor
    zero_shot_logits: torch.Tensor
    cache_logits: torch.Tensor | None = None
    image_cache_logits: torch.Tensor | None = None
    text_cache_logits: torch.Tensor | None = None
    affinity_ratio: torch.Tensor | None = None
    disagreement: torch.Tensor | None = None


def chunked_cache_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    cache_labels: torch.Tensor,
    num_classes: int,
    sharpness: float,
    chunk_size: int,
    normalize_keys: bool = False,
) -> torch.Tensor:
    """``exp(-beta (1 - q K^T)) L`` computed over chunks of cache entries, so memory is O(B * chunk + B * N).

    Keys are cast to float32 chunk by chunk (the cache may be stored in half precision); ``normalize_keys``
    renormalises each key first.
    """
    out = queries.new_zeros(queries.shape[0], num_classes, dtype=torch.float32)
    for start in range(0, keys.shape[0], chunk_size):
        k = keys[start : start + chunk_size].float()
        if normalize_keys:
            k = Fn.l2_normalize(k)
        a = Fn.affinity(queries, k, sharpness)  # (B, chunk)
        # in place: an out-of-place index_add allocates a fresh (B, N) tensor per chunk (100 MB at B = 256 and
        # N = 100k, page-faulted anew every time); autograd supports the in-place form (it keeps only the index)
        out.index_add_(1, cache_labels[start : start + chunk_size], a)  # (B, chunk) -> (B, N)
    return out


class AdapterMethod(nn.Module):
    """Base class of a method: a small module mapping normalised image embeddings to logits.

    Subclasses set `trainable` and implement `forward(image_embeds, state, labels=None, cache_index=None)`.
    Methods whose parameters depend on the cache shape override `resize_cache(num_entries)` and
    `init_from_cache(state)`; `build_cache` calls both before any optimiser exists.
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    uses_cache: ClassVar[bool] = False

    def __init__(self, config: XMAdapterConfig, embed_dim: int):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim

    @classmethod
    def measures_disagreement(cls, config: XMAdapterConfig) -> bool:
        """Whether the method returns the cross-modal disagreement ``d`` under ``config`` (the `disagreement`
        hard-sample criterion needs it). `False` unless a method says otherwise."""
        return False

    def resize_cache(self, num_entries: int) -> None:
        """(Re)creates cache-shaped parameters for ``num_entries`` entries (no-op by default)."""

    def init_from_cache(self, state: CacheState) -> None:
        """Initialises cache-shaped parameters from the freshly built cache (no-op by default)."""

    def cast_cache(self, dtype: torch.dtype) -> None:
        """Stores cache-shaped parameters in ``dtype``; half types freeze them (see `half_cache`). No-op by default."""

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """Optimiser parameter groups; one group at ``learning_rate`` unless a method needs more."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": learning_rate}] if params else []

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        raise NotImplementedError
