"""Seeded few-shot sampling: K training and a few validation images per class, saved to a small JSON file.

Few-shot results vary a lot with which K images are drawn, so the draw is a function of the seed alone and can be
written next to the results: reloading the file (checked against the dataset's fingerprint) reproduces the exact
same images even if numpy's sampling changes some day.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np

from .augment import draw_seed

__all__ = ["FewShotSplit", "sample_few_shot"]

_FORMAT = "xmadapter-few-shot-split"
_VERSION = 1


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    if value < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value}.")
    return int(value)


def _read_labels(dataset: Any, label_column: str) -> list[int]:
    """The labels as a list of non-negative Python ints, without decoding any other column."""
    if isinstance(dataset, datasets.Dataset):
        if label_column not in dataset.column_names:
            raise ValueError(f"Dataset has no column {label_column!r}; its columns are {dataset.column_names}.")
        # with_format(None) so a dataset formatted for torch/numpy still yields plain ints; selecting the column
        # alone reads only that Arrow column and honours any indices mapping left by select/shuffle. The [:] makes
        # datasets>=4's lazy Column a list in one Arrow call (iterating it goes row by row, ~200x slower).
        raw = dataset.with_format(None)[label_column][:]
    elif isinstance(dataset, (datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise TypeError(
            f"sample_few_shot expects a datasets.Dataset or a sequence of labels, got {type(dataset).__name__}; "
            "pick a split (e.g. dataset['train']) of a map-style dataset."
        )
    elif isinstance(dataset, np.ndarray) or hasattr(dataset, "tolist"):
        # numpy arrays and torch tensors
        raw = np.asarray(dataset).tolist()
    elif isinstance(dataset, Sequence) and not isinstance(dataset, (str, bytes)):
        raw = list(dataset)
    else:
        raise TypeError(
            "sample_few_shot expects a datasets.Dataset or a sequence of integer labels, "
            f"got {type(dataset).__name__}."
        )
    labels = []
    for position, label in enumerate(raw):
        if isinstance(label, bool) or not isinstance(label, numbers.Integral):
            raise TypeError(f"Labels must be integers, got {type(label).__name__} {label!r} at index {position}.")
        if label < 0:
            raise ValueError(f"Labels must be non-negative, got {label} at index {position}.")
        labels.append(int(label))
    return labels


def _fingerprint(dataset: Any, labels: list[int] | None, label_column: str, of_labels: bool = False) -> str:
    """``dataset._fingerprint`` for a ``datasets.Dataset`` (unless ``of_labels``), else a hash of the labels."""
    if isinstance(dataset, datasets.Dataset) and not of_labels:
        return dataset._fingerprint
    if labels is None:
        labels = _read_labels(dataset, label_column)
    return "sha256:" + hashlib.sha256(json.dumps(labels, separators=(",", ":")).encode()).hexdigest()


def _num_classes(dataset: Any, labels: list[int], label_column: str) -> int:
    feature = dataset.features.get(label_column) if isinstance(dataset, datasets.Dataset) else None
    if isinstance(feature, datasets.ClassLabel):
        too_big = [label for label in labels if label >= feature.num_classes]
        if too_big:
            raise ValueError(
                f"Column {label_column!r} is a ClassLabel with {feature.num_classes} classes but holds label "
                f"{too_big[0]}."
            )
        return feature.num_classes
    return max(labels) + 1


@dataclass
class FewShotSplit:
    """Which dataset rows form the few-shot training and validation sets.

    Args:
        train_indices (`list[int]`): dataset rows of the training set, class by class in label order; with
            ``with_replacement=True`` a row can appear more than once.
        val_indices (`list[int]`): dataset rows of the validation set, class by class; disjoint from the training
            rows.
        shots (`int`): training images per class (K).
        val_shots (`int`): validation images asked for per class (a class short of images may have fewer with
            ``with_replacement=True``).
        seed (`int`): the seed the split was drawn with.
        label_column (`str`): the column the labels were read from.
        with_replacement (`bool`): whether classes short of images were allowed.
        source_fingerprint (`str` or `None`): ``datasets.Dataset._fingerprint`` of the source dataset, or
            ``"sha256:<hex>"`` of its label list when it was a plain sequence.
        num_classes (`int`): number of classes (label ids ``0 .. num_classes - 1``).
    """

    train_indices: list[int]
    val_indices: list[int]
    shots: int
    val_shots: int
    seed: int
    label_column: str
    with_replacement: bool
    source_fingerprint: str | None
    num_classes: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready content of the split file, format tag first."""
        return {"format": _FORMAT, "version": _VERSION, **asdict(self)}

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Writes the split as JSON, atomically.

        The file is written to a temporary name in the same directory and then moved into place, so a reader (or
        a crash) never sees a half-written file. The output is byte-identical for identical splits.

        Args:
            path (`str` or `os.PathLike`): the file to write.
            overwrite (`bool`, *optional*, defaults to `False`): replace an existing file. Without it an existing
                file is refused and left untouched.

        Raises:
            FileExistsError: if ``path`` exists and ``overwrite`` is False.
            IsADirectoryError: if ``path`` is a directory.
            OSError: if the directory does not exist or is not writable.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"Cannot save the few-shot split to {path}: it is a directory.")
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.")
        data = (json.dumps(self.to_dict(), indent=2) + "\n").encode("utf-8")
        directory = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
        # os.open with 0o666 rather than tempfile.mkstemp so the final file gets the usual umask permissions,
        # not mkstemp's 0o600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fp:
                fp.write(data)
                fp.flush()
                os.fsync(fp.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                # link() fails if the target exists, closing the gap between the exists() check above and the
                # move, so a file created meanwhile by someone else is not clobbered.
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it.") from None
                except OSError:
                    # Filesystems without hard links: fall back to the (tiny) check-then-replace race.
                    os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, dataset: Any = None) -> FewShotSplit:
        """Reads a split written by :meth:`save`, optionally checking it was drawn from ``dataset``.

        Args:
            path (`str` or `os.PathLike`): the JSON file.
            dataset (`datasets.Dataset` or sequence of labels, *optional*): if given, its fingerprint (computed as
                in :func:`sample_few_shot`) must equal the stored one. A split drawn from a plain label sequence
                stores a hash of the labels, and is then checked against ``dataset``'s labels.

        Returns:
            `FewShotSplit`: the split.

        Raises:
            ValueError: if the file is not a valid split file, or its fingerprint differs from ``dataset``'s.
            OSError: if the file cannot be read.
        """
        path = os.fspath(path)
        with open(path, encoding="utf-8") as fp:
            try:
                payload = json.load(fp)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not a few-shot split file: invalid JSON ({err}).") from err
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path} is not a few-shot split file: expected format {_FORMAT!r}, got {found!r}.")
        if payload.get("version") != _VERSION:
            raise ValueError(f"{path}: unsupported split file version {payload.get('version')!r} (expected 1).")
        split = cls(**_validated_fields(payload, path))
        if dataset is not None and split.source_fingerprint is not None:
            # A split drawn from a plain label list is checked against the labels, whatever holds them now.
            of_labels = split.source_fingerprint.startswith("sha256:")
            actual = _fingerprint(dataset, None, split.label_column, of_labels=of_labels)
            if actual != split.source_fingerprint:
                raise ValueError(
                    f"{path} was drawn from a dataset with fingerprint {split.source_fingerprint!r}, but the given "
                    f"dataset has fingerprint {actual!r}; it is a different dataset (or a modified one)."
                )
        return split

    def apply(self, dataset: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
        """Selects the training and validation rows of ``dataset``.

        Args:
            dataset (`datasets.Dataset`): the dataset the split was drawn from.

        Returns:
            `tuple[datasets.Dataset, datasets.Dataset]`: ``(train, val)``.

        Raises:
            TypeError: if ``dataset`` is not a ``datasets.Dataset``.
            ValueError: if an index is out of range for ``dataset``.
        """
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"FewShotSplit.apply expects a datasets.Dataset, got {type(dataset).__name__}.")
        largest = max(self.train_indices + self.val_indices, default=-1)
        if largest >= len(dataset):
            raise ValueError(
                f"The split refers to row {largest} but the dataset has {len(dataset)} rows; it was drawn from "
                "another dataset."
            )
        return dataset.select(self.train_indices), dataset.select(self.val_indices)


