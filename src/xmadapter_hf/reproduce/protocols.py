"""The evaluation protocols of the papers, built on the readers' splits.

- **Few-shot** ([`few_shot_task`]): K training images per class from the train split, drawn from the seed alone
  (``xmadapter_hf.data.splits.sample_few_shot``, with repeats only for a class short of K images), never read from
  CoOp's pickled subsets. Validation follows one of two rules, recorded in the task: ``"coop"``, min(K, 4) images
  per class from the val split (CoOp); ``"tip-adapter"``, the whole val split (Tip-Adapter). ImageNet has no val
  split (CoOp and Tip-Adapter validate on its test set): there, validation is min(K, 4) images per class from the
  train split, disjoint from the K training images, under both rules.
- **Base-to-novel** ([`base_to_novel_task`]): CoCoOp's split, base = the first ceil(N/2) label ids, each half
  relabelled from 0; report base, novel and their [`harmonic_mean`].
- **Domain generalisation** ([`domain_generalisation_task`]): adapt on ImageNet, test on ImageNet-V2/-Sketch/-A/-R,
  each with its own classes (all 1000, or the 200 present as folders in -A and -R) and the ImageNet label id of
  each.
- **Meta-Adapter's own protocol** ([`meta_adapter_task`]): its hand-picked base/novel classes, supports from the
  val split, test images of the novel classes, logits over all classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..data.splits import sample_few_shot
from ._data import load_data
from .records import BenchmarkDataset, ImageSplit

__all__ = [
    "DOMAIN_GENERALISATION_TARGETS",
    "META_ADAPTER_DATASETS",
    "VALIDATION_RULES",
    "BaseToNovelTask",
    "DomainGeneralisationTask",
    "FewShotTask",
    "MetaAdapterTask",
    "base_novel_classes",
    "base_to_novel_task",
    "domain_generalisation_task",
    "few_shot_task",
    "harmonic_mean",
    "meta_adapter_task",
]

VALIDATION_RULES = ("coop", "tip-adapter")
DOMAIN_GENERALISATION_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
META_ADAPTER_DATASETS = ("caltech101", "dtd", "eurosat", "fgvc", "imagenet", "oxford_pets", "sun397", "ucf101")


def _draw(split: ImageSplit, shots: int, seed: int, val_shots: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """``shots`` (then ``val_shots`` more, disjoint) images per class of ``split``, from the seed alone."""
    drawn = sample_few_shot(split.labels, shots, seed=seed, val_shots=val_shots, with_replacement=True)
    return split.select(drawn.train_indices), split.select(drawn.val_indices)


@dataclass(frozen=True)
class FewShotTask:
    """A few-shot task: K training images per class, a validation set, the full test split.

    Args:
        dataset (`str`): canonical dataset name.
        shots (`int`): training images per class (K).
        seed (`int`): the seed of the draw.
        validation (`str`): the validation rule, ``"coop"`` or ``"tip-adapter"``.
        val_source (`str`): where the validation images come from, ``"val"`` or ``"train"`` (ImageNet, disjoint
            from the training images).
        val_shots (`int` or `None`): validation images drawn per class; ``None`` when the whole val split is used.
        class_names (`tuple[str, ...]`): cleaned class names, one per label id.
        train (`ImageSplit`), val (`ImageSplit`), test (`ImageSplit`): the images; each record keeps the identity it
            has in the full split.
    """

    dataset: str
    shots: int
    seed: int
    validation: str
    val_source: str
    val_shots: int | None
    class_names: tuple[str, ...]
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit

    def restrict_classes(self, label_ids: Sequence[int]) -> FewShotTask:
        """The same task on the classes ``label_ids`` only, relabelled ``label_ids[i] -> i``."""
        names = tuple(self.class_names[i] for i in label_ids)
        return replace(
            self,
            class_names=names,
            train=self.train.restrict_classes(label_ids, names),
            val=self.val.restrict_classes(label_ids, names),
            test=self.test.restrict_classes(label_ids, names),
        )

    def indices(self) -> dict[str, list[int]]:
        """Per split, each image's index in the full split: what to record next to results to audit the draw."""
        return {name: [r.index for r in getattr(self, name)] for name in ("train", "val", "test")}


