"""Readers of the papers' benchmark datasets, from local folders in CoOp's layouts or from class-folder trees.

Every dataset lives in its own folder under one data root, named and organised as CoOp's DATASETS.md says (the
layouts are shipped as data in ``data/layouts.json``; :func:`expected_layout` prints one). Nine of the eleven
few-shot datasets are read from CoOp's fixed ``split_zhou_*.json`` files (``[relative path, label, class name]``
per image), FGVC-Aircraft from its own ``images_variant_*.txt`` files, ImageNet and its four variants from class
folders named by WordNet id (ImageNet-V2: by label id) with CoOp's ``classnames.txt``. Nothing is downloaded and no
split is invented: a missing file is a [`DatasetLayoutError`] that shows the expected layout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._data import load_data
from .records import BenchmarkDataset, ImageRecord, ImageSplit, clean_class_name, stable_image_id

__all__ = [
    "DatasetLayoutError",
    "canonical_dataset_name",
    "dataset_layout",
    "expected_layout",
    "list_benchmark_datasets",
    "read_dataset",
    "read_image_folder",
]

# Folder names a class-folder tree may use for each split (those of `datasets`' imagefolder builder).
_SPLIT_DIRS = {"train": ("train",), "val": ("validation", "val", "valid", "dev"), "test": ("test",)}


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder or file the layout needs is missing; the message shows the expected layout."""


def list_benchmark_datasets() -> list[str]:
    """The canonical names [`read_dataset`] accepts: the 11 few-shot datasets, then the 4 ImageNet variants.

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import list_benchmark_datasets
    >>> list_benchmark_datasets()[-4:]
    ['imagenetv2', 'imagenet_sketch', 'imagenet_a', 'imagenet_r']
    ```
    """
    return list(load_data("layouts.json")["datasets"])


def canonical_dataset_name(name: str) -> str:
    """The canonical name of a dataset given by its canonical name, display name or an alias (case-insensitive).

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import canonical_dataset_name
    >>> canonical_dataset_name("FGVCAircraft"), canonical_dataset_name("ImageNet-R")
    ('fgvc', 'imagenet_r')
    ```
    """
    if not isinstance(name, str):
        raise TypeError(f"A dataset name must be a str, got {type(name).__name__} ({name!r}).")
    key = name.lower()
    for canonical, layout in load_data("layouts.json")["datasets"].items():
        if key in {canonical, layout["display_name"].lower(), *(alias.lower() for alias in layout["aliases"])}:
            return canonical
    raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(list_benchmark_datasets())}.")


def dataset_layout(name: str) -> dict[str, Any]:
    """The layout record of one dataset (folder, image directory, split file, source, ...), a fresh dict."""
    return load_data("layouts.json")["datasets"][canonical_dataset_name(name)]


def expected_layout(name: str, root: str | os.PathLike | None = None) -> str:
    """The folder tree a dataset must have under the data root, as text.

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import expected_layout
    >>> print(expected_layout("eurosat", "/data"))
    /data/eurosat/
    |-- 2750/
    |-- split_zhou_EuroSAT.json
    ```
    """
    layout = dataset_layout(name)
    top = f"{os.fspath(root).rstrip('/')}/{layout['folder']}/" if root is not None else f"$DATA/{layout['folder']}/"
    return "\n".join([top, *(f"|-- {entry}" for entry in layout["tree"])])


def _layout_error(name: str, root: Path, missing: Path, why: str = "is missing") -> DatasetLayoutError:
    layout = dataset_layout(name)
    return DatasetLayoutError(
        f"{layout['display_name']}: {missing} {why}. Expected this layout (CoOp's DATASETS.md):\n"
        f"{expected_layout(name, root)}"
    )


def _entries(path: Path, *, dirs: bool) -> list[str]:
    """Sorted names of the non-hidden sub-folders (``dirs``) or files of ``path``."""
    with os.scandir(path) as scan:
        found = [e.name for e in scan if not e.name.startswith(".") and (e.is_dir() if dirs else e.is_file())]
    return sorted(found)


