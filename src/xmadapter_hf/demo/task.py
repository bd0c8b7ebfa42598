"""The demo few-shot tasks: 16 texture classes that pre-training never showed, under two kinds of shift.

The classes are the (colour, pattern) combinations of `textures.HELD_OUT_COMBINATIONS`, named as a user would type
them ("red zigzag") and sorted alphabetically, so that label ids are the ones `load_dataset("imagefolder", ...)`
gives the exported folders. Two tasks share them (`DEMO_TASKS`), each with its own rendering, which the demo CLIP
never saw in pre-training:

- ``"photo"``, the demo task: the ``"photo"`` rendering (a photometric shift: lower contrast, colour cast, lighting
  gradient, blur, noise);
- ``"sketch"``, the second task: the ``"sketch"`` rendering (a shift of style and geometry: only the pattern's
  outlines, seen magnified and tilted in depth, in clean colours). Its zero-shot accuracy is lower than the photo
  task's and few-shot images gain far more on it (docs/demo.md).

Each split of a task is a fixed pool of images, disjoint from the other splits and from the other task's (the image
of item ``i`` of class ``c`` in split ``s`` is drawn from its own seed ``(task key, s, c, i)``); ``shots=K`` draws K
images per class from a split's pool with ``seed``. ``rendering="clean"`` renders the same pools as pre-training
saw them (the same textures, without the shift), to measure what the shift costs.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .textures import BACKGROUNDS, HELD_OUT_COMBINATIONS, TextureAttributes, render

__all__ = [
    "DEMO_CLASSES",
    "DEMO_TASKS",
    "IMAGE_SIZE",
    "POOL_SIZES",
    "DemoTaskSpec",
    "demo_images",
    "demo_task",
    "export_images",
]

#: The side of the demo images and of the demo CLIP's input, in pixels.
IMAGE_SIZE = 32
#: Images per class in each split's pool of the ``"photo"`` task (the sketch task's: ``DEMO_TASKS["sketch"]``).
POOL_SIZES = {"train": 64, "validation": 16, "test": 25}
SPLITS = tuple(POOL_SIZES)
#: The first key of every image seed of the photo task (pre-training uses 7, the sketch task 15).
TASK_SEED = 14
#: Class names, in label order: "<colour> <pattern>", sorted (the order `imagefolder` gives).
DEMO_CLASSES: tuple[str, ...] = tuple(sorted(f"{colour} {pattern}" for colour, pattern in HELD_OUT_COMBINATIONS))


@dataclass(frozen=True)
class DemoTaskSpec:
    """A few-shot task of the demo CLIP over `DEMO_CLASSES`.

    Args:
        name (`str`): the task's name, the `task` argument of `demo_task`.
        rendering (`str`): its shifted rendering (`textures.RENDERINGS`).
        seed_key (`int`): the first key of every image seed and shot draw of the task.
        pool_sizes (`Mapping[str, int]`): images per class in each split's pool (`train`, `validation`, `test`).
    """

    name: str
    rendering: str
    seed_key: int
    pool_sizes: Mapping[str, int]


#: The demo tasks by name (read-only): ``"photo"`` (the demo task) and ``"sketch"`` (the second task of the accuracy
#: study; its test pool is twice the photo task's, as rendering and embedding it is cheap and halves the variance).
DEMO_TASKS: Mapping[str, DemoTaskSpec] = MappingProxyType(
    {
        "photo": DemoTaskSpec("photo", "photo", TASK_SEED, MappingProxyType(dict(POOL_SIZES))),
        "sketch": DemoTaskSpec("sketch", "sketch", 15, MappingProxyType({"train": 64, "validation": 16, "test": 50})),
    }
)


def _spec(task: str, rendering: str | None) -> tuple[DemoTaskSpec, str]:
    """The task's spec and the rendering to use (the task's own by default), both checked."""
    if not isinstance(task, str) or task not in DEMO_TASKS:
        raise ValueError(f"`task` must be one of {tuple(DEMO_TASKS)}, got {task!r}.")
    spec = DEMO_TASKS[task]
    rendering = spec.rendering if rendering is None else rendering
    if rendering not in (spec.rendering, "clean"):
        raise ValueError(
            f"`rendering` must be {spec.rendering!r} (the {task} task's), 'clean' or None for the {task} task, "
            f"got {rendering!r}."
        )
    return spec, rendering


def _check_split(split: str) -> None:
    if split not in POOL_SIZES:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")


@functools.lru_cache(maxsize=12)
def _pool(task: str, split: str, rendering: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole pool of ``split`` of ``task``: images (n, H, W, 3) uint8 and labels (n,), class-major."""
    spec = DEMO_TASKS[task]
    split_key = SPLITS.index(split)
    backgrounds = list(BACKGROUNDS)
    images, labels = [], []
    for label, name in enumerate(DEMO_CLASSES):
        colour, pattern = name.split(" ")
        for item in range(spec.pool_sizes[split]):
            rng = np.random.default_rng([spec.seed_key, split_key, label, item])
            background = backgrounds[int(rng.integers(len(backgrounds)))]
            images.append(render(TextureAttributes(colour, pattern, background), rng, IMAGE_SIZE, rendering))
            labels.append(label)
    images_array = np.stack(images)
    images_array.setflags(write=False)
    labels_array = np.array(labels, dtype=np.int64)
    labels_array.setflags(write=False)
    return images_array, labels_array


