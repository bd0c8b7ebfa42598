"""The one extraction pipeline: images -> augmented views -> raw backbone embeddings.

The cache, the embedding fast path, distributed extraction and the benchmarks all call `extract_embeddings`. Every
random draw is a function of (seed, item index, view), so the result does not depend on batch size, order or process
count.

With ``cache_dir=`` the embeddings are also kept on disk, as safetensors shards under a key that names everything
they depend on (see [`extraction_cache_key`]): a second run with the same backbone, data and settings reads them back
without a single backbone forward, and an interrupted run resumes at the first shard it had not finished. A
`datasets.Dataset` is identified by `datasets`' own public `Hasher` (what its caching hashes datasets with).

Why not `datasets.Dataset.map(..., cache_file_name=...)` and `save_to_disk` for this cache: an interrupted `map`
starts again from its first item (it writes one file and renames it at the end), while a long extraction should resume
where it stopped; the pipeline also serves torch datasets (lists of (image, label) pairs), which have no Arrow table
to map over; and reading a (V, C) float list per row back from Arrow into a (V, M, C) tensor is a conversion copy,
where a safetensors shard is memory-mapped as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..backbone import architecture_hash, encode_images
from .augment import augment_view, draw_seed
from .images import load_image

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
]

logger = logging.getLogger(__name__)

_IMAGE_COLUMNS = ("image", "img", "pixel_values", "image_path", "path", "file")
_LABEL_COLUMNS = ("label", "labels", "fine_label")
#: Items per on-disk shard of a cached extraction (independent of `batch_size`, so that a rerun with another batch
#: size still finds the shards; 256 items x 10 views x 512 dims is 5 MB).
DEFAULT_SHARD_SIZE = 256
# Bump when the shard layout or the augmentation recipe changes: old caches then miss instead of being misread.
_CACHE_FORMAT = "xmadapter-extraction-v1"
_AUGMENTATION = "random-resized-crop(scale=0.5-1, ratio=3/4-4/3, bicubic)+hflip(p=0.5)"
_EMPTY = "The dataset is empty: cannot extract embeddings from no images."
# Values sampled per parameter tensor for the weights fingerprint.
_FINGERPRINT_SAMPLES = 1024


@dataclass
class ExtractedEmbeddings:
    """Raw (unnormalised) embeddings of a dataset.

    Attributes:
        embeds (`torch.Tensor` of shape `(V, M, C)`): float32, one row per view and item; V = 1 without augmentation.
        labels (`torch.LongTensor` of shape `(M,)`).
        cache_path (`str`, *optional*): the directory of the on-disk shards when extracted with ``cache_dir=``.
    """

    embeds: torch.Tensor
    labels: torch.Tensor
    cache_path: str | None = None


def check_dataset(dataset) -> None:
    """Raises `TypeError` for a path where a dataset is expected (a common slip: a folder of images), `ValueError`
    for an empty dataset."""
    if isinstance(dataset, (str, bytes, os.PathLike)):
        raise TypeError(
            f"Expected a dataset of labelled images, got the path {str(dataset)!r}. Load an image folder (one "
            'sub-folder per class) with `datasets.load_dataset("imagefolder", data_dir=path, split="train")` and pass '
            "that dataset."
        )
    if len(dataset) == 0:
        raise ValueError(_EMPTY)


def class_label_names(dataset, label_column: str | None = None) -> list[str] | None:
    """The names of a `datasets.ClassLabel` label column (in label order), or `None` if the labels have no names."""
    features = getattr(dataset, "features", None)
    if features is None or isinstance(dataset, (str, bytes, os.PathLike)):
        return None
    column = label_column or next((c for c in _LABEL_COLUMNS if c in features), None)
    names = getattr(features.get(column), "names", None) if column is not None else None
    return list(names) if names is not None else None


def read_labels(dataset, image_column: str | None = None, label_column: str | None = None) -> torch.Tensor:
    """Every item's label, `(M,)` int64, without decoding an image where the dataset allows it.

    A `datasets.Dataset` without a transform gives its label column directly; other datasets are read item by item
    (a torch dataset may load its image in `__getitem__`, but no image goes through a backbone here).
    """
    check_dataset(dataset)
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    plain = getattr(dataset, "format", {}).get("type") is None
    if label_column is not None and plain and hasattr(dataset, "with_format"):
        values = dataset[label_column]
    else:
        values = [read_item(dataset, i, image_column, label_column)[1] for i in range(len(dataset))]
    return torch.tensor([_label(value, i) for i, value in enumerate(values)], dtype=torch.long)


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


def _undecoded(dataset, image_column: str | None):
    """The dataset with its image column read as bytes/paths, decoded by `images.load_image`.

    `datasets` would decode a corrupt or non-image file itself and raise its own error without the file's name; our
    loader names it, converts every mode to 8-bit RGB and enforces the decompression-bomb limit. Datasets with a
    format or transform set are left as they are (the transform expects decoded images).
    """
    features = getattr(dataset, "features", None)
    if features is None or image_column not in features or getattr(dataset, "format", {}).get("type") is not None:
        return dataset
    from datasets import Image as ImageFeature

    feature = features[image_column]
    if isinstance(feature, ImageFeature) and feature.decode:
        return dataset.cast_column(image_column, ImageFeature(decode=False))
    return dataset


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


# ------------------------------------------------------------------------------------------------- the cache key
def backbone_weights_fingerprint(backbone) -> str:
    """A hash of the backbone's weights: names, shapes, dtypes and ~1k evenly spaced values of every tensor.

    Hashing every value of a ViT-L would cost seconds; a strided sample of each tensor tells apart two random
    initialisations, two checkpoints and a fine-tuned copy, which is what an extraction cache key needs. This hashes
    bits on purpose (a cache must be reused only for bit-identical inputs); it is not the tolerant fingerprint that
    checkpoints are compared with on load.
    """
    digest = hashlib.blake2b(digest_size=16, person=b"xmadapter-wts")
    tensors = [*backbone.named_parameters(), *backbone.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::step][:_FINGERPRINT_SAMPLES].to("cpu", torch.float64)  # exact for every float dtype
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def _dataset_fingerprint(dataset, given: str | None) -> dict:
    if given is not None:
        if not isinstance(given, str) or not given:
            raise TypeError(f"`dataset_fingerprint` must be a non-empty string, got {given!r}.")
        return {"fingerprint": given, "length": len(dataset)}
    datasets = sys.modules.get("datasets")  # a `datasets.Dataset` means `datasets` is imported
    if datasets is None or not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"`cache_dir` needs to know which data it caches: a {type(dataset).__name__} has no fingerprint (a "
            "`datasets.Dataset` has one). Pass `dataset_fingerprint=`, a string that changes whenever the data does."
        )
    from datasets.fingerprint import Hasher  # noqa: I001 (datasets is imported already)

    # A transform changes what `dataset[i]` returns: the hash covers the dataset's format and transform, and we also
    # record which function it is (by name: an address would change every run).
    form = getattr(dataset, "format", None) or {}
    described = json.dumps(form, sort_keys=True, default=lambda o: getattr(o, "__qualname__", type(o).__name__))
    return {"fingerprint": Hasher.hash(dataset), "length": len(dataset), "format": described}


def _processor_settings(image_processor) -> str:
    to_dict = getattr(image_processor, "to_dict", None)
    settings = to_dict() if callable(to_dict) else dict(vars(image_processor))
    return json.dumps(settings, sort_keys=True, default=str)


def extraction_cache_key(
    backbone,
    image_processor,
    dataset,
    *,
    indices: Sequence[int] | None = None,
    augment_views: int = 10,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    dataset_fingerprint: str | None = None,
) -> tuple[str, dict]:
    """The key under which `extract_embeddings(..., cache_dir=...)` stores its shards, and what it is made of.

    The key is a hash of: the backbone's `name_or_path`, [`~xmadapter_hf.backbone.architecture_hash`], a fingerprint
    of its weights ([`backbone_weights_fingerprint`]) and its dtype; the dataset's hash (`datasets.fingerprint.Hasher`
    of a `datasets.Dataset`, its format and length, or the ``dataset_fingerprint`` given); the item indices; the
    augmentation (views, seed, crop size, recipe); the image processor's settings; the columns; the autocast dtype.
    Batch size, progress bar and device are left out: they do not change the embeddings beyond float rounding.

    Returns:
        `tuple[str, dict]`: a 32-hex-digit key and the JSON-serialisable description it hashes.
    """
    image_processor = getattr(image_processor, "image_processor", image_processor)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    index_hash = hashlib.sha256(torch.tensor(indices, dtype=torch.int64).numpy().tobytes()).hexdigest()
    param = next(backbone.parameters())
    description = {
        "format": _CACHE_FORMAT,
        "backbone": {
            "name_or_path": str(getattr(backbone, "name_or_path", "") or ""),
            "architecture_hash": architecture_hash(backbone),
            "weights": backbone_weights_fingerprint(backbone),
            "dtype": str(param.dtype),
        },
        "dataset": _dataset_fingerprint(dataset, dataset_fingerprint),
        "indices": {"count": len(indices), "sha256": index_hash},
        "augmentation": {
            "views": augment_views,
            "seed": seed,
            "crop_size": crop_size(image_processor),
            "recipe": _AUGMENTATION if augment_views > 0 else "none",
        },
        "image_processor": _processor_settings(image_processor),
        "columns": [image_column, label_column],
        "autocast_dtype": str(autocast_dtype) if autocast_dtype is not None else None,
    }
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32], description


# --------------------------------------------------------------------------------------------- on-disk shards
def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # Write beside the target and rename: a reader (or a resumed run) never sees a half-written shard.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_shard(path: Path, key: str, items: list[int], views: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (embeds (V, b, C), labels (b,)) of a shard, or None if it is missing or does not match."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            embeds, labels, stored = (handle.get_tensor(k) for k in ("embeds", "labels", "indices"))
    except Exception as error:  # a foreign or damaged file: recompute it rather than fail
        logger.warning("Ignoring unreadable extraction shard %s (%s); recomputing it.", path, error)
        return None
    expected = torch.tensor(items, dtype=torch.int64)
    if (
        metadata.get("key") != key
        or embeds.ndim != 3
        or embeds.shape[:2] != (views, len(items))
        or labels.shape != (len(items),)
        or not torch.equal(stored, expected)
    ):
        logger.warning("Extraction shard %s does not match this extraction; recomputing it.", path)
        return None
    return embeds.float(), labels.long()


# ------------------------------------------------------------------------------------------------ extraction
def _encode_batch(backbone, image_processor, dataset, batch, *, views, augment_views, seed, size, columns, dtype):
    """Embeddings (V, b, C) float32 on CPU and labels of the items ``batch``; images are decoded once."""
    images, labels = [], []
    for i in batch:
        image, label = read_item(dataset, i, *columns)
        images.append(load_image(image))
        labels.append(_label(label, i))
    device = next(backbone.parameters()).device
    per_view = []
    for view in range(views):
        if augment_views == 0:
            pictures = images
        else:
            pictures = [augment_view(img, size, draw_seed(seed, i, view)) for img, i in zip(images, batch)]
        pixels = image_processor(images=pictures, return_tensors="pt")["pixel_values"]
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            per_view.append(encode_images(backbone, pixels).float().cpu())  # (b, C)
    return torch.stack(per_view), labels  # (V, b, C)


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
) -> ExtractedEmbeddings:
    """Raw backbone embeddings of every item, over ``augment_views`` augmented views (0 = the plain view).

    Each view is Tip-Adapter's RandomResizedCrop(scale 0.5-1) + horizontal flip, drawn from
    ``draw_seed(seed, index, view)``; images are decoded once per batch and converted to 8-bit RGB. The backbone runs
    under `torch.no_grad`, and under `torch.autocast(autocast_dtype)` when one is given (bf16 on CPU/GPU, fp16 on GPU).

    Args:
        backbone (`CLIPModel`): the frozen dual encoder.
        image_processor (`CLIPImageProcessor` or `CLIPProcessor`): turns the (augmented) images into pixel values.
        dataset: a `datasets.Dataset` with image and label columns, or a torch dataset of (image, label) pairs or
            dicts.
        augment_views (`int`, *optional*, defaults to 10): augmented views per item; 0 = the plain image, once.
        seed (`int`, *optional*, defaults to 0): seed of the augmentation draws.
        batch_size (`int`, *optional*, defaults to 32): images per backbone forward.
        image_column, label_column (`str`, *optional*): the columns of a `datasets.Dataset` (found if omitted).
        indices (`Sequence[int]`, *optional*): the items to embed, in this order (default: all).
        autocast_dtype (`torch.dtype`, *optional*): mixed precision for the backbone forward.
        show_progress (`bool`, *optional*, defaults to `True`): a tqdm progress bar.
        cache_dir (`str` or `os.PathLike`, *optional*): keep the embeddings on disk under
            ``cache_dir/<key>/`` (see [`extraction_cache_key`]) as safetensors shards of ``shard_size`` items, each
            written to a temporary file and renamed into place once its items are embedded. A later call with the
            same key reads the shards back and runs the backbone only for shards that are missing, so an interrupted
            extraction resumes where it stopped and a finished one costs no backbone forward at all.
        dataset_fingerprint (`str`, *optional*): identifies the data for the cache key; needed with ``cache_dir``
            for a dataset that is not a `datasets.Dataset` (a torch dataset). It must change whenever the data does.
        shard_size (`int`, *optional*, defaults to 256): items per on-disk shard (the resume granularity).

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
    >>> first.embeds.shape, bool((first.embeds == again.embeds).all())
    (torch.Size([3, 4, 32]), True)
    ```
    """
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
    check_dataset(dataset)
    image_processor = getattr(image_processor, "image_processor", image_processor)
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    dataset = _undecoded(dataset, image_column)
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise ValueError(_EMPTY)
    size = crop_size(image_processor)
    views = max(augment_views, 1)
    encode = dict(
        views=views, augment_views=augment_views, seed=seed, size=size, columns=(image_column, label_column),
        dtype=autocast_dtype,
    )  # fmt: skip

    def run(items: list[int], progress) -> tuple[torch.Tensor, list[int]]:
        embeds, labels = [], []
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            batch_embeds, batch_labels = _encode_batch(backbone, image_processor, dataset, batch, **encode)
            embeds.append(batch_embeds)  # (V, b, C)
            labels.extend(batch_labels)
            progress.update(len(batch))
        return torch.cat(embeds, dim=1), labels  # (V, m, C)

    progress = tqdm(total=len(indices), disable=not show_progress, desc="extract", unit="img")
    if cache_dir is None:
        with progress:
            embeds, labels = run(indices, progress)
        return ExtractedEmbeddings(embeds, torch.tensor(labels, dtype=torch.long))

    key, description = extraction_cache_key(
        backbone, image_processor, dataset, indices=indices, augment_views=augment_views, seed=seed,
        image_column=image_column, label_column=label_column, autocast_dtype=autocast_dtype,
        dataset_fingerprint=dataset_fingerprint,
    )  # fmt: skip
    directory = Path(cache_dir) / key
    directory.mkdir(parents=True, exist_ok=True)
    described = directory / "key.json"
    if not described.is_file():  # for humans (what is this directory?); the shards carry the key themselves
        text = json.dumps(description, indent=2, sort_keys=True) + "\n"
        tmp = described.with_name(f".key.json.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, described)
    embeds, labels = [], []
    with progress:
        for start in range(0, len(indices), shard_size):
            items = indices[start : start + shard_size]
            path = directory / f"shard-{start:09d}-{start + len(items):09d}.safetensors"
            loaded = _load_shard(path, key, items, views)
            if loaded is None:
                shard_embeds, shard_labels = run(items, progress)
                shard_labels = torch.tensor(shard_labels, dtype=torch.long)
                tensors = {
                    "embeds": shard_embeds.contiguous(),  # (V, b, C)
                    "labels": shard_labels,
                    "indices": torch.tensor(items, dtype=torch.int64),
                }
                _atomic_save(tensors, path, {"format": "pt", "key": key, "cache_format": _CACHE_FORMAT})
            else:
                shard_embeds, shard_labels = loaded
                progress.update(len(items))
            embeds.append(shard_embeds)
            labels.append(shard_labels)
    return ExtractedEmbeddings(torch.cat(embeds, dim=1), torch.cat(labels), cache_path=str(directory))
