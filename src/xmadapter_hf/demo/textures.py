"""A procedural texture domain: coloured pattern families rendered with numpy, captions from a small grammar.

An image is a texture of one *pattern family* (stripes, checks, dots, zigzag, waves, grid, rings, bricks) drawn in
one *colour* (red, orange, yellow, green, teal, blue, purple, pink) on a neutral *background* (white, gray, black),
at a random period, orientation and phase (nuisances the captions never mention). Its caption names the colour and
the pattern (and sometimes the background) through one of a few templates, or only the colour or only the pattern.

Three renderings:

- ``"clean"``: what the demo CLIP was pre-trained on (flat colours, slight noise);
- ``"photo"``: the demo task's rendering, a photometric shift: lower contrast, a colour cast, a brightness change,
  a lighting gradient, blur and stronger sensor noise;
- ``"sketch"``: the sketch task's rendering, a shift of style and geometry with clean colours: only the outlines of
  the pattern are drawn (lines about a pixel wide, in the colour, on the background), seen closer (magnified) and
  tilted in depth.

Everything is a function of explicit seeds (`numpy.random.default_rng` keyed by integers), so an image depends only
on its key, never on the order in which images are made.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HELD_OUT_COMBINATIONS",
    "PATTERNS",
    "PHOTO_SHIFT",
    "RENDERINGS",
    "SKETCH_SHIFT",
    "TextureAttributes",
    "caption",
    "grammar_words",
    "matches",
    "pretraining_combinations",
    "render",
    "sample_attributes",
]

#: Colour name -> (hue in degrees, saturation, value) of its centre; each image jitters around it.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.0, 0.85, 0.9),
    "orange": (28.0, 0.9, 0.95),
    "yellow": (55.0, 0.85, 0.95),
    "green": (120.0, 0.75, 0.75),
    "teal": (175.0, 0.8, 0.7),
    "blue": (225.0, 0.8, 0.9),
    "purple": (280.0, 0.7, 0.75),
    "pink": (325.0, 0.45, 1.0),
}

#: The pattern families (each a function in `_MASKS`).
PATTERNS: tuple[str, ...] = ("stripes", "checks", "dots", "zigzag", "waves", "grid", "rings", "bricks")

#: Background name -> grey level range.
BACKGROUNDS: dict[str, tuple[float, float]] = {"white": (0.88, 1.0), "gray": (0.4, 0.58), "black": (0.0, 0.12)}

#: The 16 (colour, pattern) combinations that pre-training never shows: the demo task's classes. Each colour and each
#: pattern appears in exactly two of them, and in six combinations that pre-training does show.
HELD_OUT_COMBINATIONS: tuple[tuple[str, str], ...] = (
    ("red", "stripes"),
    ("red", "zigzag"),
    ("orange", "checks"),
    ("orange", "waves"),
    ("yellow", "dots"),
    ("yellow", "grid"),
    ("green", "zigzag"),
    ("green", "rings"),
    ("teal", "waves"),
    ("teal", "bricks"),
    ("blue", "grid"),
    ("blue", "stripes"),
    ("purple", "rings"),
    ("purple", "checks"),
    ("pink", "bricks"),
    ("pink", "dots"),
)

RENDERINGS = ("clean", "photo", "sketch")

#: The ``"photo"`` rendering's distribution shift: the ranges of its per-image draws (read-only).
PHOTO_SHIFT = MappingProxyType(
    {
        "contrast": (0.45, 0.8),
        "cast": 0.15,
        "brightness": (0.7, 1.1),
        "gradient": 0.25,
        "blur": (0.5, 1.0),
        "noise": (0.08, 0.16),
    }
)

#: The ``"sketch"`` rendering's geometry (read-only): the image coordinates are multiplied by ``scale`` (so the
#: pattern looks 1.2-1.8 times larger than in pre-training) and divided by ``1 + slant * (row - centre)`` (a view
#: tilted in depth: the period changes from top to bottom), both drawn per image.
SKETCH_SHIFT = MappingProxyType({"scale": (0.55, 0.85), "slant": 0.02})

#: Caption templates naming the colour {c}, the pattern {p} and the background {b}.
FULL_TEMPLATES = (
    "a photo of a {c} {p}.",
    "a {c} {p} pattern.",
    "{c} {p} on {b}.",
    "a {c} {p} texture on a {b} background.",
    "a close up photo of {c} {p}.",
    "{p} in {c} on {b}.",
    "a pattern of {c} {p}.",
)
COLOUR_TEMPLATES = ("a photo of something {c}.", "a {c} texture.")
PATTERN_TEMPLATES = ("a photo of a {p}.", "a {p} pattern.")
#: Probability that a caption names only the colour, and only the pattern.
PARTIAL_CAPTION_PROBABILITY = (0.1, 0.1)


@dataclass(frozen=True)
class TextureAttributes:
    """What an image shows; `colour` and `pattern` are what its caption may name."""

    colour: str | None
    pattern: str | None
    background: str | None


def pretraining_combinations() -> list[tuple[str, str]]:
    """The 48 (colour, pattern) combinations pre-training shows: all but `HELD_OUT_COMBINATIONS`."""
    held_out = set(HELD_OUT_COMBINATIONS)
    return [(c, p) for c in COLOURS for p in PATTERNS if (c, p) not in held_out]


def sample_attributes(rng: np.random.Generator, combinations) -> TextureAttributes:
    """A random (colour, pattern) of ``combinations`` and a random background."""
    colour, pattern = combinations[int(rng.integers(len(combinations)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return TextureAttributes(colour, pattern, background)


def caption(attributes: TextureAttributes, rng: np.random.Generator) -> tuple[str, TextureAttributes]:
    """A caption of ``attributes``, and what it names (a `TextureAttributes` with `None` for what it leaves out)."""
    draw = float(rng.random())
    only_colour, only_pattern = PARTIAL_CAPTION_PROBABILITY
    if draw < only_colour:
        template = COLOUR_TEMPLATES[int(rng.integers(len(COLOUR_TEMPLATES)))]
    elif draw < only_colour + only_pattern:
        template = PATTERN_TEMPLATES[int(rng.integers(len(PATTERN_TEMPLATES)))]
    else:
        template = FULL_TEMPLATES[int(rng.integers(len(FULL_TEMPLATES)))]
    named = TextureAttributes(
        colour=attributes.colour if "{c}" in template else None,
        pattern=attributes.pattern if "{p}" in template else None,
        background=attributes.background if "{b}" in template else None,
    )
    return template.format(c=attributes.colour, p=attributes.pattern, b=attributes.background), named


def matches(named: TextureAttributes, attributes: TextureAttributes) -> bool:
    """Whether a caption that names ``named`` (`None` = not named) describes an image of ``attributes``."""
    return all(
        want is None or want == have
        for want, have in zip(
            (named.colour, named.pattern, named.background),
            (attributes.colour, attributes.pattern, attributes.background),
        )
    )


def grammar_words() -> list[str]:
    """Every word the caption grammar and the demo class names use (the tokenizer gives each one token)."""
    import re

    words: set[str] = set(COLOURS) | set(PATTERNS) | set(BACKGROUNDS)
    for template in FULL_TEMPLATES + COLOUR_TEMPLATES + PATTERN_TEMPLATES:
        words.update(re.findall(r"[a-z]+", re.sub(r"\{[a-z]*\}", " ", template)))
    words.update(re.findall(r"[a-z]+", "a photo of a "))  # the library's default prompt template
    return sorted(words)


# ------------------------------------------------------------------------------------------------ rendering
def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _pattern_draws(pattern: str, rng: np.random.Generator, extent: float) -> tuple[float, ...]:
    """The pattern's random period, orientation and phases (and the rings' centre, within ``extent`` pixels)."""
    period = float(rng.uniform(4.5, 12.0))
    angle = float(rng.uniform(0.0, np.pi))
    phase_a, phase_b = rng.uniform(0.0, 1.0, size=2)
    centre = tuple(rng.uniform(-0.25 * extent, 1.25 * extent, size=2)) if pattern == "rings" else (0.0, 0.0)
    return period, angle, float(phase_a), float(phase_b), *centre


def _mask(pattern: str, x: np.ndarray, y: np.ndarray, draws: tuple[float, ...]) -> np.ndarray:
    """The pattern's foreground mask (bool) on coordinates ``x, y`` (pixels), with `_pattern_draws`' ``draws``."""
    period, angle, phase_a, phase_b, cx, cy = draws
    a = (x * np.cos(angle) + y * np.sin(angle)) / period + phase_a
    b = (-x * np.sin(angle) + y * np.cos(angle)) / period + phase_b
    if pattern == "stripes":
        return _frac(a) < 0.5
    if pattern == "checks":
        return (np.floor(a) + np.floor(b)) % 2 == 0
    if pattern == "dots":
        return (_frac(a) - 0.5) ** 2 + (_frac(b) - 0.5) ** 2 < 0.32**2
    if pattern == "zigzag":
        return _frac(a + 0.9 * np.abs(2 * _frac(b / 1.2) - 1)) < 0.5
    if pattern == "waves":
        return _frac(a + 0.3 * np.sin(2 * np.pi * b / 1.5)) < 0.5
    if pattern == "grid":
        return (_frac(a) < 0.24) | (_frac(b) < 0.24)
    if pattern == "rings":
        return _frac(np.hypot(x - cx, y - cy) / period + phase_a) < 0.5
    if pattern == "bricks":
        row = np.floor(b / 0.6)
        mortar = (_frac(b / 0.6) < 0.2) | (_frac(a / 1.2 + 0.5 * (row % 2)) < 0.1)
        return ~mortar
    raise ValueError(f"Unknown pattern {pattern!r}; patterns: {PATTERNS}.")


def _sketch_view(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``"sketch"`` rendering's geometry: the coordinates of a closer view (magnified), tilted in depth."""
    scale = float(rng.uniform(*SKETCH_SHIFT["scale"]))
    slant = float(rng.uniform(-SKETCH_SHIFT["slant"], SKETCH_SHIFT["slant"]))
    centre = size / 2
    depth = 1.0 + slant * (y - centre)  # a keystone: the pattern's scale changes from top to bottom
    return centre + (x - centre) * scale / depth, centre + (y - centre) * scale / depth


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a bool (H, W) mask that differ from one of their 4 neighbours: both sides of every edge."""
    padded = np.pad(mask, 1, mode="edge")
    height, width = mask.shape
    edge = np.zeros_like(mask)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + height, dx : dx + width] != mask
    return edge


def _colour(name: str, rng: np.random.Generator) -> np.ndarray:
    hue, saturation, value = COLOURS[name]
    hue = (hue + rng.uniform(-8.0, 8.0)) % 360.0
    saturation = np.clip(saturation + rng.uniform(-0.12, 0.12), 0.0, 1.0)
    value = np.clip(value + rng.uniform(-0.12, 0.08), 0.0, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue / 360.0, saturation, value))


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, 3) image, edges reflected."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[:2]
    rows = sum(t * padded[i : i + height] for i, t in enumerate(taps))
    return sum(t * rows[:, i : i + width] for i, t in enumerate(taps))


def render(
    attributes: TextureAttributes, rng: np.random.Generator, size: int = 32, rendering: str = "clean"
) -> np.ndarray:
    """An (size, size, 3) uint8 image of ``attributes``; every random draw comes from ``rng``."""
    if rendering not in RENDERINGS:
        raise ValueError(f"`rendering` must be one of {RENDERINGS}, got {rendering!r}.")
    supersample = 2
    grid = (np.arange(size * supersample) + 0.5) / supersample
    y, x = np.meshgrid(grid, grid, indexing="ij")
    # every rendering draws the pattern, colour and background first, in this order: the "clean" rendering of a
    # task's image key is the same texture as its shifted rendering
    draws = _pattern_draws(attributes.pattern, rng, float(x.max()))
    foreground = _colour(attributes.colour, rng)
    low, high = BACKGROUNDS[attributes.background]
    background = np.full(3, rng.uniform(low, high))
    if rendering == "sketch":
        x, y = _sketch_view(x, y, rng, size)
    mask = _mask(attributes.pattern, x, y, draws)
    if rendering == "sketch":
        mask = _outline(mask)  # lines about one output pixel wide
    # anti-aliasing: average the supersampled mask over each output pixel
    mask = mask.astype(np.float64).reshape(size, supersample, size, supersample).mean(axis=(1, 3))[..., None]
    image = background * (1.0 - mask) + foreground * mask  # (size, size, 3) in [0, 1]
    if rendering in ("clean", "sketch"):
        image = image * rng.uniform(0.95, 1.05) + rng.normal(0.0, 0.02, size=image.shape)
    else:
        shift = PHOTO_SHIFT
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = mean + rng.uniform(*shift["contrast"]) * (image - mean)  # lower contrast
        image = image * (1.0 + rng.uniform(-shift["cast"], shift["cast"], size=3))  # colour cast
        image = image * rng.uniform(*shift["brightness"])
        direction = rng.uniform(0.0, 2 * np.pi)
        centred = (np.arange(size) + 0.5 - size / 2) / size
        ramp = np.cos(direction) * centred[None, :] + np.sin(direction) * centred[:, None]
        image = image + rng.uniform(0.0, shift["gradient"]) * ramp[..., None]  # lighting gradient
        image = _blur(image, float(rng.uniform(*shift["blur"])))
        image = image + rng.normal(0.0, rng.uniform(*shift["noise"]), size=image.shape)  # sensor noise
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
