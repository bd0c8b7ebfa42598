"""The demo few-shot task: 16 texture classes that pre-training never showed, rendered with a distribution shift.

The classes are the (colour, pattern) combinations of `textures.HELD_OUT_COMBINATIONS`, named as a user would type
them ("red zigzag") and sorted alphabetically, so that label ids are the ones `load_dataset("imagefolder", ...)`
gives the exported folders. Every image of the task uses the ``"photo"`` rendering (lower contrast, colour cast,
lighting gradient, blur, noise), which the demo CLIP never saw in pre-training.

Each split is a fixed pool of images, disjoint from the others (the image of item ``i`` of class ``c`` in split
``s`` is drawn from its own seed ``(TASK_SEED, s, c, i)``): `train` 64 per class, `validation` 16 per class,
`test` 25 per class. ``shots=K`` draws K images per class from a split's pool with ``seed``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .textures import BACKGROUNDS, HELD_OUT_COMBINATIONS, TextureAttributes, render

__all__ = ["DEMO_CLASSES", "IMAGE_SIZE", "POOL_SIZES", "demo_images", "demo_task", "export_images"]

#: The side of the demo images and of the demo CLIP's input, in pixels.
IMAGE_SIZE = 32
#: Images per class in each split's pool.
POOL_SIZES = {"train": 64, "validation": 16, "test": 25}
SPLITS = tuple(POOL_SIZES)
#: The first key of every image seed of the task (pre-training uses another).
TASK_SEED = 14
#: Class names, in label order: "<colour> <pattern>", sorted (the order `imagefolder` gives).
DEMO_CLASSES: tuple[str, ...] = tuple(sorted(f"{colour} {pattern}" for colour, pattern in HELD_OUT_COMBINATIONS))


def _check_split(split: str) -> None:
    if split not in POOL_SIZES:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")


@functools.lru_cache(maxsize=8)
def _pool(split: str, rendering: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole pool of ``split``: images (n, H, W, 3) uint8 and labels (n,), class-major."""
    split_key = SPLITS.index(split)
    backgrounds = list(BACKGROUNDS)
    images, labels = [], []
    for label, name in enumerate(DEMO_CLASSES):
        colour, pattern = name.split(" ")
        for item in range(POOL_SIZES[split]):
            rng = np.random.default_rng([TASK_SEED, split_key, label, item])
            background = backgrounds[int(rng.integers(len(backgrounds)))]
            images.append(render(TextureAttributes(colour, pattern, background), rng, IMAGE_SIZE, rendering))
            labels.append(label)
    images_array = np.stack(images)
    images_array.setflags(write=False)
    labels_array = np.array(labels, dtype=np.int64)
    labels_array.setflags(write=False)
    return images_array, labels_array


def _select(split: str, shots: int | None, seed: int) -> np.ndarray:
    """Indices into the pool of ``split``: all of it, or ``shots`` per class drawn with ``seed`` (in class order)."""
    size = POOL_SIZES[split]
    if shots is None:
        return np.arange(size * len(DEMO_CLASSES))
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or not 1 <= shots <= size:
        raise ValueError(f"`shots` must be an int in [1, {size}] for the {split} split (or None), got {shots!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
    rng = np.random.default_rng([TASK_SEED, 1000 + SPLITS.index(split), int(seed)])
    return np.concatenate(
        [label * size + np.sort(rng.permutation(size)[:shots]) for label in range(len(DEMO_CLASSES))]
    )


def demo_images(
    split: str = "train", shots: int | None = None, seed: int = 0, rendering: str = "photo"
) -> tuple[np.ndarray, np.ndarray]:
    """The images (n, 32, 32, 3) uint8 and labels (n,) int64 of `demo_task`, as arrays (read-only)."""
    _check_split(split)
    images, labels = _pool(split, rendering)
    index = _select(split, shots, seed)
    return images[index], labels[index]


def demo_task(split: str = "train", shots: int | None = None, seed: int = 0, rendering: str = "photo"):
    """The demo task's ``split`` as a `datasets.Dataset` with an `image` column and a `ClassLabel` `label` column.

    Args:
        split (`str`, *optional*, defaults to `"train"`): `"train"`, `"validation"` or `"test"`.
        shots (`int`, *optional*): images per class, drawn from the split's pool with ``seed``; `None` = the pool.
        seed (`int`, *optional*, defaults to 0): the draw of the ``shots`` images (the pools themselves are fixed).
        rendering (`str`, *optional*, defaults to `"photo"`): `"photo"` (the task's shifted rendering) or `"clean"`
            (the rendering of pre-training, to measure what the shift costs).

    Example:

    ```python
    >>> from xmadapter_hf.demo import demo_task
    >>> train = demo_task("train", shots=4, seed=0)
    >>> len(train), train.features["label"].names[:2]
    (64, ['blue grid', 'blue stripes'])
    ```
    """
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    images, labels = demo_images(split, shots, seed, rendering)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=list(DEMO_CLASSES))})
    pictures = [Image.fromarray(image) for image in images]
    return Dataset.from_dict({"image": pictures, "label": labels.tolist()}, features=features)


def export_images(
    directory: str | os.PathLike,
    shots: int | None = 16,
    seed: int = 0,
    splits: tuple[str, ...] = SPLITS,
    rendering: str = "photo",
) -> Path:
    """Writes the demo task as PNG files in the `datasets` imagefolder layout: ``directory/<split>/<class>/*.png``.

    ``shots`` (and ``seed``) apply to the `train` split only; the other splits are written whole. Then
    `load_dataset("imagefolder", data_dir=directory)` reads it, with the class names as its `ClassLabel` names.
    Existing files of the same names are overwritten; nothing else in ``directory`` is touched.

    Returns:
        `pathlib.Path`: ``directory``.
    """
    from PIL import Image

    directory = Path(directory)
    for split in splits:
        _check_split(split)
    for split in splits:
        images, labels = demo_images(split, shots if split == "train" else None, seed, rendering)
        counts = dict.fromkeys(range(len(DEMO_CLASSES)), 0)
        for image, label in zip(images, labels):
            folder = directory / split / DEMO_CLASSES[label]
            if counts[int(label)] == 0:
                folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{counts[int(label)]:03d}.png")
            counts[int(label)] += 1
    return directory