def few_shot_task(dataset: BenchmarkDataset, shots: int, seed: int, *, validation: str = "coop") -> FewShotTask:
    """Draws the few-shot task of ``dataset`` for ``(shots, seed)``; the same arguments give the same images.

    Each class's K images are drawn by ``numpy.random.default_rng(draw_seed(seed, label))`` from the class's images
    in the train split (``xmadapter_hf.data.splits.sample_few_shot``); a class with fewer than K images uses each once,
    then random repeats (CoOp repeats too). The ``"coop"`` rule draws min(K, 4) validation images per class from
    the val split with the same seed; ``"tip-adapter"`` keeps the whole val split. Datasets without a val split
    (ImageNet) draw min(K, 4) per class from the train split, disjoint from the K training images, under either
    rule (the papers' code validates on the test set there). The test split is kept whole.

    Args:
        dataset (`BenchmarkDataset`): from [`read_dataset`] or [`read_image_folder`]; needs ``train`` and ``test``.
        shots (`int`): K, positive.
        seed (`int`): the seed (CoOp's runs use 1, 2, 3).
        validation (`str`, *optional*, defaults to `"coop"`): ``"coop"`` or ``"tip-adapter"``.

    Returns:
        [`FewShotTask`]

    Raises:
        ValueError: unknown rule, bad ``shots``, or a class without any training image.
        KeyError: the dataset has no train or test split (the ImageNet variants are test-only).
    """
    if validation not in VALIDATION_RULES:
        raise ValueError(f"validation must be one of {VALIDATION_RULES}, got {validation!r}.")
    train_split, test = dataset.split("train"), dataset.split("test")
    if "val" not in dataset.splits:
        # The K training images are those drawn without validation; the val images follow them in each class's
        # permutation, so they are disjoint from them.
        val_source, val_shots = "train", min(shots, 4)
        train, val = _draw(train_split, shots, seed, val_shots=val_shots)
    else:
        train = _draw(train_split, shots, seed)[0]
        if validation == "coop":
            val_source, val_shots = "val", min(shots, 4)
            val = _draw(dataset.splits["val"], val_shots, seed)[0]
        else:
            val_source, val_shots, val = "val", None, dataset.splits["val"]
    return FewShotTask(
        dataset.name, shots, seed, validation, val_source, val_shots, dataset.class_names, train, val, test
    )


def harmonic_mean(base: float, novel: float) -> float:
    """``2 * base * novel / (base + novel)``, the base-to-novel summary (0 when both are 0).

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import harmonic_mean
    >>> round(harmonic_mean(80.0, 60.0), 4)
    68.5714
    ```
    """
    if base < 0 or novel < 0:
        raise ValueError(f"Accuracies must be non-negative, got base={base}, novel={novel}.")
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def base_novel_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """CoCoOp's class split: base = label ids ``0 .. ceil(N/2) - 1``, novel = the rest.

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import base_novel_classes
    >>> base_novel_classes(5)
    ([0, 1, 2], [3, 4])
    ```
    """
    if num_classes < 2:
        raise ValueError(f"A base-to-novel split needs at least 2 classes, got {num_classes}.")
    half = math.ceil(num_classes / 2)
    return list(range(half)), list(range(half, num_classes))


@dataclass(frozen=True)
class BaseToNovelTask:
    """A few-shot task split into base and novel classes (CoCoOp).

    Args:
        base_label_ids (`tuple[int, ...]`), novel_label_ids (`tuple[int, ...]`): the classes' ids in the full task.
        base (`FewShotTask`): the task on the base classes, relabelled from 0; train on ``base.train``, select on
            ``base.val``, report accuracy on ``base.test``.
        novel (`FewShotTask`): the task on the novel classes, relabelled from 0; only ``novel.test`` (and the class
            names) belong to the protocol: novel classes are never trained on.
    """

    base_label_ids: tuple[int, ...]
    novel_label_ids: tuple[int, ...]
    base: FewShotTask
    novel: FewShotTask


