"""The data foundation of paper reproduction: dataset readers, prompt templates, protocols, published numbers.

- [`read_dataset`] / [`read_image_folder`]: the 11 few-shot benchmarks and ImageNet-V2/-Sketch/-A/-R from local
  folders in CoOp's layouts (``split_zhou_*.json`` included) or from class-folder trees, as a
  [`BenchmarkDataset`] whose splits convert to `datasets.Dataset` (``image``, ``label`` ClassLabel, ``image_id``).
- [`prompt_templates`]: CLIP's, Tip-Adapter's and CoOp's per-dataset templates.
- [`few_shot_task`], [`base_to_novel_task`], [`domain_generalisation_task`], [`meta_adapter_task`]: the protocols.
- [`published_result`] / [`published_results`]: the papers' numbers, each with its source.
- [`run_protocol`]: a protocol over datasets x methods x shots x seeds, resumable, with its reports
  (`xmadapter reproduce`).

See docs/reproduce.md.
"""

from __future__ import annotations

from .harness import ReproduceError, ReproduceResult, run_protocol
from .protocols import (
    DOMAIN_GENERALISATION_TARGETS,
    META_ADAPTER_DATASETS,
    VALIDATION_RULES,
    BaseToNovelTask,
    DomainGeneralisationTask,
    FewShotTask,
    MetaAdapterTask,
    base_novel_classes,
    base_to_novel_task,
    domain_generalisation_task,
    few_shot_task,
    harmonic_mean,
    meta_adapter_task,
)
from .published import PublishedResult, comparable, published_result, published_results
from .readers import (
    DatasetLayoutError,
    canonical_dataset_name,
    dataset_layout,
    expected_layout,
    list_benchmark_datasets,
    read_dataset,
    read_image_folder,
)
from .records import BenchmarkDataset, ImageRecord, ImageSplit, clean_class_name, stable_image_id
from .templates import list_template_sources, prompt_templates, template_source

__all__ = [
    "DOMAIN_GENERALISATION_TARGETS",
    "META_ADAPTER_DATASETS",
    "VALIDATION_RULES",
    "BaseToNovelTask",
    "BenchmarkDataset",
    "DatasetLayoutError",
    "DomainGeneralisationTask",
    "FewShotTask",
    "ImageRecord",
    "ImageSplit",
    "MetaAdapterTask",
    "PublishedResult",
    "ReproduceError",
    "ReproduceResult",
    "base_novel_classes",
    "base_to_novel_task",
    "canonical_dataset_name",
    "clean_class_name",
    "comparable",
    "dataset_layout",
    "domain_generalisation_task",
    "expected_layout",
    "few_shot_task",
    "harmonic_mean",
    "list_benchmark_datasets",
    "list_template_sources",
    "meta_adapter_task",
    "prompt_templates",
    "published_result",
    "published_results",
    "read_dataset",
    "read_image_folder",
    "run_protocol",
    "stable_image_id",
    "template_source",
]
