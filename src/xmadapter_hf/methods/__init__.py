"""The methods: one file each, registered by name; `base.py` holds the registry and the protocol, `cache.py` the one
implementation of the cache term ``A L``. A new method is one new file here (registered with `register_method`)."""

from .base import (
    AdapterMethod,
    CacheState,
    CacheTerm,
    LogitTerm,
    MethodOutput,
    SearchSpace,
    TrainingRecipe,
    get_method_class,
    method_config_fields,
    register_method,
    registered_methods,
)
from .clip_adapter import ClipAdapter
from .gda import GDA
from .meta_adapter import MetaAdapter
from .multimodal import MultiModalAdapter
from .tip_adapter import TipAdapter, TipAdapterF
from .xmadapter import XMAdapter
from .zero_shot import ZeroShot

#: The methods this library ships (`config.method` may also name any method registered with `register_method`).
METHODS = tuple(registered_methods())

#: The shipped methods in the order `method="auto"` tries them and breaks ties in (a tie on validation accuracy goes
#: to the candidate listed first): zero-shot CLIP, the training-free methods, then the trained ones from the shortest
#: recipe to the longest (Meta-Adapter 5 epochs; Tip-Adapter-F and XMAdapter 20; CLIP-Adapter and the Multi-Modal
#: Adapter 200). `fit(..., candidates=[...])` gives another list.
AUTO_CANDIDATES = (
    "zero-shot", "tip-adapter", "gda", "meta-adapter", "tip-adapter-f", "xmadapter", "clip-adapter",
    "multimodal-adapter",
)  # fmt: skip

__all__ = [
    "AUTO_CANDIDATES",
    "METHODS",
    "AdapterMethod",
    "CacheState",
    "CacheTerm",
    "ClipAdapter",
    "GDA",
    "LogitTerm",
    "MetaAdapter",
    "MethodOutput",
    "MultiModalAdapter",
    "SearchSpace",
    "TipAdapter",
    "TipAdapterF",
    "TrainingRecipe",
    "XMAdapter",
    "ZeroShot",
    "get_method_class",
    "method_config_fields",
    "register_method",
    "registered_methods",
]