def base_to_novel_task(task: FewShotTask) -> BaseToNovelTask:
    """Splits a few-shot task into CoCoOp's base and novel halves, each relabelled from 0."""
    base, novel = base_novel_classes(len(task.class_names))
    return BaseToNovelTask(tuple(base), tuple(novel), task.restrict_classes(base), task.restrict_classes(novel))


@dataclass(frozen=True)
class DomainGeneralisationTask:
    """A target test set for a model adapted on ImageNet.

    Args:
        target (`str`): ``"imagenetv2"``, ``"imagenet_sketch"``, ``"imagenet_a"`` or ``"imagenet_r"``.
        class_names (`tuple[str, ...]`): the target's classes (labels of ``test`` index them), as CoOp uses them.
        source_label_ids (`tuple[int, ...]`): the ImageNet label id of each target class; to score a 1000-way
            ImageNet classifier, keep its logits at these ids (``logits[:, source_label_ids]``).
        test (`ImageSplit`): the target's images, labelled by target class.
    """

    target: str
    class_names: tuple[str, ...]
    source_label_ids: tuple[int, ...]
    test: ImageSplit


def domain_generalisation_task(source: BenchmarkDataset, target: BenchmarkDataset) -> DomainGeneralisationTask:
    """Pairs a target dataset with ImageNet: the target's classes and the ImageNet label id of each.

    ImageNet-V2 and -Sketch have all of ImageNet's classes; ImageNet-A and -R the 200 whose WordNet-id folders they
    hold, numbered 0 .. 199 in sorted order as CoOp does. Classes are matched by WordNet id (``class_keys``).

    Raises:
        ValueError: ``source`` is not ImageNet, ``target`` not one of the four variants, or a target class is not
            among the source's classes.
    """
    if source.name != "imagenet":
        raise ValueError(f"Domain generalisation adapts on ImageNet; the source given is {source.name!r}.")
    if target.name not in DOMAIN_GENERALISATION_TARGETS:
        raise ValueError(f"The target must be one of {DOMAIN_GENERALISATION_TARGETS}, got {target.name!r}.")
    label_of = {key: label for label, key in enumerate(source.class_keys)}
    missing = [key for key in target.class_keys if key not in label_of]
    if missing:
        raise ValueError(f"{target.name} classes {missing[:5]} are not ImageNet classes of the source dataset.")
    ids = tuple(label_of[key] for key in target.class_keys)
    return DomainGeneralisationTask(target.name, target.class_names, ids, target.split("test"))


@dataclass(frozen=True)
class MetaAdapterTask:
    """Meta-Adapter's protocol on one dataset; every label indexes all ``class_names`` (logits over all classes).

    Args:
        dataset (`str`), shots (`int`), seed (`int`): what was drawn.
        official (`bool`): whether the official code's per-dataset quirks were reproduced (see ``notes``).
        class_names (`tuple[str, ...]`): all classes of the dataset.
        base_label_ids (`tuple[int, ...]`), novel_label_ids (`tuple[int, ...]`): Meta-Adapter's lists.
        train (`ImageSplit`): meta-training images (K per base class from the train split).
        support (`ImageSplit`): the few-shot supports that form the cache (K per class, all classes).
        test (`ImageSplit`): the test images (K per novel class from the test split; ImageNet: all of them).
        notes (`tuple[str, ...]`): how this task departs from the plain protocol, if at all.
    """

    dataset: str
    shots: int
    seed: int
    official: bool
    class_names: tuple[str, ...]
    base_label_ids: tuple[int, ...]
    novel_label_ids: tuple[int, ...]
    train: ImageSplit
    support: ImageSplit
    test: ImageSplit
    notes: tuple[str, ...]