def _select(spec: DemoTaskSpec, split: str, shots: int | None, seed: int) -> np.ndarray:
    """Indices into the pool of ``split``: all of it, or ``shots`` per class drawn with ``seed`` (in class order)."""
    size = spec.pool_sizes[split]
    if shots is None:
        return np.arange(size * len(DEMO_CLASSES))
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or not 1 <= shots <= size:
        raise ValueError(f"`shots` must be an int in [1, {size}] for the {split} split (or None), got {shots!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
    rng = np.random.default_rng([spec.seed_key, 1000 + SPLITS.index(split), int(seed)])
    return np.concatenate(
        [label * size + np.sort(rng.permutation(size)[:shots]) for label in range(len(DEMO_CLASSES))]
    )


def demo_images(
    split: str = "train", shots: int | None = None, seed: int = 0, rendering: str | None = None, task: str = "photo"
) -> tuple[np.ndarray, np.ndarray]:
    """The images (n, 32, 32, 3) uint8 and labels (n,) int64 of `demo_task`, as arrays (read-only)."""
    spec, rendering = _spec(task, rendering)
    _check_split(split)
    images, labels = _pool(task, split, rendering)
    index = _select(spec, split, shots, seed)
    return images[index], labels[index]


def demo_task(
    split: str = "train", shots: int | None = None, seed: int = 0, rendering: str | None = None, task: str = "photo"
):
    """A demo task's ``split`` as a `datasets.Dataset` with an `image` column and a `ClassLabel` `label` column.

    Args:
        split (`str`, *optional*, defaults to `"train"`): `"train"`, `"validation"` or `"test"`.
        shots (`int`, *optional*): images per class, drawn from the split's pool with ``seed``; `None` = the pool.
        seed (`int`, *optional*, defaults to 0): the draw of the ``shots`` images (the pools themselves are fixed).
        rendering (`str`, *optional*): the task's shifted rendering (its name: `"photo"` or `"sketch"`, the
            default) or `"clean"` (the same images in the rendering of pre-training, to measure what the shift
            costs).
        task (`str`, *optional*, defaults to `"photo"`): `"photo"` (the demo task) or `"sketch"` (the second task:
            the same classes drawn as magnified, tilted outlines; see `DEMO_TASKS` and docs/demo.md).

    Example:

    ```python
    >>> from xmadapter_hf.demo import demo_task
    >>> train = demo_task("train", shots=4, seed=0)
    >>> len(train), train.features["label"].names[:2]
    (64, ['blue grid', 'blue stripes'])
    >>> len(demo_task("test", task="sketch"))
    800
    ```
    """
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    images, labels = demo_images(split, shots, seed, rendering, task)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(DEMO_CLASSES))})
    pictures = [Image.fromarray(image) for image in images]
    return Dataset.from_dict({"image": pictures, "label": labels.tolist()}, features=features)


def export_images(
    directory: str | os.PathLike,
    shots: int | None = 16,
    seed: int = 0,
    splits: tuple[str, ...] = SPLITS,
    rendering: str | None = None,
    task: str = "photo",
) -> Path:
    """Writes a demo task (``task`` and ``rendering`` as in `demo_task`) as PNG files in the `datasets` imagefolder
    layout: ``directory/<split>/<class>/*.png``.

    ``shots`` (and ``seed``) apply to the `train` split only; the other splits are written whole. Then
    `load_dataset("imagefolder", data_dir=directory)` reads it, with the class names as its `ClassLabel` names.
    Existing files of the same names are overwritten; nothing else in ``directory`` is touched.

    Returns:
        `pathlib.Path`: ``directory``.
    """
    from PIL import Image

    directory = Path(directory)
    _spec(task, rendering)
    for split in splits:
        _check_split(split)
    for split in splits:
        images, labels = demo_images(split, shots if split == "train" else None, seed, rendering, task)
        counts = dict.fromkeys(range(len(DEMO_CLASSES)), 0)
        for image, label in zip(images, labels):
            folder = directory / split / DEMO_CLASSES[label]
            if counts[int(label)] == 0:
                folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{counts[int(label)]:03d}.png")
            counts[int(label)] += 1
    return directory
