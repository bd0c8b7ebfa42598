"""xmadapter-hf: cache-based few-shot adapters (XMAdapter, Tip-Adapter, ...) for frozen Hugging Face CLIP models."""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModelForImageClassification  # noqa: E402

from .configuration_xmadapter import METHODS, XMAdapterConfig  # noqa: E402
from .data.extraction import ExtractedEmbeddings, extract_embeddings  # noqa: E402
from .data.views import EmbeddingViewsDataset, FitReport, ViewEpochCallback, fit  # noqa: E402
from .methods import register_method, registered_methods  # noqa: E402
from .modeling_xmadapter import XMAdapterForImageClassification, XMAdapterImageClassifierOutput  # noqa: E402

AutoConfig.register(XMAdapterConfig.model_type, XMAdapterConfig, exist_ok=True)
AutoModelForImageClassification.register(XMAdapterConfig, XMAdapterForImageClassification, exist_ok=True)

__all__ = [
    "EmbeddingViewsDataset",
    "ExtractedEmbeddings",
    "FitReport",
    "METHODS",
    "ViewEpochCallback",
    "XMAdapterConfig",
    "XMAdapterForImageClassification",
    "XMAdapterImageClassifierOutput",
    "__version__",
    "extract_embeddings",
    "fit",
    "register_method",
    "registered_methods",
]
