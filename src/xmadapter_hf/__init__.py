"""xmadapter-hf: cache-based few-shot adapters (XMAdapter, Tip-Adapter, ...) for frozen Hugging Face CLIP models."""

__version__ = "0.3.0"

from transformers import AutoConfig, AutoModelForImageClassification  # noqa: E402

from ._lazy import lazy_exports  # noqa: E402
from .configuration_xmadapter import XMAdapterConfig  # noqa: E402
from .methods import METHODS, register_method, registered_methods  # noqa: E402
from .modeling_xmadapter import XMAdapterForImageClassification, XMAdapterImageClassifierOutput  # noqa: E402
from .pipeline import PIPELINE_TASK, XMAdapterImageClassificationPipeline, register_pipeline  # noqa: E402

AutoConfig.register(XMAdapterConfig.model_type, XMAdapterConfig, exist_ok=True)
AutoModelForImageClassification.register(XMAdapterConfig, XMAdapterForImageClassification, exist_ok=True)
# `pipeline("xmadapter-image-classification", model=...)`: transformers.pipelines adds ~60 ms to a ~4 s import
register_pipeline()

# The data and training paths are imported when first used: the training path imports `transformers.Trainer`, which
# imports `datasets`.
_LAZY = {
    "AugmentedImagesDataset": ".data.views",
    "EmbeddingViewsDataset": ".data.views",
    "EpochShuffleSampler": ".data.views",
    "ExtractedEmbeddings": ".data.extraction",
    "FitReport": ".training.fit",
    "ViewEpochCallback": ".data.views",
    "XMAdapterTrainer": ".training.trainer",
    "extract_embeddings": ".data.extraction",
    "fit": ".training.fit",
    "recipe_arguments": ".training.trainer",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "METHODS",
    "PIPELINE_TASK",
    "AugmentedImagesDataset",
    "EmbeddingViewsDataset",
    "EpochShuffleSampler",
    "ExtractedEmbeddings",
    "FitReport",
    "ViewEpochCallback",
    "XMAdapterConfig",
    "XMAdapterForImageClassification",
    "XMAdapterImageClassificationPipeline",
    "XMAdapterImageClassifierOutput",
    "XMAdapterTrainer",
    "__version__",
    "extract_embeddings",
    "fit",
    "recipe_arguments",
    "register_method",
    "registered_methods",
]
