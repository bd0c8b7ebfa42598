"""The uniform result of every reader: image records, splits of them, and a dataset of splits.

A reader returns a [`BenchmarkDataset`]: class names plus, per split, an [`ImageSplit`] of [`ImageRecord`]s (image
path and label). Protocols draw subsets of those splits; a subset keeps each record unchanged, so an image's
identity ([`ImageRecord.index`], [`ImageRecord.image_id`]) is the same in the full split and in every few-shot
subset drawn from it. That is what lets an extraction key its augmentation draws by image rather than by position
in a subset, and reuse one image's embeddings across shots and seeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import datasets

__all__ = ["BenchmarkDataset", "ImageRecord", "ImageSplit", "clean_class_name", "stable_image_id"]

_ID_BITS = 63


def stable_image_id(dataset: str, relative_path: str) -> int:
    """A stable 63-bit integer identity of one image: a hash of the dataset name and the image's relative path.

    ``relative_path`` is the path below the dataset's folder (``<data root>/<dataset folder>``), with ``/``
    separators, so the id is the same wherever the data root lies, on every machine and in every Python process
    (BLAKE2b, not Python's salted ``hash()``), and it does not depend on the order of the split file. Use it (or
    [`ImageRecord.index`]) as the key of per-image random draws, e.g. ``draw_seed(seed, image_id, view)``.

    Args:
        dataset (`str`): the dataset's canonical name (e.g. ``"dtd"``).
        relative_path (`str`): the image's path below the dataset folder, ``/``-separated.

    Returns:
        `int`: an id in ``[0, 2**63)``.

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import stable_image_id
    >>> image_id = stable_image_id("dtd", "images/banded/banded_0002.jpg")
    >>> image_id == stable_image_id("dtd", "images/banded/banded_0002.jpg"), 0 <= image_id < 2**63
    (True, True)
    ```
    """
    if not isinstance(dataset, str) or not isinstance(relative_path, str):
        raise TypeError("stable_image_id expects two strings (dataset name, relative path).")
    payload = f"{dataset}\0{relative_path.replace(chr(92), '/')}".encode()
    digest = hashlib.blake2b(payload, digest_size=8, person=b"xmadapter-image").digest()
    return int.from_bytes(digest, "little") >> (64 - _ID_BITS)


def clean_class_name(name: str) -> str:
    """The class name as CoOp and Tip-Adapter put it into a prompt: underscores become spaces.

    Dataset-specific renames (e.g. Caltech101's ``airplanes`` -> ``airplane``) happened when CoOp wrote its split
    files; this is the last, generic step both codebases apply when they build prompts (``name.replace("_", " ")``).

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import clean_class_name
    >>> clean_class_name("Apply_Eye_Makeup")
    'Apply Eye Makeup'
    ```
    """
    return name.replace("_", " ")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a split.

    Args:
        path (`str`): absolute path of the image file.
        relative_path (`str`): path below the dataset folder, ``/``-separated.
        label (`int`): class id, ``0 .. num_classes - 1`` of the split that holds the record (a protocol that
            relabels classes makes new records with new labels and the same identity).
        index (`int`): position of the image in the full split as read (split-file order, or sorted folder order).
        image_id (`int`): [`stable_image_id`] of the image.
    """

    path: str
    relative_path: str
    label: int
    index: int
    image_id: int


