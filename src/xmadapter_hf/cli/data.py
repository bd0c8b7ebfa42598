"""Where the commands read labelled images from: an image folder, a saved `datasets` dataset, or a `datasets` name.

An image folder is read in the `datasets` imagefolder layout, `DIR/<class>/<images>` or
`DIR/<split>/<class>/<images>` with split folders `train`, `validation` (or `val`, `valid`, `dev`) and
`test`; class names are the class folders' names, sorted (the ids `load_dataset("imagefolder", ...)` gives). It is
listed here rather than by `load_dataset("imagefolder", data_dir=DIR)`, which takes a split from any folder or file
name that contains a split keyword: a class folder named "dev board" or a file "test-1.png" would silently become
a split of its own. Every class folder must hold an image: an empty one is named in the error, since
`imagefolder` would drop the class and shift every later label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .common import CLIError

__all__ = [
    "DataSource",
    "class_names_of",
    "image_extensions",
    "images_under",
    "open_data",
    "open_support",
    "pick_split",
    "relabel",
    "resolve_split",
]

SPLIT_FOLDERS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}


def image_extensions() -> set[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import IMAGE_EXTENSIONS

    return {extension.lower() for extension in IMAGE_EXTENSIONS}


@dataclass
class DataSource:
    """The splits of one `--data` (or `--validation`, `--test`) argument and a phrase saying where they are."""

    splits: dict = field(default_factory=dict)  # name -> datasets.Dataset
    origin: str = ""

    def describe(self, split: str) -> str:
        return f"the {split} split of {self.origin}" if len(self.splits) > 1 else self.origin


def images_under(folder: Path, extensions: set[str]) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
    )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_layout(root: Path) -> dict[str, Path] | None:
    """{split: folder} when every sub-folder of `root` is a split folder, else `None` (class folders)."""
    folders = _subfolders(root)
    alias = {name: split for split, names in SPLIT_FOLDERS.items() for name in names}
    if not folders or any(p.name.lower() not in alias for p in folders):
        return None
    found: dict[str, Path] = {}
    for folder in folders:
        split = alias[folder.name.lower()]
        if split in found:
            raise CLIError(f"{root}: both {found[split].name}/ and {folder.name}/ would be the {split} split")
        found[split] = folder
    return found


def _read_image_folder(root: Path):
    """{split: Dataset} of an image folder, with one `ClassLabel` over the class folders of every split."""
    import datasets

    extensions = image_extensions()
    layout = _split_layout(root) or {"train": root}
    files: dict[str, dict[str, list[Path]]] = {}
    for split, folder in layout.items():
        classes = _subfolders(folder)
        if not classes:
            raise CLIError(
                f"{folder} holds no class folders: expected {folder}/<class name>/<images> (the imagefolder layout)"
            )
        files[split] = {c.name: images_under(c, extensions) for c in classes}
        empty = [name for name, found in files[split].items() if not found]
        if empty:
            listed = ", ".join(repr(str(folder / name)) for name in empty)
            raise CLIError(
                f"class folder {listed} holds no images ({', '.join(sorted(extensions)[:6])}, ...): add images of "
                "that class or remove the folder (an image folder drops an empty class and shifts every later label)"
            )
    names = sorted({name for classes in files.values() for name in classes})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    splits = {}
    for split, classes in files.items():
        paths = [str(p) for name in names for p in classes.get(name, [])]
        labels = [label for label, name in enumerate(names) for _ in classes.get(name, [])]
        splits[split] = datasets.Dataset.from_dict({"image": paths, "label": labels}, features=features, split=split)
    return splits


#: Seconds the Hub has to answer whether a `--data` name is a dataset there (the whole lookup stays within 5 s).
HUB_TIMEOUT = 4.0


def _looks_like_path(text: str) -> bool:
    """A path, never a Hub name: it starts with `.`, `~` or `/`, ends with `/`, or holds `\\` or more than one `/`."""
    return text.startswith((".", "~", "/")) or text.endswith("/") or "\\" in text or text.count("/") > 1


def _hub_offline() -> bool:
    """`HF_HUB_OFFLINE`, as huggingface_hub read it at import or as the environment says now."""
    import os

    import huggingface_hub

    return huggingface_hub.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES",
                                                                                                   "TRUE"}  # fmt: skip


def _load_hub_dataset(source: str, what: str):
    """`datasets.load_dataset(source)` for a name that is no folder here. Online, the Hub is asked first whether it
    has such a dataset, within `HUB_TIMEOUT` seconds (`load_dataset` alone retried for 30-40 s before failing);
    offline (`HF_HUB_OFFLINE`), only the local cache is read. Every failure names both readings of `source`."""
    import datasets

    not_here = f"{what} {source!r}: no such folder here"
    offline = _hub_offline()
    if not offline:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

        try:
            HfApi().dataset_info(source, timeout=HUB_TIMEOUT)
        except GatedRepoError as error:
            raise CLIError(f"{not_here}, and the Hub dataset of that name is gated: log in (`hf auth login`) with "
                           "an account that has access") from error  # fmt: skip
        except (RepositoryNotFoundError, HFValidationError) as error:
            raise CLIError(f"{not_here}, and no dataset of that name on the Hub ({type(error).__name__})") from error
        except Exception as error:  # no network, a timeout, a server error
            raise CLIError(
                f"{not_here}, and the Hub did not say within {HUB_TIMEOUT:g} s whether it has a dataset of that name "
                f"({type(error).__name__}: {error}); set HF_HUB_OFFLINE=1 to read the local cache only"
            ) from error
    try:
        return datasets.load_dataset(source)
    except Exception as error:  # offline and not in the cache, or a dataset the Hub has but `datasets` cannot read
        where = "not in the local Hub cache (HF_HUB_OFFLINE is set)" if offline else "`datasets.load_dataset` failed"
        raise CLIError(f"{not_here}, and as a Hub dataset name: {where}: {error}") from error


def open_data(source: str, what: str = "--data") -> DataSource:
    """The splits of `source`: an image folder, a `save_to_disk` directory, or a `datasets` name (needs the Hub,
    or its cache with `HF_HUB_OFFLINE=1`)."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"{what} {source!r} is a file; expected a folder of class folders of images")
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
            return DataSource(splits, f"the saved dataset {source}")
        return DataSource(_read_image_folder(path.resolve()), f"the image folder {source}")
    if _looks_like_path(source):
        raise CLIError(f"{what} {source!r}: no such folder")
    return DataSource(dict(_load_hub_dataset(source, what)), f"the dataset {source}")


