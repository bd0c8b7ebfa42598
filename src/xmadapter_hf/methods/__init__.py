"""The method registry: each method is a small module over embeddings, registered by name."""

from .base import (
    AdapterMethod,
    CacheState,
    MethodOutput,
    chunked_cache_logits,
    get_method_class,
    register_method,
    registered_methods,
)
from .clip_adapter import ClipAdapter
from .multimodal import MultiModalAdapter
from .tip_adapter import TipAdapter, TipAdapterF, ZeroShot
from .xmadapter import XMAdapter

__all__ = [
    "AdapterMethod",
    "CacheState",
    "ClipAdapter",
    "MethodOutput",
    "MultiModalAdapter",
    "TipAdapter",
    "TipAdapterF",
    "XMAdapter",
    "ZeroShot",
    "chunked_cache_logits",
    "get_method_class",
    "register_method",
    "registered_methods",
]