@dataclass(frozen=True)
class ImageSplit(Sequence):
    """An ordered, immutable list of [`ImageRecord`]s plus the class names their labels index.

    Args:
        name (`str`): ``"train"``, ``"val"`` or ``"test"``.
        records (`tuple[ImageRecord, ...]`): the images.
        class_names (`tuple[str, ...]`): name of each label id.
    """

    name: str
    records: tuple[ImageRecord, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item):
        return self.records[item]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def labels(self) -> list[int]:
        return [record.label for record in self.records]

    @property
    def paths(self) -> list[str]:
        return [record.path for record in self.records]

    @property
    def image_ids(self) -> list[int]:
        return [record.image_id for record in self.records]

    def select(self, positions: Sequence[int]) -> ImageSplit:
        """The records at ``positions`` (positions in this split, repeats allowed), identities unchanged."""
        return replace(self, records=tuple(self.records[position] for position in positions))

    def restrict_classes(self, label_ids: Sequence[int], class_names: Sequence[str] | None = None) -> ImageSplit:
        """Only the images of ``label_ids``, relabelled ``label_ids[i] -> i`` (CoCoOp's relabelling).

        Args:
            label_ids (`Sequence[int]`): the classes to keep, in their new order.
            class_names (`Sequence[str]`, *optional*): the new class names; defaults to the kept classes' names.
        """
        new_label = {old: new for new, old in enumerate(label_ids)}
        if len(new_label) != len(label_ids):
            raise ValueError(f"label_ids must not repeat a class, got {list(label_ids)}.")
        names = tuple(class_names) if class_names is not None else tuple(self.class_names[i] for i in label_ids)
        kept = tuple(replace(r, label=new_label[r.label]) for r in self.records if r.label in new_label)
        return ImageSplit(self.name, kept, names)

    def keep_classes(self, label_ids: Sequence[int]) -> ImageSplit:
        """Only the images of ``label_ids``, labels and class names unchanged (Meta-Adapter scores all classes)."""
        kept = set(label_ids)
        return replace(self, records=tuple(r for r in self.records if r.label in kept))

    def to_hf(self) -> datasets.Dataset:
        """A `datasets.Dataset` with columns ``image`` (`datasets.Image`, decoded lazily from the path), ``label``
        (`datasets.ClassLabel` with the class names), ``image_id`` (int64) and ``path`` (the relative path)."""
        features = datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=list(self.class_names)),
                "image_id": datasets.Value("int64"),
                "path": datasets.Value("string"),
            }
        )
        columns = {
            "image": self.paths,
            "label": self.labels,
            "image_id": self.image_ids,
            "path": [record.relative_path for record in self.records],
        }
        return datasets.Dataset.from_dict(columns, features=features, split=self.name)


@dataclass(frozen=True)
class BenchmarkDataset:
    """A dataset as read from disk: its classes and its splits.

    Args:
        name (`str`): canonical name (a key of [`list_benchmark_datasets`]), or the name given to an image folder.
        class_names (`tuple[str, ...]`): cleaned names ([`clean_class_name`]), what prompts and the ``ClassLabel``
            use.
        source_class_names (`tuple[str, ...]`): names as the source gives them (CoOp's split files keep
            underscores, e.g. ``"Apply_Eye_Makeup"``); Meta-Adapter's class lists match these.
        class_keys (`tuple[str, ...]`): the source's identifier of each class (the WordNet id for the ImageNet
            family, the source class name otherwise).
        splits (`dict[str, ImageSplit]`): the splits the source has (``train``/``val``/``test``; ImageNet has no
            ``val``, the ImageNet variants only ``test``).
        folder (`str`): the dataset folder that was read.
        source (`str`): what defined the splits (e.g. the split file's name).
    """

    name: str
    class_names: tuple[str, ...]
    source_class_names: tuple[str, ...]
    class_keys: tuple[str, ...]
    splits: dict[str, ImageSplit] = field(default_factory=dict)
    folder: str = ""
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> ImageSplit:
        """The split ``name``; a clear `KeyError` naming the splits the dataset has otherwise."""
        if name not in self.splits:
            raise KeyError(f"{self.name} has no {name!r} split; it has {sorted(self.splits)}.")
        return self.splits[name]

    def to_hf(self) -> datasets.DatasetDict:
        """All splits as a `datasets.DatasetDict` (see [`ImageSplit.to_hf`])."""
        return datasets.DatasetDict({name: split.to_hf() for name, split in self.splits.items()})
