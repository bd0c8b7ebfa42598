"""The one extraction pipeline: images -> augmented views -> raw backbone embeddings.

The cache, the embedding fast path, distributed extraction, the reproduce harness and the benchmarks all call
`extract_embeddings`. Every random draw is a function of (seed, item index, view), so the result does not depend on
the batch size beyond float rounding, nor at all on the order, the number of worker processes (`data/loader.py`)
or the number of processes (`data/distributed.py`).

With ``cache_dir=`` the embeddings go to the embedding store (`data/store.py`): one entry per item, under a key that
names everything the embedding depends on, so a second run reads them back without a single backbone forward, an
interrupted run resumes at the first shard it had not finished, a subset reuses what a larger extraction embedded,
and several processes can fill one store at once. A `datasets.Dataset` is identified by `datasets`' own public
`Hasher` (what its caching hashes datasets with).

Why not `datasets.Dataset.map(..., cache_file_name=...)` and `save_to_disk` for this store: an interrupted `map`
starts again from its first item (it writes one file and renames it at the end), while a long extraction should resume
where it stopped; the pipeline also serves torch datasets (lists of (image, label) pairs), which have no Arrow table
to map over; and reading a (V, C) float list per row back from Arrow into a (V, M, C) tensor is a conversion copy,
where a safetensors shard is memory-mapped as it is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .items import (
    EMPTY_DATASET,
    check_dataset,
    class_label_names,
    crop_size,
    read_item,
    read_labels,
    resolve_columns,
    undecoded,
)
from .loader import ViewsDataset, embed_units, items_per_forward, resolve_num_workers
from .store import DEFAULT_SHARD_SIZE, EmbeddingStore, backbone_weights_fingerprint, extraction_cache_key

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "ExtractedEmbeddings",
    "backbone_weights_fingerprint",
    "check_dataset",
    "class_label_names",
    "crop_size",
    "extract_embeddings",
    "extraction_cache_key",
    "read_item",
    "read_labels",
    "resolve_columns",
    "run_size",
]


@dataclass
class ExtractedEmbeddings:
    """Raw (unnormalised) embeddings of a dataset.

    Attributes:
        embeds (`torch.Tensor` of shape `(V, M, C)`): float32, one row per view and item; V = 1 without augmentation.
        labels (`torch.LongTensor` of shape `(M,)`).
        cache_path (`str`, *optional*): the embedding store's folder when extracted with ``cache_dir=``.
        images_embedded (`int`, *optional*): the items that went through the backbone in this call (0 when every
            one was read back from the store); `None` when the embeddings were not made by an extraction.
    """

    embeds: torch.Tensor
    labels: torch.Tensor
    cache_path: str | None = None
    images_embedded: int | None = None


def run_size(shard_size: int, batch_size: int, views: int) -> int:
    """Items per store shard: ``shard_size`` rounded up to whole backbone forwards, so that every shard is embedded
    in the very batches one uninterrupted extraction uses (with or without a store, in one process or several)."""
    per_forward = items_per_forward(batch_size, views)
    return math.ceil(shard_size / per_forward) * per_forward


def _check_arguments(augment_views, batch_size, shard_size, cache_dir, autocast_dtype) -> None:
    if isinstance(augment_views, bool) or not isinstance(augment_views, int) or augment_views < 0:
        raise ValueError(f"`augment_views` must be an int >= 0 (0 = no augmentation), got {augment_views!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"`shard_size` must be a positive integer, got {shard_size!r}.")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"`cache_dir` must be a path (str or os.PathLike), got {type(cache_dir).__name__}.")
    if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
        raise TypeError(f"`autocast_dtype` must be a torch.dtype or None, got {autocast_dtype!r}.")


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
    cache_dir: str | os.PathLike | None = None,
    dataset_fingerprint: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    num_workers: int | None = None,
) -> ExtractedEmbeddings:
    """Raw backbone embeddings of every item, over ``augment_views`` augmented views (0 = the plain view).

    Each view is Tip-Adapter's RandomResizedCrop(scale 0.5-1) + horizontal flip, drawn from
    ``draw_seed(seed, index, view)``; images are decoded once per item and converted to 8-bit RGB. Decoding,
    augmentation and preprocessing run in ``num_workers`` worker processes while the backbone embeds the batch
    before (`data/loader.py`). The backbone runs under `torch.no_grad`, and under `torch.autocast(autocast_dtype)`
    when one is given (bf16 on CPU/GPU, fp16 on GPU).

    Args:
        backbone (`CLIPModel`): the frozen dual encoder.
        image_processor (`CLIPImageProcessor` or `CLIPProcessor`): turns the (augmented) images into pixel values.
        dataset: a `datasets.Dataset` with image and label columns, or a torch dataset of (image, label) pairs or
            dicts.
        augment_views (`int`, *optional*, defaults to 10): augmented views per item; 0 = the plain image, once.
        seed (`int`, *optional*, defaults to 0): seed of the augmentation draws.
        batch_size (`int`, *optional*, defaults to 32): images per backbone forward, at most: a forward takes the
            views of ``max(1, batch_size // views)`` whole items.
        image_column, label_column (`str`, *optional*): the columns of a `datasets.Dataset` (found if omitted).
        indices (`Sequence[int]`, *optional*): the items to embed, in this order (default: all).
        autocast_dtype (`torch.dtype`, *optional*): mixed precision for the backbone forward.
        show_progress (`bool`, *optional*, defaults to `True`): a tqdm progress bar.
        cache_dir (`str` or `os.PathLike`, *optional*): the embedding store (`data/store.py`): items are kept
            under ``cache_dir/<key>/`` (see [`extraction_cache_key`]) in safetensors shards of about ``shard_size``
            items, each written to a temporary file and renamed into place once its items are embedded. A later call
            (or another process, at the same time) with the same key embeds only the items no shard holds yet, so an
            interrupted extraction resumes where it stopped and a finished one costs no backbone forward at all.
        dataset_fingerprint (`str`, *optional*): identifies the data for the store key; needed with ``cache_dir``
            for a dataset that is not a `datasets.Dataset` (a torch dataset). It must change whenever the data does.
        shard_size (`int`, *optional*, defaults to 256): items per store shard (the resume granularity, and the unit
            that processes share), rounded up to whole backbone forwards ([`run_size`]).
        num_workers (`int`, *optional*): worker processes that prepare the views; 0 = the main process. By default
            ``XMADAPTER_NUM_WORKERS`` where set, else 0 for a job under about 1.5 s of CPU (256 views of 224 px;
            smaller views count for less), else one per available core (`data/loader.resolve_num_workers`). The
            result is bit for bit the same for any number.

    Returns:
        [`ExtractedEmbeddings`]: `embeds` (V, M, C) float32 and `labels` (M,), in the order of ``indices``.

    Example (a second run with the same `cache_dir` does no backbone forward):

    ```python
    >>> import tempfile
    >>> from xmadapter_hf.data.extraction import extract_embeddings
    >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
    >>> clip, processor = tiny_clip()
    >>> data = tiny_image_dataset(num_classes=2, shots=2)
    >>> cache = tempfile.mkdtemp()
    >>> first = extract_embeddings(clip, processor, data, augment_views=3, cache_dir=cache, show_progress=False)
    >>> again = extract_embeddings(clip, processor, data, augment_views=3, cache_dir=cache, show_progress=False)
    >>> first.embeds.shape, bool((first.embeds == again.embeds).all()), again.images_embedded
    (torch.Size([3, 4, 32]), True, 0)
    ```
    """
    _check_arguments(augment_views, batch_size, shard_size, cache_dir, autocast_dtype)
    resolve_num_workers(num_workers, 0)  # validates before anything is read or written
    check_dataset(dataset)
    image_processor = getattr(image_processor, "image_processor", image_processor)
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise ValueError(EMPTY_DATASET)
    store = None
    if cache_dir is not None:  # keyed by the dataset as given (what `extraction_cache_key(dataset)` returns)
        key, description = extraction_cache_key(
            backbone, image_processor, dataset, augment_views=augment_views, seed=seed, image_column=image_column,
            label_column=label_column, autocast_dtype=autocast_dtype, dataset_fingerprint=dataset_fingerprint,
        )  # fmt: skip
        store = EmbeddingStore(cache_dir, key, description, views=max(augment_views, 1))
    size = crop_size(image_processor)
    views = ViewsDataset(
        undecoded(dataset, image_column), image_processor, augment_views=augment_views, seed=seed, size=size,
        columns=(image_column, label_column),
    )  # fmt: skip
    todo = indices if store is None else store.missing(indices)
    workers = resolve_num_workers(num_workers, len(todo) * views.views, size, num_items=len(todo))
    progress = tqdm(total=len(indices), disable=not show_progress, desc="extract", unit="img")
    progress.update(len(indices) - len(todo))

    def embed(units):
        def advance(count: int) -> None:
            progress.update(count)
            if store is not None:
                store.heartbeat()

        return embed_units(
            backbone, views, units, batch_size=batch_size, num_workers=workers, autocast_dtype=autocast_dtype,
            on_items=advance,
        )  # fmt: skip

    with progress:
        if store is None:
            ((_, embeds, labels),) = embed([indices])
            return ExtractedEmbeddings(embeds, labels, images_embedded=len(indices))
        store.fill(indices, embed, run_size=run_size(shard_size, batch_size, views.views))
    embeds, labels = store.read(indices)
    return ExtractedEmbeddings(embeds, labels, cache_path=str(store.directory), images_embedded=store.embedded)