def _dataset(
    name: str,
    folder: Path,
    names: Sequence[str],
    keys: Sequence[str],
    items: dict[str, list[tuple[str, int]]],
    source: str,
    verify_files: bool,
) -> BenchmarkDataset:
    """Builds the result from ``(path relative to folder, label)`` pairs per split."""
    class_names = tuple(clean_class_name(n) for n in names)
    splits = {}
    for split, pairs in items.items():
        records = tuple(
            ImageRecord(str(folder / rel), rel, label, index, stable_image_id(name, rel))
            for index, (rel, label) in enumerate(pairs)
        )
        splits[split] = ImageSplit(split, records, class_names)
    if verify_files:
        missing = [r.path for s in splits.values() for r in s if not os.path.isfile(r.path)]
        if missing:
            raise FileNotFoundError(f"{name}: {len(missing)} listed images do not exist, e.g. {missing[:3]}.")
    return BenchmarkDataset(name, class_names, tuple(names), tuple(keys), splits, str(folder), source)


def _read_coop_split(name: str, root: Path, folder: Path, layout: dict) -> tuple[list, dict]:
    """Class names and per-split ``(relative path, label)`` pairs from a ``split_zhou_*.json`` file."""
    path = folder / layout["split_file"]
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _layout_error(name, root, path) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err
    if not isinstance(payload, dict) or not {"train", "val", "test"} <= set(payload):
        raise ValueError(f"{path} must hold an object with 'train', 'val' and 'test' lists (CoOp's split format).")
    prefix = "" if layout["paths_relative_to"] == "folder" else layout["image_dir"] + "/"
    label_names: dict[int, str] = {}
    items = {}
    for split in ("train", "val", "test"):
        pairs = []
        for position, entry in enumerate(payload[split]):
            fields_ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[1], int)
            if not (fields_ok and isinstance(entry[0], str) and isinstance(entry[2], str)):
                raise ValueError(f"{path}: {split}[{position}] should be [path, label, class name], got {entry!r}.")
            rel, label, class_name = entry
            if label_names.setdefault(label, class_name) != class_name:
                raise ValueError(f"{path}: label {label} is named both {label_names[label]!r} and {class_name!r}.")
            pairs.append((prefix + rel, label))
        items[split] = pairs
    if sorted(label_names) != list(range(len(label_names))):
        raise ValueError(f"{path}: labels should be 0 .. N-1, got {sorted(label_names)[:10]}...")
    return [label_names[i] for i in range(len(label_names))], items


