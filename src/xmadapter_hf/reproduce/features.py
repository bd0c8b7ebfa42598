"""The reproduce harness's embeddings: the records of a benchmark split, through the one embedding store.

[`FeatureStore`] keeps nothing of its own on disk: it asks `extract_embeddings(..., cache_dir=root)` (the embedding
store, `data/store.py`) for the records of a split, identified by the split's image ids and addressed by their index
in the full split, so every method, shot count and seed of [`~xmadapter_hf.reproduce.harness.run_protocol`] reuses
the embeddings, an interrupted run resumes at the shard, several processes can fill one feature folder at once, and
the views of an image are the same in every few-shot subset (drawn from ``(augment_seed, index in the full split,
view)``). `harness.py` imports it from here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from .records import BenchmarkDataset, ImageSplit

__all__ = ["FeatureStore"]


def _processor_settings(processor) -> str:
    image_processor = getattr(processor, "image_processor", processor)
    to_dict = getattr(image_processor, "to_dict", None)
    settings = to_dict() if callable(to_dict) else repr(image_processor)
    return json.dumps(settings, sort_keys=True, default=str)


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """The embeddings of benchmark splits, kept in the embedding store under ``root``.

    `embeddings(dataset, split, views)` returns the `(max(views, 1), M, C)` embeddings of ``split``'s records in
    their order (repeats included); the backbone runs only on images the store does not hold yet for that backbone,
    processor, augmentation (views, ``augment_seed``) and split.

    Attributes:
        backbone_key (`str`): a digest of the backbone's weights and processor settings (recorded in the run's
            settings, so that an output folder is not continued with another backbone).
        images_embedded (`int`): images the backbone embedded through this object (each once).
    """

    def __init__(self, root, clip, processor, *, augment_seed: int = 0, batch_size: int = 32,
                 autocast_dtype=None, show_progress: bool = False, num_workers: int | None = None):  # fmt: skip
        from ..data.store import backbone_weights_fingerprint

        self.root = Path(root)
        self.clip, self.processor = clip, processor
        self.extraction = dict(seed=augment_seed, batch_size=batch_size, autocast_dtype=autocast_dtype,
                               show_progress=show_progress, num_workers=num_workers)  # fmt: skip
        self.backbone_key = _digest([backbone_weights_fingerprint(clip), _processor_settings(processor)])
        self.images_embedded = 0
        self._images: dict[tuple[str, str], tuple] = {}  # (dataset, split) -> (its `datasets.Dataset`, fingerprint)
        self._read: dict[tuple, torch.Tensor] = {}  # what this run read already (the test split, every cell)

    def _split_images(self, dataset: BenchmarkDataset, split: str) -> tuple:
        if (dataset.name, split) not in self._images:  # built once: each seed's draw asks for the same split
            full = dataset.split(split)
            fingerprint = f"{dataset.name}-{split}-{_digest([dataset.name, dataset.source, split, full.image_ids])}"
            self._images[(dataset.name, split)] = (full.to_hf(), fingerprint)
        return self._images[(dataset.name, split)]

    def embeddings(self, dataset: BenchmarkDataset, split: ImageSplit, views: int) -> torch.Tensor:
        from ..data.extraction import extract_embeddings

        full = dataset.split(split.name)
        for record in split:
            if full.records[record.index].image_id != record.image_id:
                from .harness import ReproduceError  # its home is the harness, which imports this module

                raise ReproduceError(f"{dataset.name} {split.name}: record {record.path} is not at its index.")
        indices = [record.index for record in split]
        memo = (dataset.name, split.name, views, tuple(indices))
        if memo not in self._read:
            images, fingerprint = self._split_images(dataset, split.name)
            extracted = extract_embeddings(
                self.clip, self.processor, images, augment_views=views, indices=indices, cache_dir=self.root,
                dataset_fingerprint=fingerprint, **self.extraction,
            )  # fmt: skip
            self.images_embedded += extracted.images_embedded
            self._read[memo] = extracted.embeds
        return self._read[memo]