def _meta_adapter_classes(dataset: BenchmarkDataset, require_all_classes: bool) -> tuple[list[int], list[int]]:
    lists = load_data("meta_adapter_classes.json")["datasets"][dataset.name]
    if dataset.name == "imagenet":
        base, novel = lists["base_label_ids"], lists["novel_label_ids"]
        if require_all_classes and dataset.num_classes != len(base) + len(novel):
            raise ValueError(f"Meta-Adapter's ImageNet lists cover 1000 classes, the dataset {dataset.num_classes}.")
        return sorted(i for i in base if i < dataset.num_classes), sorted(i for i in novel if i < dataset.num_classes)
    label_of = {name: label for label, name in enumerate(dataset.source_class_names)}
    stray = [name for name in label_of if name not in lists["base_classes"] + lists["novel_classes"]]
    absent = [name for name in lists["base_classes"] + lists["novel_classes"] if name not in label_of]
    if stray or (absent and require_all_classes):
        raise ValueError(
            f"The classes of {dataset.name} do not match Meta-Adapter's lists (its datasets/*.py): not in its lists "
            f"{stray[:5]}, missing from the dataset {absent[:5]}. Its lists name classes as CoOp's split files do."
        )
    base = sorted(label_of[n] for n in lists["base_classes"] if n in label_of)
    return base, sorted(label_of[n] for n in lists["novel_classes"] if n in label_of)


def meta_adapter_task(
    dataset: BenchmarkDataset,
    shots: int = 16,
    seed: int = 1,
    *,
    official: bool = True,
    require_all_classes: bool = True,
) -> MetaAdapterTask:
    """Meta-Adapter's own protocol (ArsenalCheng/Meta-Adapter ``main.py`` and ``datasets/*.py``).

    Meta-train on K images per base class (train split); build the cache from K supports per class of *all*
    classes, drawn from the val split (ImageNet: from the train split, disjoint from the meta-training images; the
    official code draws them independently); test on K images per novel class from the test split (ImageNet: all
    test images of the novel classes), scoring logits over all classes. Draws are this library's seeded ones, so
    the images differ from the official run (``random.seed(1)``); the rules are the same.

    With ``official=True`` the official code's per-dataset behaviour is kept and listed in ``notes``: its OxfordPets
    and EuroSAT readers meta-train on all classes (the base filter's result is overwritten), its OxfordPets reader
    also tests on K images of all classes, and its UCF101 reader draws 16 supports per class whatever K.
    ``official=False`` applies the base/novel filters everywhere and K supports.

    Args:
        dataset (`BenchmarkDataset`): one of [`META_ADAPTER_DATASETS`], read with [`read_dataset`].
        shots (`int`, *optional*, defaults to 16), seed (`int`, *optional*, defaults to 1): K and the seed.
        official (`bool`, *optional*, defaults to `True`): reproduce the official per-dataset quirks.
        require_all_classes (`bool`, *optional*, defaults to `True`): require every class of Meta-Adapter's lists
            in the dataset (off for miniature data); a dataset class in neither list is always an error.

    Raises:
        ValueError: a dataset Meta-Adapter does not cover, or classes that do not match its lists.
    """
    if dataset.name not in META_ADAPTER_DATASETS:
        raise ValueError(f"Meta-Adapter's protocol covers {META_ADAPTER_DATASETS}, not {dataset.name!r}.")
    base, novel = _meta_adapter_classes(dataset, require_all_classes)
    notes = []
    trains_all = official and dataset.name in ("oxford_pets", "eurosat")
    tests_all = official and dataset.name == "oxford_pets"
    support_shots = 16 if official and dataset.name == "ucf101" else shots
    if trains_all:
        notes.append("official: meta-trains on all classes (its reader overwrites the base-class filter)")
    if tests_all:
        notes.append("official: tests on K images of every class (its reader overwrites the novel-class filter)")
    if support_shots != shots:
        notes.append("official: 16 supports per class whatever K (its UCF101 reader)")
    train_pool = dataset.split("train")
    if dataset.name == "imagenet":
        train, support = _draw(train_pool, shots, seed, val_shots=support_shots)
        notes.append("ImageNet: supports from the train split, disjoint from the meta-training images")
        test = dataset.split("test").keep_classes(novel)
    else:
        train = _draw(train_pool, shots, seed)[0]
        support = _draw(dataset.split("val"), support_shots, seed)[0]
        test = _draw(dataset.split("test"), shots, seed)[0]
        test = test if tests_all else test.keep_classes(novel)
    train = train if trains_all else train.keep_classes(base)
    return MetaAdapterTask(
        dataset.name,
        shots,
        seed,
        official,
        dataset.class_names,
        tuple(base),
        tuple(novel),
        train,
        support,
        test,
        tuple(notes),
    )
