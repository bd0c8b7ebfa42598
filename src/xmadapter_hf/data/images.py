"""Loading images from any of the forms a few-shot pipeline meets, and converting every PIL mode to 8-bit RGB.

CLIP's image processor expects 8-bit RGB. ``PIL.Image.convert("RGB")`` alone gets several modes wrong for that
purpose: it drops alpha onto black (so a transparent logo becomes a black square), clips 16-bit pixels instead of
scaling them (so a 16-bit PNG turns almost white), and truncates float images. :func:`to_rgb` fixes those cases so
the same picture gives the same embedding whichever format it was saved in, and :func:`load_image` turns unreadable
files and decompression bombs into errors that name the file instead of failing deep inside a training loop.

Why not `datasets.Image(mode="RGB")` and the image processor's own conversion: they agree with this module on 8-bit
RGB pictures, and use PIL's `convert("RGB")` for the rest, with the three faults above (a test shows each), and
`datasets` raises its decoder's error without the file's name. So extraction reads a `datasets` image column undecoded
(`decode=False`) and decodes it here.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["load_image", "to_rgb"]

# The background that transparent pixels are composited on. White rather than black because that is how viewers
# (and the web pages most few-shot images come from) show transparency, so it is what the picture "looks like".
_BACKGROUND = (255, 255, 255, 255)

# Errors PIL's decoders raise on a non-image or a damaged file. ``Image.open`` itself catches the same non-OSError
# kinds while probing formats; ``zlib.error`` comes out of the PNG decoder and is not an ``OSError``.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Converts an image with transparency to RGBA and alpha-composites it on an opaque white background."""
    if image.mode == "La":
        # PIL cannot convert premultiplied "La" straight to RGBA; "LA" undoes the premultiplication first.
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _BACKGROUND)
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Converts a PIL image of any common mode to an 8-bit ``RGB`` image.

    - ``RGB`` without transparency is returned as is (the same object).
    - ``1``, ``L``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: PIL's own conversion.
    - Modes with an alpha band (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``), ``P`` palette images, and ``L``/``RGB``
      images with a ``transparency`` key: go through ``RGBA`` and are composited on white, so a fully transparent
      pixel becomes (255, 255, 255). A palette image without transparency is simply expanded.
    - 16-bit integer modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) and 32-bit ``I``: values are read as 16-bit
      (``I`` is what PIL decodes 16-bit PNG/TIFF files to), clipped to 0..65535 and mapped to ``round(v / 257)``,
      so a picture stored as ``x * 257`` converts back to exactly ``x``.
    - ``F`` (float): values are taken to be on the 0..255 scale, clipped and rounded to the nearest integer
      (NaN becomes 0).

    Args:
        image (`PIL.Image.Image`): the image to convert. It is not modified.

    Returns:
        `PIL.Image.Image`: an ``RGB`` image of the same size.

    Raises:
        TypeError: if ``image`` is not a PIL image.
        ValueError: if the image has a mode PIL cannot convert to RGB.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"to_rgb expects a PIL.Image.Image, got {type(image).__name__}.")
    mode = image.mode
    bands = image.getbands()
    has_transparency_key = mode in ("L", "RGB", "P") and "transparency" in image.info
    if mode == "RGB" and not has_transparency_key:
        return image
    if "A" in bands or "a" in bands or mode == "P" or has_transparency_key:
        return _composite_on_white(image)
    if mode == "I" or mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        # (v + 128) // 257 is round(v / 257) in integers; v / 257 never lands on .5 for an integer v, so no ties.
        gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"Cannot convert an image of mode {mode!r} to RGB: {err}") from err


def _bomb_error(name: str, err: Exception, limit: int) -> ValueError:
    # PIL raises the bomb check from inside Image.open, before we hold an image object, so its message is the
    # only place the pixel count is available.
    match = re.search(r"\((\d+) pixels\)", str(err))
    pixels = match.group(1) if match else "unknown"
    return ValueError(
        f"Image {name} has {pixels} pixels, above PIL's decompression-bomb limit of {limit} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS). If you trust the file, raise the limit, e.g. "
        "`PIL.Image.MAX_IMAGE_PIXELS = 300_000_000`, or set it to None to disable the check."
    )


def _decode(fp: Any, name: str) -> Image.Image:
    """Opens and fully decodes an image from a binary file object, then converts it to RGB."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit (and raises above 2x); either way the file is too large
            # to decode safely, so the warning is turned into an exception for this call only.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
            # Image.open only reads the header; load() decodes the pixels so truncated files fail here.
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _bomb_error(name, err, limit) from err
    except _DECODE_ERRORS as err:
        raise ValueError(f"{name} is not a readable image ({type(err).__name__}: {err}).") from err
    try:
        return to_rgb(image)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise TypeError(f"load_image expects a uint8 numpy array, got dtype {array.dtype}.")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(
            f"load_image expects a numpy array of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"load_image got an empty numpy array of shape {array.shape}.")
    # fromarray infers L / RGB / RGBA from the shape of a uint8 array.
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def load_image(source: str | os.PathLike | bytes | Image.Image | dict | np.ndarray) -> Image.Image:
    """Opens an image from any of the usual sources and returns it fully decoded as 8-bit RGB.

    EXIF orientation is deliberately not applied, like torchvision's default loader, so that embeddings match
    those of reference implementations that load images the same way.

    Args:
        source (`str`, `os.PathLike`, `bytes`, `PIL.Image.Image`, `dict` or `numpy.ndarray`):
            a file path; the encoded file contents; a PIL image; a dict ``{"bytes": ..., "path": ...}`` as the
            ``datasets`` ``Image`` feature gives with ``decode=False`` (the bytes are used when present, the path
            otherwise); or a uint8 array of shape ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``.

    Returns:
        `PIL.Image.Image`: an ``RGB`` image (see :func:`to_rgb` for how each mode is converted).

    Raises:
        ValueError: if the file is not a readable image (the message names the path, or ``<bytes>``), if it is
            larger than ``PIL.Image.MAX_IMAGE_PIXELS``, if a dict has neither bytes nor a path, or if an array
            has the wrong shape.
        TypeError: if ``source`` is of an unsupported type, or an array is not uint8.
        OSError: if the path cannot be opened (e.g. ``FileNotFoundError``).
    """
    if isinstance(source, Image.Image):
        try:
            source.load()
        except _DECODE_ERRORS as err:
            name = getattr(source, "filename", "") or "<PIL image>"
            raise ValueError(f"{name} is not a readable image ({type(err).__name__}: {err}).") from err
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, dict):
        data, path = source.get("bytes"), source.get("path")
        if data is not None:
            return _decode(io.BytesIO(bytes(data)), str(path) if path else "<bytes>")
        if path is not None:
            return load_image(path)
        raise ValueError(f"load_image got a dict with neither 'bytes' nor 'path' set (keys: {sorted(source)}).")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), "<bytes>")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        # Opened here rather than by PIL so that a missing file raises FileNotFoundError, not "not an image".
        with open(path, "rb") as fp:
            return _decode(fp, path)
    raise TypeError(
        "load_image expects a path, bytes, a PIL image, a {'bytes', 'path'} dict or a uint8 numpy array, "
        f"got {type(source).__name__}."
    )
