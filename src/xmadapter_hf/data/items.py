"""Reading a labelled image dataset item by item: a `datasets.Dataset`, or a torch dataset of pairs or dicts.

The extraction pipeline ([`~xmadapter_hf.data.extraction.extract_embeddings`]) and its worker processes
([`~xmadapter_hf.data.loader`]) read items through these helpers only, so that every dataset form is handled in one
place.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "EMPTY_DATASET",
    "check_dataset",
    "class_label_names",
    "crop_size",
    "item_label",
    "read_item",
    "read_labels",
    "resolve_columns",
    "undecoded",
]

_IMAGE_COLUMNS = ("image", "img", "pixel_values", "image_path", "path", "file")
_LABEL_COLUMNS = ("label", "labels", "fine_label")
EMPTY_DATASET = "The dataset is empty: cannot extract embeddings from no images."


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
        raise ValueError(EMPTY_DATASET)


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
    return torch.tensor([item_label(value, i) for i, value in enumerate(values)], dtype=torch.long)


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


def undecoded(dataset, image_column: str | None):
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


def item_label(value, index: int) -> int:
    """``value`` as an `int` label (a 0-d tensor or any integer type); `TypeError` naming item ``index`` otherwise."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int,)) and not hasattr(value, "__index__"):
        raise TypeError(f"Labels must be integers; item {index} has label {value!r} ({type(value).__name__}).")
    return int(value)
