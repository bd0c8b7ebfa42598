"""The value grids the validation search scores: Tip-Adapter's linear grids of sharpness (beta) and residual ratio
(alpha, rescaled to the backbone's logit scale), and the log grids of the automatic search (`grid_search.py`)."""

from __future__ import annotations

import math

from ..validation import check_int, check_number

__all__ = ["SEARCH_GRIDS", "linear_grid", "log_grid", "residual_ratio_grid", "sharpness_grid"]

#: The searches: "auto" (backbone-adaptive, coarse-to-fine) and "paper" (each term's paper's own grid: Tip-Adapter's
#: exact linear grids for the caches, GDA's official alpha grid for its term), also named "tip-adapter-grid".
SEARCH_GRIDS = ("auto", "paper", "tip-adapter-grid")

# Tip-Adapter's alpha ranges were tuned for OpenAI CLIP's logit scale; other backbones rescale them.
_REFERENCE_LOGIT_SCALE = 100.0


def linear_grid(scale, step, start, scale_name: str, step_name: str) -> list[float]:
    scale = check_number(scale_name, scale, 0.0, low_open=True)
    step = check_int(step_name, step, 1)
    start = check_number("start", start, 0.0)
    if scale <= start:
        raise ValueError(f"`{scale_name}` must be greater than `start` ({start}), got {scale}.")
    # Tip-Adapter's exact formula: `step` values from `start` up to (but excluding) `scale`.
    return [i * (scale - start) / step + start for i in range(step)]


def sharpness_grid(search_scale: float, search_step: int, start: float = 0.1) -> list[float]:
    """Tip-Adapter's grid of ``sharpness`` (beta) values: ``[i * (search_scale - start) / search_step + start]``.

    Args:
        search_scale (`float`): the upper end of the range (excluded), Tip-Adapter's ``search_scale[0]``.
        search_step (`int`): the number of values, Tip-Adapter's ``search_step[0]`` (200).
        start (`float`, *optional*, defaults to 0.1): the first value.

    Returns:
        `list[float]` of length ``search_step``, increasing.

    Example:

    ```python
    >>> from xmadapter_hf.training.search import sharpness_grid
    >>> sharpness_grid(7.0, 3)
    [0.1, 2.4000000000000004, 4.7]
    ```
    """
    return linear_grid(search_scale, search_step, start, "search_scale", "search_step")


def residual_ratio_grid(
    search_scale: float, search_step: int, logit_scale: float = _REFERENCE_LOGIT_SCALE, start: float = 0.1
) -> list[float]:
    """Tip-Adapter's grid of ``residual_ratio`` (alpha) values, rescaled by ``logit_scale / 100``.

    Tip-Adapter's alpha ranges assume CLIP's logit scale ``s = 100``: the cache logits ``A L`` do not carry ``s``
    while the zero-shot logits do, so the same balance needs ``alpha * s / 100`` on another backbone.

    Returns:
        `list[float]` of length ``search_step``: ``[(i * (search_scale - start) / search_step + start) * s / 100]``.

    Example:

    ```python
    >>> from xmadapter_hf.training.search import residual_ratio_grid
    >>> residual_ratio_grid(3.0, 2, logit_scale=50.0)
    [0.05, 0.775]
    ```
    """
    factor = check_number("logit_scale", logit_scale, 0.0, low_open=True) / _REFERENCE_LOGIT_SCALE
    return [value * factor for value in linear_grid(search_scale, search_step, start, "search_scale", "search_step")]


def log_grid(low: float, high: float, steps: int) -> list[float]:
    """``steps`` values from ``low`` to ``high`` (both included), evenly spaced in log scale (one value: ``low``)."""
    if steps == 1:
        return [float(low)]
    ratio = math.log(high / low) / (steps - 1)
    return [float(low * math.exp(i * ratio)) for i in range(steps)]