def resolve_split(value: str, data: DataSource | None, wanted: str, what: str):
    """A dataset for `--validation`/`--test`: a split name of `--data`, or a source of its own (if it has
    several splits, its `wanted` one). Returns (dataset, phrase saying where it is from)."""
    if data is not None and value in data.splits and not Path(value).exists():
        return data.splits[value], data.describe(value)
    source = open_data(value, what)
    if len(source.splits) == 1:
        (dataset,) = source.splits.values()
        return dataset, source.origin
    if wanted not in source.splits:
        raise CLIError(f"{what} {value!r} has the splits {sorted(source.splits)} but no {wanted!r} split")
    return source.splits[wanted], source.describe(wanted)


def pick_split(data: DataSource, split: str | None, preferred: tuple[str, ...], what: str = "--split"):
    """(name, dataset) of `split`, or of the first of `preferred` that `data` has, or of its only split."""
    if split is not None:
        if split not in data.splits:
            raise CLIError(f"{what} {split!r}: {data.origin} has the splits {sorted(data.splits)}")
        return split, data.splits[split]
    for name in preferred:
        if name in data.splits:
            return name, data.splits[name]
    if len(data.splits) == 1:
        return next(iter(data.splits.items()))
    raise CLIError(f"{data.origin} has the splits {sorted(data.splits)}: choose one with {what}")


def open_support(source: str) -> tuple:
    """`--support`: (dataset, its class names, where it is from). An image folder's class folders name the classes
    and its labels index them, as `add_classes` and `build_cache` take them; its `train` split if it has splits."""
    data = open_data(source, "--support")
    if len(data.splits) > 1 and "train" not in data.splits:
        raise CLIError(f"--support {source!r} has the splits {sorted(data.splits)}: give a folder of class folders")
    split, dataset = pick_split(data, None, ("train",))
    origin = data.describe(split)
    return dataset, class_names_of(dataset, origin), origin


def class_names_of(dataset, origin: str) -> list[str]:
    """The `ClassLabel` names of the dataset's label column."""
    from ..data.extraction import class_label_names

    names = class_label_names(dataset)
    if not names:
        raise CLIError(
            f"{origin} has no ClassLabel label column (columns {dataset.column_names}): the class names come from it"
        )
    return names


def relabel(dataset, class_names: list[str], origin: str):
    """`dataset` with its labels renumbered to `class_names` by name (its classes may be a subset of them)."""
    import datasets

    from ..data.extraction import resolve_columns

    own = class_names_of(dataset, origin)
    if own == list(class_names):
        return dataset
    unknown = [name for name in own if name not in class_names]
    if unknown:
        raise CLIError(
            f"{origin} has classes the adapter does not know: {unknown[:10]} (it knows {class_names[:10]}...)"
        )
    _, label_column = resolve_columns(dataset, None, None)
    new_id = [class_names.index(name) for name in own]
    features = dataset.features.copy()
    features[label_column] = datasets.ClassLabel(names=list(class_names))
    return dataset.map(
        lambda labels: {label_column: [new_id[label] for label in labels]},
        input_columns=label_column,
        batched=True,
        features=features,
    )