def _validated_fields(payload: dict[str, Any], path: str) -> dict[str, Any]:
    expected = {
        "train_indices": list,
        "val_indices": list,
        "shots": int,
        "val_shots": int,
        "seed": int,
        "label_column": str,
        "with_replacement": bool,
        "source_fingerprint": (str, type(None)),
        "num_classes": int,
    }
    values = {}
    for name, kind in expected.items():
        if name not in payload:
            raise ValueError(f"{path}: few-shot split file lacks the field {name!r}.")
        value = payload[name]
        bad_bool = kind is int and isinstance(value, bool)
        if not isinstance(value, kind) or bad_bool:
            wanted = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ValueError(f"{path}: field {name!r} should be {wanted}, got {type(value).__name__} {value!r}.")
        if kind is list and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            raise ValueError(f"{path}: field {name!r} should hold non-negative integers.")
        values[name] = value
    return values


def sample_few_shot(
    dataset: datasets.Dataset | Sequence[int],
    shots: int,
    *,
    seed: int = 0,
    val_shots: int | None = None,
    label_column: str = "label",
    with_replacement: bool = False,
) -> FewShotSplit:
    """Draws ``shots`` training and ``val_shots`` validation images per class, reproducibly from ``seed``.

    Classes are the label ids ``0 .. num_classes - 1`` in increasing order, where ``num_classes`` is the
    ``ClassLabel``'s number of classes if the label column has that feature, and ``max(label) + 1`` otherwise; so a
    label id with no images counts as a class that is short of images. Each class gets its own generator,
    ``numpy.random.default_rng(draw_seed(seed, label))``, so a class's draw does not depend on the other classes.
    Within a class, a random permutation of its rows gives the first ``shots`` rows to training and the next
    ``val_shots`` to validation; the two sets are disjoint. Indices are listed class by class, sorted within a class.

    Only the label column is read (images are never decoded).

    Args:
        dataset (`datasets.Dataset` or sequence of `int`): the pool to sample from, or its labels.
        shots (`int`): training images per class (K), positive.
        seed (`int`, *optional*, defaults to 0): the seed.
        val_shots (`int`, *optional*, defaults to `min(shots, 4)`): validation images per class, 0 or more.
        label_column (`str`, *optional*, defaults to `"label"`): the label column of a ``datasets.Dataset``.
        with_replacement (`bool`, *optional*, defaults to `False`): allow classes with fewer than
            ``shots + val_shots`` images. Such a class first fills its ``shots`` training images without
            repetition; if it has fewer than ``shots`` images, training uses each of them once and then repeats
            images drawn at random. Validation then gets whatever distinct images are left, possibly fewer than
            ``val_shots`` or none.

    Returns:
        `FewShotSplit`: the split, ready to :meth:`~FewShotSplit.save` or :meth:`~FewShotSplit.apply`.

    Raises:
        ValueError: if the dataset is empty, a label is negative, ``shots``/``val_shots`` are out of range, or a
            class has too few images (without ``with_replacement``, or no images at all).
        TypeError: if an argument or a label has the wrong type.
    """
    shots = _check_int("shots", shots, 1)
    val_shots = min(shots, 4) if val_shots is None else _check_int("val_shots", val_shots, 0)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}.")
    if not isinstance(label_column, str):
        raise TypeError(f"label_column must be a str, got {type(label_column).__name__}.")
    if not isinstance(with_replacement, bool):
        raise TypeError(f"with_replacement must be a bool, got {type(with_replacement).__name__}.")

    labels = _read_labels(dataset, label_column)
    if not labels:
        raise ValueError("Cannot sample a few-shot split from an empty dataset.")
    num_classes = _num_classes(dataset, labels, label_column)
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for index, label in enumerate(labels):
        by_class[label].append(index)

    needed = shots + val_shots
    # Check every class before drawing anything, so the error lists all the short classes at once.
    short = [(label, len(rows)) for label, rows in enumerate(by_class) if len(rows) < needed]
    # With replacement only a class without any image is impossible to sample.
    problems = [(label, count) for label, count in short if count == 0] if with_replacement else short
    if problems:
        label, count = problems[0]
        more = f" ({len(problems)} classes are short in total)" if len(problems) > 1 else ""
        hint = (
            "a class with no images cannot be sampled even with replacement"
            if with_replacement
            else "pass with_replacement=True to repeat training images, or lower shots or val_shots"
        )
        raise ValueError(
            f"Class {label} has {count} images but {needed} are needed (shots={shots} + val_shots={val_shots})"
            f"{more}; {hint}."
        )

    train_indices: list[int] = []
    val_indices: list[int] = []
    for label, rows in enumerate(by_class):
        rng = np.random.default_rng(draw_seed(seed, label))
        order = [rows[i] for i in rng.permutation(len(rows))]
        train = order[:shots]
        if len(train) < shots:
            # with_replacement: every image once, then random repeats to reach K.
            train += [rows[i] for i in rng.integers(0, len(rows), size=shots - len(train))]
        train_indices += sorted(train)
        val_indices += sorted(order[shots:needed])

    return FewShotSplit(
        train_indices=train_indices,
        val_indices=val_indices,
        shots=shots,
        val_shots=val_shots,
        seed=int(seed),
        label_column=label_column,
        with_replacement=with_replacement,
        source_fingerprint=_fingerprint(dataset, labels, label_column),
        num_classes=num_classes,
    )
