"""Tip-Adapter's cache augmentation, reimplemented on PIL so that it needs no torchvision.

Tip-Adapter builds its cache from several augmented views of every few-shot image, with torchvision's
``RandomResizedCrop(size, scale=(0.5, 1), ratio=(3/4, 4/3), interpolation=BICUBIC)`` followed by
``RandomHorizontalFlip(p=0.5)``. This module draws the same random numbers in the same order from a
``torch.Generator``, so a view is a pure function of ``(image, size, seed)``: every view can be recomputed
independently (in any order, in any worker process) and a cache built twice is bit-identical.
"""

from __future__ import annotations

import hashlib
import math
import numbers

import torch
from PIL import Image

from .images import to_rgb

__all__ = ["augment_view", "draw_seed", "random_resized_crop_params"]

_SEED_BITS = 63


def _encode_int(value: int) -> bytes:
    # Length-prefixed two's-complement bytes: a one-to-one encoding of any Python int, and concatenating the
    # encodings of a tuple is again one-to-one, so distinct key tuples always hash distinct inputs.
    length = max(1, (value.bit_length() + 8) // 8)
    if length > 255:
        raise ValueError(f"draw_seed keys must fit in 255 bytes, got an integer of {value.bit_length()} bits.")
    return bytes([length]) + value.to_bytes(length, "little", signed=True)


def draw_seed(seed: int, *keys: int) -> int:
    """Mixes a seed and any number of integer keys into a deterministic 63-bit seed.

    Typical uses are ``draw_seed(seed, item_index, view)`` for the ``view``-th augmented view of an item, or
    ``draw_seed(seed, epoch, index)``. The result is a BLAKE2b hash of a one-to-one encoding of the integers (not
    Python's ``hash()``, which is salted per process), so it is the same in every process, on every platform and
    in every Python version. Different key tuples, including tuples of different lengths such as ``(s, 1)`` and
    ``(s, 1, 0)``, hash different inputs, so they give different seeds except with the ~2**-63 probability of a
    hash collision.

    Args:
        seed (`int`): the base seed; any Python int (negative too).
        *keys (`int`): further integers to mix in, in order.

    Returns:
        `int`: a seed in ``[0, 2**63)``, valid for ``torch.Generator.manual_seed`` and ``numpy.random.default_rng``.

    Raises:
        TypeError: if the seed or a key is not an integer (``bool`` is refused too, as it is almost always a bug).
    """
    values = (seed, *keys)
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            what = "seed" if position == 0 else f"key {position - 1}"
            raise TypeError(f"draw_seed expects integers, got {type(value).__name__} for the {what}: {value!r}.")
    payload = b"".join(_encode_int(int(value)) for value in values)
    digest = hashlib.blake2b(payload, digest_size=8, person=b"xmadapter-seed").digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def _check_range(name: str, value: tuple[float, float], positive: bool) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a pair of numbers (low, high), got {value!r}.") from err
    if not (math.isfinite(low) and math.isfinite(high)) or low > high or (low <= 0 if positive else low < 0):
        bound = "0 < low" if positive else "0 <= low"
        raise ValueError(f"{name} must satisfy {bound} <= high (finite), got {value!r}.")
    return low, high


def random_resized_crop_params(
    width: int,
    height: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """The crop box of torchvision's ``RandomResizedCrop.get_params``, drawn from ``generator``.

    Ten attempts draw an area fraction uniformly from ``scale`` and an aspect ratio log-uniformly from ``ratio``;
    the first box that fits is placed uniformly at random. If none fits, the fallback is the largest central crop
    whose aspect ratio lies in ``ratio``. The random numbers are drawn exactly as torchvision draws them (with the
    same float32 arithmetic), so for the same generator state the box is the same as torchvision's.

    Args:
        width (`int`): image width in pixels.
        height (`int`): image height in pixels.
        generator (`torch.Generator`): the source of randomness; it is advanced.
        scale (`tuple[float, float]`, *optional*, defaults to `(0.5, 1.0)`): range of the crop area as a fraction
            of the image area.
        ratio (`tuple[float, float]`, *optional*, defaults to `(3/4, 4/3)`): range of the crop's width / height.

    Returns:
        `tuple[int, int, int, int]`: ``(left, top, crop_width, crop_height)``, inside the image.

    Raises:
        ValueError: if the size is not positive or ``scale``/``ratio`` are not valid ranges.
        TypeError: if the size is not integer or ``generator`` is not a ``torch.Generator``.
    """
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}.")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
    scale = _check_range("scale", scale, positive=False)
    ratio = _check_range("ratio", ratio, positive=True)
    width, height = int(width), int(height)

    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))  # float32, as in torchvision
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        crop_w = int(round(math.sqrt(target_area * aspect_ratio)))
        crop_h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            # torchvision draws the row (top) before the column (left).
            top = int(torch.randint(0, height - crop_h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - crop_w + 1, size=(1,), generator=generator).item())
            return left, top, crop_w, crop_h

    # Fallback to a central crop, clamping the aspect ratio into the allowed range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w = width
        crop_h = int(round(crop_w / min(ratio)))
    elif in_ratio > max(ratio):
        crop_h = height
        crop_w = int(round(crop_h * max(ratio)))
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def augment_view(image: Image.Image, size: int, seed: int) -> Image.Image:
    """One augmented view: random resized crop (bicubic) to ``size`` x ``size``, then a horizontal flip with p=0.5.

    Equivalent to torchvision's ``Compose([RandomResizedCrop(size, scale=(0.5, 1), ratio=(3/4, 4/3),
    interpolation=BICUBIC), RandomHorizontalFlip(p=0.5)])`` with the global generator replaced by
    ``torch.Generator().manual_seed(seed)``. Use :func:`draw_seed` to derive per-item, per-view seeds.

    Args:
        image (`PIL.Image.Image`): the source image; converted with :func:`~xmadapter_hf.data.images.to_rgb` first.
        size (`int`): side of the square output, in pixels.
        seed (`int`): seed of the generator, in ``[0, 2**64)``. The same seed gives identical pixels.

    Returns:
        `PIL.Image.Image`: an ``RGB`` image of size ``(size, size)``.

    Raises:
        TypeError: if ``image`` is not a PIL image or ``size``/``seed`` are not ints.
        ValueError: if ``size`` is not positive or ``seed`` is out of range.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"augment_view expects a PIL.Image.Image, got {type(image).__name__}.")
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise ValueError(f"size must be a positive int, got {type(size).__name__} {size!r}.")
    if size <= 0:
        raise ValueError(f"size must be a positive int, got {size}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}.")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}.")

    image = to_rgb(image)
    generator = torch.Generator().manual_seed(int(seed))
    left, top, crop_w, crop_h = random_resized_crop_params(image.width, image.height, generator)
    # Crop then resize, as torchvision's resized_crop does on PIL images (resizing with a box would also sample
    # pixels outside the box at the edges and give slightly different values).
    view = image.crop((left, top, left + crop_w, top + crop_h)).resize((size, size), Image.Resampling.BICUBIC)
    if torch.rand(1, generator=generator).item() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return view
