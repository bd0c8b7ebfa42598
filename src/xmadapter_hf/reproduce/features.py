"""The reproduce harness's embedding store: raw image embeddings on disk, keyed by what they depend on.

[`FeatureStore`] keeps one safetensors shard per extraction under a folder named by the backbone (its weights'
fingerprint and the processor's settings), the dataset split and the augmentation (views, seed), and embeds an image
only when no shard holds it, so every method, shot count and seed of [`~xmadapter_hf.reproduce.harness.run_protocol`]
reuses the embeddings. `harness.py` imports it from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
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
    """Raw image embeddings on disk, keyed by (backbone, dataset, split, views, augmentation seed) and image id.

    `embeddings(dataset, split, views)` returns the `(max(views, 1), M, C)` embeddings of ``split``'s records in
    their order (repeats included), running the backbone only on images it has never embedded under that key. An
    image's views are drawn from ``(augment_seed, its index in the full split, view)``, so they are the same in
    every few-shot subset. New embeddings are written as one safetensors shard per call (temporary name, then
    renamed), so an interrupted run keeps what finished.

    Attributes:
        images_embedded (`int`): images the backbone embedded through this store (each counted once per call).
    """

    def __init__(self, root, clip, processor, *, augment_seed: int = 0, batch_size: int = 32,
                 autocast_dtype=None, show_progress: bool = False):  # fmt: skip
        self.root = Path(root)
        self.clip, self.processor = clip, processor
        self.augment_seed, self.batch_size = augment_seed, batch_size
        self.autocast_dtype, self.show_progress = autocast_dtype, show_progress
        from ..data.extraction import backbone_weights_fingerprint

        self.backbone_key = _digest([backbone_weights_fingerprint(clip), _processor_settings(processor)])
        self.images_embedded = 0
        self._loaded: dict[Path, dict[int, torch.Tensor]] = {}
        self._images: dict[tuple[str, str], object] = {}  # (dataset, split) -> its `datasets.Dataset`, built once

    def folder(self, dataset: BenchmarkDataset, split: str, views: int) -> Path:
        full = dataset.split(split)
        data_key = _digest([dataset.name, dataset.source, split, full.image_ids])
        store = f"views{views}-seed{self.augment_seed}"
        return self.root / self.backbone_key / f"{dataset.name}-{split}-{data_key}" / store

    def _load(self, folder: Path) -> dict[int, torch.Tensor]:
        if folder not in self._loaded:
            from safetensors.torch import load_file

            table: dict[int, torch.Tensor] = {}
            for shard in sorted(folder.glob("shard-*.safetensors")) if folder.is_dir() else []:
                tensors = load_file(shard)
                for position, image_id in enumerate(tensors["image_ids"].tolist()):
                    table[image_id] = tensors["embeds"][:, position]
            self._loaded[folder] = table
        return self._loaded[folder]

    def embeddings(self, dataset: BenchmarkDataset, split: ImageSplit, views: int) -> torch.Tensor:
        from safetensors.torch import save_file

        from .. import extract_embeddings

        full = dataset.split(split.name)
        folder = self.folder(dataset, split.name, views)
        table = self._load(folder)
        missing: dict[int, int] = {}
        for record in split:
            if record.image_id not in table and record.image_id not in missing:
                if full.records[record.index].image_id != record.image_id:
                    from .harness import ReproduceError  # its home is the harness, which imports this module

                    raise ReproduceError(f"{dataset.name} {split.name}: record {record.path} is not at its index.")
                missing[record.image_id] = record.index
        if missing:
            indices = sorted(missing.values())
            images = self._images.get((dataset.name, split.name))
            if images is None:  # each seed's few-shot draw asks for new images of the same split
                images = self._images[(dataset.name, split.name)] = full.to_hf()
            extracted = extract_embeddings(
                self.clip, self.processor, images, augment_views=views, seed=self.augment_seed,
                batch_size=self.batch_size, indices=indices, autocast_dtype=self.autocast_dtype,
                show_progress=self.show_progress,
            )  # fmt: skip
            self.images_embedded += len(indices)
            ids = torch.tensor([full.records[i].image_id for i in indices], dtype=torch.int64)
            embeds = extracted.embeds.float().contiguous()
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / f".tmp-{uuid.uuid4().hex}"
            save_file({"image_ids": ids, "embeds": embeds}, str(temporary))
            os.replace(temporary, folder / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors")
            for position, image_id in enumerate(ids.tolist()):
                table[image_id] = embeds[:, position]
        return torch.stack([table[record.image_id] for record in split], dim=1)
