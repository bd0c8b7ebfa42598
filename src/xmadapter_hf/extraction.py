"""The one extraction pipeline (ARCHITECTURE decision 7): images -> augmented views -> raw backbone embeddings.

The cache, the embedding fast path and the benchmarks all call `extract_embeddings`. Every random draw is a
function of (seed, item index, view), so the result does not depend on batch size, order or process count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .augment import augment_view, draw_seed
from .backbone import encode_images
from .images import load_image

__all__ = ["ExtractedEmbeddings", "crop_size", "extract_embeddings", "read_item", "resolve_columns"]

_IMAGE_COLUMNS = ("image", "img", "pixel_values", "image_path", "path", "file")
_LABEL_COLUMNS = ("label", "labels", "fine_label")


@dataclass
class ExtractedEmbeddings:
    """Raw (unnormalised) embeddings of a dataset.

    Attributes:
        embeds (`torch.Tensor` of shape `(V, M, C)`): float32, one row per view and item; V = 1 without augmentation.
        labels (`torch.LongTensor` of shape `(M,)`).
    """

    embeds: torch.Tensor
    labels: torch.Tensor


def resolve_columns(dataset, image_column: str | None, label_column: str | None) -> tuple[str | None, str | None]:
    """Finds the image and label columns of a `datasets.Dataset` (None for a torch dataset of tuples)."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        return image_column, label_column
    for given, what in ((image_column, "image"), (label_column, "label")):
        if given is not None and given not in names:
            raise ValueError(f"The dataset has no {what} column {given!r}; its columns are {names}.")
    image_column = image_column or next((c for c in _IMAGE_COLUMNS if c in names), None)
    label_column = label_column or next((c for c in _LABEL_COLUMNS if c in names), None)
    if image_column is None or label_column is None:
        raise ValueError(
            f"Could not find the image and label columns among {names}; pass `image_column=` and `label_column=`."
        )
    return image_column, label_column


def read_item(dataset, index: int, image_column: str | None, label_column: str | None):
    """(image, label) of item ``index`` of a `datasets.Dataset`, a torch dataset of tuples, or one of dicts."""
    item = dataset[index]
    if isinstance(item, dict):
        image_key = image_column or next((c for c in _IMAGE_COLUMNS if c in item), None)
        label_key = label_column or next((c for c in _LABEL_COLUMNS if c in item), None)
        if image_key is None or label_key is None:
            raise ValueError(f"Dataset items must carry an image and a label; item {index} has keys {list(item)}.")
        return item[image_key], item[label_key]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise TypeError(f"Dataset items must be (image, label) pairs or dicts; item {index} is {type(item).__name__}.")


def crop_size(image_processor) -> int:
    """The square input size of the image processor (CLIP: its `crop_size`)."""
    for attr, key in (("crop_size", "height"), ("size", "shortest_edge"), ("size", "height")):
        value = getattr(image_processor, attr, None)
        if isinstance(value, int):
            return value
        # a dict in older transformers, a SizeDict (attribute access) in transformers 5
        found = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        if found is not None:
            return int(found)
    raise TypeError(f"Cannot read the input size of {type(image_processor).__name__}.")


def _label(value, index: int) -> int:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int,)) and not hasattr(value, "__index__"):
        raise TypeError(f"Labels must be integers; item {index} has label {value!r} ({type(value).__name__}).")
    return int(value)


def extract_embeddings(
    backbone,
    image_processor,
    dataset,
    *,
    augment_views: int = 10,
    seed: int = 0,
    batch_size: int = 32,
    image_column: str | None = None,
    label_column: str | None = None,
    indices: Sequence[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    show_progress: bool = True,
) -> ExtractedEmbeddings:
    """Raw backbone embeddings of every item, over ``augment_views`` augmented views (0 = the plain view).

    Each view is Tip-Adapter's RandomResizedCrop(scale 0.5-1) + horizontal flip, drawn from
    ``draw_seed(seed, index, view)``; images are decoded once per batch and converted to 8-bit RGB.
    """
    if augment_views < 0:
        raise ValueError(f"`augment_views` must be >= 0 (0 = no augmentation), got {augment_views}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size}.")
    image_processor = getattr(image_processor, "image_processor", image_processor)
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise ValueError("The dataset is empty: cannot extract embeddings from no images.")
    size = crop_size(image_processor)
    views = max(augment_views, 1)
    device = next(backbone.parameters()).device
    embeds, labels = [], []
    batches = range(0, len(indices), batch_size)
    for start in tqdm(batches, total=math.ceil(len(indices) / batch_size), disable=not show_progress, desc="extract"):
        batch = indices[start : start + batch_size]
        images, batch_labels = [], []
        for i in batch:
            image, label = read_item(dataset, i, image_column, label_column)
            images.append(load_image(image))
            batch_labels.append(_label(label, i))
        per_view = []
        for view in range(views):
            if augment_views == 0:
                pictures = images
            else:
                pictures = [augment_view(img, size, draw_seed(seed, i, view)) for img, i in zip(images, batch)]
            pixels = image_processor(images=pictures, return_tensors="pt")["pixel_values"]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                per_view.append(encode_images(backbone, pixels).float().cpu())
        embeds.append(torch.stack(per_view))  # (V, b, C)
        labels.extend(batch_labels)
    return ExtractedEmbeddings(torch.cat(embeds, dim=1), torch.tensor(labels, dtype=torch.long))