def _read_fgvc(name: str, root: Path, folder: Path, layout: dict) -> tuple[list, dict]:
    """FGVC-Aircraft: ``variants.txt`` names the classes, ``images_variant_<split>.txt`` lists ``<id> <variant>``."""
    class_file = folder / layout["class_file"]
    if not class_file.is_file():
        raise _layout_error(name, root, class_file)
    names = [line.strip() for line in class_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    label_of = {class_name: label for label, class_name in enumerate(names)}
    items = {}
    for split, file_name in layout["split_files"].items():
        path = folder / file_name
        if not path.is_file():
            raise _layout_error(name, root, path)
        pairs = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            image, _, variant = line.strip().partition(" ")
            if variant not in label_of:
                raise ValueError(f"{path}: variant {variant!r} (image {image}) is not in {class_file.name}.")
            pairs.append((f"{layout['image_dir']}/{image}.jpg", label_of[variant]))
        items[split] = pairs
    return names, items


def _read_classnames_txt(path: Path) -> list[tuple[str, str]]:
    table = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            wnid, _, class_name = line.strip().partition(" ")
            if not class_name:
                raise ValueError(f"{path}:{number}: expected '<wnid> <class name>', got {line!r}.")
            table.append((wnid, class_name.strip()))
    return table


def _imagenet_classes(name: str, root: Path, folder: Path) -> list[tuple[str, str]]:
    """``(wnid, class name)`` of every ImageNet class, in label order.

    From the dataset's own ``classnames.txt``, else ``imagenet/classnames.txt``, else CLIP's 1000 names paired
    with the sorted WordNet-id folders of ``imagenet/images/train`` (or of the dataset itself) when there are
    exactly 1000 of them; CLIP's list is in sorted-wnid order, as CoOp's file is.
    """
    for path in (folder / "classnames.txt", root / "imagenet" / "classnames.txt"):
        if path.is_file():
            return _read_classnames_txt(path)
    clip_names = load_data("imagenet_classes.json")["class_names"]
    for wnid_dir in (root / "imagenet" / "images" / "train", folder / dataset_layout(name)["image_dir"]):
        if wnid_dir.is_dir():
            wnids = _entries(wnid_dir, dirs=True)
            if len(wnids) == len(clip_names) and all(w.startswith("n") for w in wnids):
                return list(zip(wnids, clip_names))
    raise _layout_error(
        name, root, folder / "classnames.txt", "is missing (nor is imagenet/classnames.txt, nor 1000 wnid folders)"
    )


def _read_imagenet_family(name: str, root: Path, folder: Path, layout: dict) -> tuple[list, list, dict]:
    """Class names, class keys (wnids) and per-split pairs of ImageNet, -V2, -Sketch, -A or -R."""
    table = _imagenet_classes(name, root, folder)
    label_of = {wnid: label for label, (wnid, _) in enumerate(table)}
    image_dir = folder / layout["image_dir"]
    if layout["format"] == "imagenet-index-folders":  # ImageNet-V2: folders 0 ... 999 are ImageNet label ids
        pairs = []
        for sub in sorted(_entries(image_dir, dirs=True), key=lambda s: (len(s), s)):
            if not sub.isdigit() or int(sub) >= len(table):
                raise ValueError(f"{image_dir}: folder {sub!r} is not an ImageNet label id (0 .. {len(table) - 1}).")
            pairs += [(f"{layout['image_dir']}/{sub}/{f}", int(sub)) for f in _entries(image_dir / sub, dirs=False)]
        return [n for _, n in table], [w for w, _ in table], {"test": pairs}
    split_dirs = layout.get("split_dirs", {"test": ""})
    present = None if layout["format"] == "imagenet" else _entries(image_dir, dirs=True)
    classes = table if present is None else [(w, table[label_of[w]][1]) for w in present if w in label_of]
    unknown = [w for w in (present or []) if w not in label_of]
    if unknown:
        raise ValueError(f"{image_dir}: folders {unknown[:5]} are not ImageNet WordNet ids of the class list.")
    label_of = {wnid: label for label, (wnid, _) in enumerate(classes)}
    items = {}
    for split, sub in split_dirs.items():
        base = f"{layout['image_dir']}/{sub}".rstrip("/")
        pairs = []
        for wnid in _entries(folder / base, dirs=True):
            if wnid not in label_of:
                raise ValueError(f"{folder / base}: folder {wnid!r} is not in the ImageNet class list.")
            pairs += [(f"{base}/{wnid}/{f}", label_of[wnid]) for f in _entries(folder / base / wnid, dirs=False)]
        items[split] = pairs
    return [n for _, n in classes], [w for w, _ in classes], items


def read_dataset(name: str, root: str | os.PathLike, *, verify_files: bool = False) -> BenchmarkDataset:
    """Reads one benchmark dataset from ``<root>/<its folder>`` in CoOp's layout.

    Labels and class names are those of the source: CoOp's split file, FGVC's ``variants.txt`` order, or the
    ImageNet class list (``classnames.txt`` order, which is the sorted-WordNet-id order; ImageNet-A/-R: their 200
    folders in sorted order, as CoOp numbers them). Images within a class folder are read in sorted order.

    Args:
        name (`str`): a dataset of [`list_benchmark_datasets`] (display names and aliases work too).
        root (`str` or `os.PathLike`): the data root holding one folder per dataset.
        verify_files (`bool`, *optional*, defaults to `False`): check that every listed image exists (one
            ``stat`` per image; the folders the layout needs are always checked).

    Returns:
        [`BenchmarkDataset`]: the class names and the splits.

    Raises:
        DatasetLayoutError: a folder or file of the layout is missing; the message shows the expected tree.
        ValueError: a split or class file is malformed.
    """
    canonical = canonical_dataset_name(name)
    layout = dataset_layout(canonical)
    root = Path(root).expanduser().resolve()
    folder = root / layout["folder"]
    if not folder.is_dir():
        raise _layout_error(canonical, root, folder, "(the dataset folder) is missing")
    for entry in layout["required"]:
        if not (folder / entry).exists():
            raise _layout_error(canonical, root, folder / entry.rstrip("/"))
    if layout["format"] == "coop-split":
        names, items = _read_coop_split(canonical, root, folder, layout)
        keys, source = names, layout["split_file"]
    elif layout["format"] == "fgvc-variants":
        names, items = _read_fgvc(canonical, root, folder, layout)
        keys, source = names, "images_variant_{train,val,test}.txt"
    else:
        names, keys, items = _read_imagenet_family(canonical, root, folder, layout)
        source = f"{layout['image_dir']}/ class folders"
    return _dataset(canonical, folder, names, keys, items, source, verify_files)


def _apply_rules(folder_names: list[str], rules: dict) -> tuple[list[str], list[str]]:
    """CoOp's renames of raw class-folder names: ``(kept folder names, their source class names)``."""
    kept = [n for n in folder_names if n not in rules.get("ignore", [])]
    names = []
    for raw in kept:
        class_name = rules.get("rename", {}).get(raw, raw)
        if rules.get("lowercase"):
            class_name = class_name.lower()
        if rules.get("camel_case_to_underscores") and "_" not in class_name:
            class_name = "_".join(re.findall(r"[A-Z][^A-Z]*", class_name)) or class_name
        words = class_name.split(" ")
        if rules.get("year_first") and len(words) > 1 and re.fullmatch(r"\d{4}", words[-1]):
            class_name = " ".join([words[-1], *words[:-1]])
        names.append(class_name)
    return kept, names


def read_image_folder(
    path: str | os.PathLike, *, name: str | None = None, verify_files: bool = False
) -> BenchmarkDataset:
    """Reads a class-folder tree as `datasets`' ``imagefolder`` expects it: ``<split>/<class>/<image>``.

    Split folders: ``train``, ``validation`` (or ``val``, ``valid``, ``dev``) -> ``val``, ``test``. Classes are the
    union of the class folders of all splits, sorted (as ``imagefolder`` numbers them). When ``name`` is one of the
    benchmark datasets, CoOp's renames of its raw folder names are applied (e.g. Caltech101 drops
    ``BACKGROUND_Google`` and ``Faces_easy`` and renames ``airplanes`` to ``airplane``; EuroSAT ``AnnualCrop`` to
    ``Annual Crop Land``; UCF101 ``ApplyEyeMakeup`` to ``Apply_Eye_Makeup``; OxfordPets lower-cases; StanfordCars
    moves the year first), so the class names match those of CoOp's split files.

    Args:
        path (`str` or `os.PathLike`): the folder holding the split folders.
        name (`str`, *optional*): a benchmark dataset's name, for its renames and image ids; defaults to the
            folder's name (no renames).
        verify_files (`bool`, *optional*, defaults to `False`): as in [`read_dataset`].

    Returns:
        [`BenchmarkDataset`]

    Raises:
        DatasetLayoutError: ``path`` does not exist or holds none of the split folders.
    """
    folder = Path(path).expanduser().resolve()
    canonical = canonical_dataset_name(name) if name is not None else folder.name
    rules = dataset_layout(canonical)["class_name_rules"] if name is not None else {}
    split_folders = {}
    for split, candidates in _SPLIT_DIRS.items():
        found = [c for c in candidates if (folder / c).is_dir()]
        if found:
            split_folders[split] = found[0]
    if not split_folders:
        raise DatasetLayoutError(
            f"{folder} holds none of the split folders train/, validation/ (or val/), test/. Expected an image "
            f"folder tree:\n{folder}/\n|-- train/<class name>/<image files>\n|-- validation/<class name>/...\n"
            "|-- test/<class name>/..."
        )
    raw = sorted({c for sub in split_folders.values() for c in _entries(folder / sub, dirs=True)})
    kept, names = _apply_rules(raw, rules)
    label_of = {folder_name: label for label, folder_name in enumerate(kept)}
    items = {}
    for split, sub in split_folders.items():
        pairs = []
        for class_folder in _entries(folder / sub, dirs=True):
            if class_folder in label_of:
                files = _entries(folder / sub / class_folder, dirs=False)
                pairs += [(f"{sub}/{class_folder}/{f}", label_of[class_folder]) for f in files]
        items[split] = pairs
    return _dataset(canonical, folder, names, kept, items, "class folders", verify_files)
