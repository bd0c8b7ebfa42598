"""Tip-Adapter's validation grid search over ``sharpness`` (beta) and ``residual_ratio`` (alpha), vectorised.

The search is a pure function of precomputed tensors, so that a model-level wrapper only has to extract the
validation embeddings once and hand over

    zero_shot_logits = s * f W^T              # (M, N)
    image_cos        = f F^T                  # (M, NK), the affinity matmul hoisted out of the grid
    text_cos         = g T^T                  # (M, NK), XMAdapter's text cache (optional)

and gets back the chosen values (docs/training.md, "Or in one call"):

    logits(beta, alpha) = zero_shot_logits + alpha * A L
    A = exp(-beta * (1 - image_cos))                                                   # Tip-Adapter
    A = gamma * exp(-beta * (1 - image_cos)) + (1 - gamma) * exp(-beta_txt * (1 - text_cos))  # XMAdapter

Tip-Adapter's reference loop recomputes ``exp`` and a dense ``A @ L`` for every (beta, alpha) pair. Here the
cache logits ``A L`` are computed once per sharpness value (an index-add, no one-hot matrix) and every residual
ratio is scored in one batched op; in XMAdapter mode the text half of ``A L`` is computed once for the whole grid,
since the fusion is linear and ``gamma`` is per row (scalar or (M, 1)), so it commutes with ``L``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .functional import cache_logits, fuse_affinities

__all__ = [
    "SearchResult",
    "residual_ratio_grid",
    "search_hyperparameters",
    "sharpness_grid",
]


# Tip-Adapter's alpha ranges were tuned for OpenAI CLIP's logit scale; other backbones rescale them.
_REFERENCE_LOGIT_SCALE = 100.0


def _check_positive_number(value: object, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} ({value!r}).")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be finite and {bound}, got {value}.")
    return value


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value}.")
    return value


def _linear_grid(scale: object, step: object, start: object, scale_name: str, step_name: str) -> list[float]:
    scale = _check_positive_number(scale, scale_name)
    step = _check_positive_int(step, step_name)
    start = _check_positive_number(start, "start", allow_zero=True)
    if scale <= start:
        raise ValueError(f"`{scale_name}` must be greater than `start` ({start}), got {scale}.")
    # Tip-Adapter's exact formula: `step` values from `start` up to (but excluding) `scale`.
    return [i * (scale - start) / step + start for i in range(step)]


def _rescale(residual_ratios: list[float], logit_scale: float) -> list[float]:
    factor = logit_scale / _REFERENCE_LOGIT_SCALE
    return [value * factor for value in residual_ratios]


def sharpness_grid(search_scale: float, search_step: int, start: float = 0.1) -> list[float]:
    """Tip-Adapter's grid of ``sharpness`` (beta) values: ``[i * (search_scale - start) / search_step + start]``.

    Args:
        search_scale (`float`):
            The upper end of the range (excluded), Tip-Adapter's ``search_scale[0]``.
        search_step (`int`):
            The number of values, Tip-Adapter's ``search_step[0]`` (200).
        start (`float`, *optional*, defaults to 0.1):
            The first value.

    Returns:
        `list[float]` of length ``search_step``, increasing.

    Example:

    ```python
    >>> from xmadapter_hf.search import sharpness_grid
    >>> sharpness_grid(7.0, 3)
    [0.1, 2.4000000000000004, 4.7]
    ```
    """
    return _linear_grid(search_scale, search_step, start, "search_scale", "search_step")


def residual_ratio_grid(
    search_scale: float, search_step: int, logit_scale: float = _REFERENCE_LOGIT_SCALE, start: float = 0.1
) -> list[float]:
    """Tip-Adapter's grid of ``residual_ratio`` (alpha) values, rescaled by ``logit_scale / 100``.

    Tip-Adapter's alpha ranges assume CLIP's logit scale ``s = 100``: the cache logits ``A L`` do not carry ``s``
    while the zero-shot logits do, so the same balance needs ``alpha * s / 100`` on another backbone.

    Args:
        search_scale (`float`):
            The upper end of the range at ``s = 100`` (excluded), Tip-Adapter's ``search_scale[1]``.
        search_step (`int`):
            The number of values, Tip-Adapter's ``search_step[1]`` (20).
        logit_scale (`float`, *optional*, defaults to 100.0):
            The backbone's ``s = logit_scale.exp()``.
        start (`float`, *optional*, defaults to 0.1):
            The first value at ``s = 100``.

    Returns:
        `list[float]` of length ``search_step``: ``[(i * (search_scale - start) / search_step + start) * s / 100]``.

    Example:

    ```python
    >>> from xmadapter_hf.search import residual_ratio_grid
    >>> residual_ratio_grid(3.0, 2, logit_scale=50.0)
    [0.05, 0.775]
    ```
    """
    logit_scale = _check_positive_number(logit_scale, "logit_scale")
    return _rescale(_linear_grid(search_scale, search_step, start, "search_scale", "search_step"), logit_scale)


@dataclass
class SearchResult:
    """The values chosen by [`search_hyperparameters`] and the grids it searched.

    Args:
        sharpness (`float`):
            The chosen ``beta``.
        residual_ratio (`float`):
            The chosen ``alpha`` (already on the backbone's logit scale).
        text_sharpness (`float` or `None`):
            The chosen ``beta_txt``; `None` when no text cache was searched.
        accuracy (`float`):
            Validation accuracy in [0, 1] at the chosen values.
        num_validation (`int`):
            The number of validation samples ``M``; with a few images per class the accuracy is noisy, so report it.
        sharpness_grid (`list[float]`):
            The ``beta`` values searched.
        residual_ratio_grid (`list[float]`):
            The ``alpha`` values searched.
        text_sharpness_grid (`list[float]` or `None`):
            The ``beta_txt`` values searched, or `None`.
        grid_accuracy (`torch.Tensor` of shape `(len(sharpness_grid), len(residual_ratio_grid))`):
            Validation accuracy of every (beta, alpha) cell (at the starting ``text_sharpness`` in XMAdapter mode).
        text_grid_accuracy (`torch.Tensor` of shape `(len(text_sharpness_grid),)` or `None`):
            Validation accuracy of every ``beta_txt`` at the chosen (beta, alpha), or `None`.
    """

    sharpness: float
    residual_ratio: float
    text_sharpness: float | None
    accuracy: float
    num_validation: int
    sharpness_grid: list[float]
    residual_ratio_grid: list[float]
    text_sharpness_grid: list[float] | None = None
    grid_accuracy: torch.Tensor | None = None
    text_grid_accuracy: torch.Tensor | None = None


def _check_matrix(x: object, name: str, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() != 2 or (rows is not None and x.shape[0] != rows) or (cols is not None and x.shape[1] != cols):
        expected = f"({'M' if rows is None else rows}, {'*' if cols is None else cols})"
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(x.shape)}.")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"`{name}` must be a real floating-point tensor, got dtype {x.dtype}.")
    return x


def _check_labels(x: object, name: str, length: int, num_classes: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if x.dtype.is_floating_point or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {x.dtype}.")
    if x.dim() != 1 or x.shape[0] != length:
        raise ValueError(f"`{name}` must have shape ({length},), got {tuple(x.shape)}.")
    if length and (int(x.min()) < 0 or int(x.max()) >= num_classes):
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes}) (num_classes={num_classes}), "
            f"got values in [{int(x.min())}, {int(x.max())}]."
        )
    return x.long()


def _check_tensors(
    zero_shot_logits: object, image_cos: object, cache_labels: object, labels: object, num_classes: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validates the search's tensors; returns them in float32 / int64 on the device of ``image_cos``."""
    num_classes = _check_positive_int(num_classes, "num_classes")
    zero_shot_logits = _check_matrix(zero_shot_logits, "zero_shot_logits", cols=num_classes)
    num_rows = zero_shot_logits.shape[0]
    if num_rows == 0:
        raise ValueError("The validation set is empty: `zero_shot_logits` has 0 rows.")
    image_cos = _check_matrix(image_cos, "image_cos", rows=num_rows)
    if image_cos.shape[1] == 0:
        raise ValueError("The cache is empty: `image_cos` has 0 columns.")
    cache_labels = _check_labels(cache_labels, "cache_labels", image_cos.shape[1], num_classes)
    labels = _check_labels(labels, "labels", num_rows, num_classes)
    device = image_cos.device
    # All the maths in float32, whatever dtype the caller extracted the embeddings in.
    return (
        zero_shot_logits.to(device, torch.float32),
        image_cos.float(),
        cache_labels.to(device),
        labels.to(device),
    )


def _check_pair(value: object, name: str) -> tuple[object, object]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"`{name}` must be a pair (sharpness, residual_ratio), got {value!r}.")
    return value[0], value[1]


def _check_affinity_ratio(ratio: object, num_rows: int, device: torch.device) -> torch.Tensor:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, torch.Tensor)):
        raise TypeError(f"`affinity_ratio` must be a float or a tensor, got {type(ratio).__name__}.")
    ratio = torch.as_tensor(ratio.detach() if isinstance(ratio, torch.Tensor) else ratio)
    ratio = ratio.to(device, torch.float32)
    if ratio.numel() == 1 and ratio.dim() <= 2:
        ratio = ratio.reshape(1, 1)
    elif ratio.shape != (num_rows, 1):
        raise ValueError(f"`affinity_ratio` must be a scalar or of shape ({num_rows}, 1), got {tuple(ratio.shape)}.")
    if not bool(((ratio >= 0) & (ratio <= 1)).all()):
        raise ValueError("`affinity_ratio` (gamma) must lie in [0, 1].")
    return ratio


def _count_correct(
    zero_shot: torch.Tensor, cache: torch.Tensor, ratios: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Correct predictions of ``zero_shot + alpha * cache`` for every alpha at once. Returns (P,) int64."""
    logits = zero_shot[None] + ratios[:, None, None] * cache[None]  # (P, m, N)
    return (logits.argmax(dim=-1) == labels[None]).sum(dim=1)  # (P, m) -> (P,)


def _first_maximum(counts: torch.Tensor) -> int:
    """Flat index of the first maximum, i.e. the first strict improvement in row-major loop order."""
    flat = counts.reshape(-1)
    return int((flat == flat.max()).nonzero()[0, 0])


def _row_chunks(num_rows: int, chunk_size: int | None) -> list[slice]:
    size = num_rows if chunk_size is None else chunk_size
    return [slice(i, min(i + size, num_rows)) for i in range(0, num_rows, size)]


def _cache_logits_from_distance(
    distance: torch.Tensor,
    sharpness: float,
    cache_labels: torch.Tensor,
    num_classes: int,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A L`` with ``A = exp(-beta * (1 - cos))``: functional.affinity's formula, its matmul hoisted by the caller.

    ``distance`` is ``1 - cos``; ``buffer`` (same shape) receives ``A``: reusing one buffer across the grid avoids
    allocating (and page-faulting) an (m, NK) tensor per sharpness value, which cost more than the ``exp`` itself.
    """
    affinities = torch.mul(distance, -sharpness, out=buffer).exp_()  # the same values as torch.exp(-beta * distance)
    return cache_logits(affinities, cache_labels, num_classes)  # (m, NK) -> (m, N)


@dataclass
class _TextCache:
    """XMAdapter's text half: ``cos`` = ``text_cos`` (M, NK) in float32, ``ratio`` = ``gamma`` as (1, 1) or (M, 1)."""

    cos: torch.Tensor
    ratio: torch.Tensor

    def ratio_rows(self, rows: slice) -> torch.Tensor:
        return self.ratio if self.ratio.shape[0] == 1 else self.ratio[rows]


def _search_image_grid(
    zero_shot: torch.Tensor,
    image_cos: torch.Tensor,
    cache_labels: torch.Tensor,
    labels: torch.Tensor,
    sharpnesses: list[float],
    ratios: torch.Tensor,
    chunks: list[slice],
    text: _TextCache | None,
    text_sharpness: float,
) -> torch.Tensor:
    """Correct counts of every (sharpness, residual ratio) cell, shape (S, R)."""
    num_classes = zero_shot.shape[1]
    counts = torch.zeros(len(sharpnesses), ratios.numel(), dtype=torch.long, device=zero_shot.device)
    for rows in chunks:
        distance = 1.0 - image_cos[rows]  # hoisted: only the exp depends on beta
        buffer = torch.empty_like(distance)
        if text is not None:
            # gamma is per row, so (gamma A_img + (1 - gamma) A_txt) L = gamma A_img L + (1 - gamma) A_txt L, and
            # with beta_txt fixed the text half is computed once for the whole grid.
            text_distance = 1.0 - text.cos[rows]
            text_logits = _cache_logits_from_distance(text_distance, text_sharpness, cache_labels, num_classes, buffer)
        for i, sharpness in enumerate(sharpnesses):
            cache = _cache_logits_from_distance(distance, sharpness, cache_labels, num_classes, buffer)
            if text is not None:
                cache = fuse_affinities(cache, text_logits, text.ratio_rows(rows))
            counts[i] += _count_correct(zero_shot[rows], cache, ratios, labels[rows])
    return counts


def _search_text_grid(
    zero_shot: torch.Tensor,
    image_cos: torch.Tensor,
    cache_labels: torch.Tensor,
    labels: torch.Tensor,
    sharpness: float,
    ratio: torch.Tensor,
    chunks: list[slice],
    text: _TextCache,
    text_sharpnesses: list[float],
) -> torch.Tensor:
    """Correct counts of every text sharpness with (sharpness, residual ratio) fixed, shape (T,)."""
    num_classes = zero_shot.shape[1]
    counts = torch.zeros(len(text_sharpnesses), dtype=torch.long, device=zero_shot.device)
    for rows in chunks:
        image_logits = _cache_logits_from_distance(1.0 - image_cos[rows], sharpness, cache_labels, num_classes)
        text_distance = 1.0 - text.cos[rows]
        buffer = torch.empty_like(text_distance)
        for j, text_sharpness in enumerate(text_sharpnesses):
            text_logits = _cache_logits_from_distance(text_distance, text_sharpness, cache_labels, num_classes, buffer)
            cache = fuse_affinities(image_logits, text_logits, text.ratio_rows(rows))
            counts[j] += _count_correct(zero_shot[rows], cache, ratio.reshape(1), labels[rows])[0]
    return counts


def _check_text_cache(
    text_cos: torch.Tensor | None, affinity_ratio: object, num_rows: int, cache_size: int, device: torch.device
) -> _TextCache | None:
    if text_cos is None:
        if affinity_ratio is not None:
            raise ValueError("`affinity_ratio` was given without `text_cos`; it only weighs the text cache.")
        return None
    text_cos = _check_matrix(text_cos, "text_cos", rows=num_rows, cols=cache_size)
    if affinity_ratio is None:
        raise ValueError("`affinity_ratio` (gamma) is required when `text_cos` is given.")
    return _TextCache(text_cos.to(device, torch.float32), _check_affinity_ratio(affinity_ratio, num_rows, device))


@torch.no_grad()  # a learned gamma or keys may come with gradients attached; the search never needs them
def search_hyperparameters(
    zero_shot_logits: torch.Tensor,
    image_cos: torch.Tensor,
    cache_labels: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    *,
    search_scale: Sequence[float] = (7.0, 3.0),
    search_step: Sequence[int] = (200, 20),
    start: float = 0.1,
    text_cos: torch.Tensor | None = None,
    affinity_ratio: torch.Tensor | float | None = None,
    text_sharpness: float = 1.0,
    text_search_scale: float | None = None,
    text_search_step: int | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """Chooses ``sharpness`` and ``residual_ratio`` (and ``text_sharpness``) by validation accuracy, as Tip-Adapter.

    ``logits(beta, alpha) = zero_shot_logits + alpha * A L`` with ``A = exp(-beta * (1 - image_cos))``, or, when
    ``text_cos`` is given (XMAdapter), ``A = gamma * exp(-beta * (1 - image_cos)) + (1 - gamma) *
    exp(-beta_txt * (1 - text_cos))``. The (beta, alpha) grid is searched with ``beta_txt = text_sharpness``; then
    ``beta_txt`` is searched alone on its 1-D grid with (beta, alpha) fixed at the chosen values (coordinate-wise,
    not a 3-D grid). Accuracy is ``mean(argmax(logits) == labels)``, computed in float32.

    Ties keep the first strict maximum in loop order (sharpness outer, residual ratio inner), as Tip-Adapter's
    ``if acc > best_acc`` does. Unlike Tip-Adapter, whose best starts at 0 and returns beta = alpha = 0 when every
    cell scores 0, the best starts below any accuracy, so a grid value is always chosen. The text step likewise
    starts afresh: it returns the first maximum over the text grid, even when the starting ``text_sharpness`` (not
    necessarily on the grid) scored higher; ``accuracy`` is always that of the returned values.

    Args:
        zero_shot_logits (`torch.Tensor` of shape `(M, N)`):
            ``s * f W^T`` on the validation images.
        image_cos (`torch.Tensor` of shape `(M, NK)`):
            ``f F^T``, the cosine of each validation image with each image-cache key.
        cache_labels (`torch.LongTensor` of shape `(NK,)`):
            The class of each cache entry (the one-hot ``L``, as indices).
        labels (`torch.LongTensor` of shape `(M,)`):
            The validation labels.
        num_classes (`int`):
            ``N``.
        logit_scale (`float`):
            ``s``; the residual-ratio grid is multiplied by ``s / 100`` (see [`residual_ratio_grid`]).
        search_scale (`tuple[float, float]`, *optional*, defaults to `(7.0, 3.0)`):
            Upper ends (excluded) of the (sharpness, residual ratio) ranges; the residual ratio's is for ``s = 100``.
        search_step (`tuple[int, int]`, *optional*, defaults to `(200, 20)`):
            Number of (sharpness, residual ratio) values.
        start (`float`, *optional*, defaults to 0.1):
            First value of every grid.
        text_cos (`torch.Tensor` of shape `(M, NK)`, *optional*):
            ``g T^T`` for XMAdapter's text cache; `None` searches Tip-Adapter's formula.
        affinity_ratio (`float` or `torch.Tensor` of shape `(M, 1)`, *optional*):
            ``gamma`` in [0, 1]; required with ``text_cos``, rejected without it.
        text_sharpness (`float`, *optional*, defaults to 1.0):
            ``beta_txt`` held fixed during the (beta, alpha) search.
        text_search_scale (`float`, *optional*):
            Upper end of the ``beta_txt`` range; defaults to ``search_scale[0]``.
        text_search_step (`int`, *optional*):
            Number of ``beta_txt`` values; defaults to ``search_step[0]``.
        chunk_size (`int`, *optional*):
            Process at most this many validation rows at a time, bounding the working memory to about
            ``chunk_size * (2 * NK + search_step[1] * N)`` floats; `None` processes all rows at once.

    Returns:
        [`SearchResult`].

    Example:

    ```python
    >>> import torch
    >>> from xmadapter_hf.search import search_hyperparameters
    >>> image_cos = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # each image is closest to its own class's entry
    >>> result = search_hyperparameters(
    ...     torch.zeros(2, 2), image_cos, torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 100.0, search_step=(4, 3)
    ... )
    >>> result.accuracy, result.sharpness, result.num_validation
    (1.0, 0.1, 2)
    ```
    """
    logit_scale = _check_positive_number(logit_scale, "logit_scale")
    zero_shot_logits, image_cos, cache_labels, labels = _check_tensors(
        zero_shot_logits, image_cos, cache_labels, labels, num_classes
    )
    num_rows, device = labels.shape[0], labels.device
    chunks = _row_chunks(num_rows, None if chunk_size is None else _check_positive_int(chunk_size, "chunk_size"))
    (beta_max, alpha_max), (beta_steps, alpha_steps) = (
        _check_pair(search_scale, "search_scale"),
        _check_pair(search_step, "search_step"),
    )
    sharpnesses = _linear_grid(beta_max, beta_steps, start, "search_scale[0]", "search_step[0]")
    alphas = _linear_grid(alpha_max, alpha_steps, start, "search_scale[1]", "search_step[1]")
    alphas = _rescale(alphas, logit_scale)
    ratios = torch.tensor(alphas, dtype=torch.float32, device=device)
    text = _check_text_cache(text_cos, affinity_ratio, num_rows, image_cos.shape[1], device)
    if text is not None:
        text_sharpness = _check_positive_number(text_sharpness, "text_sharpness")
        text_scale = beta_max if text_search_scale is None else text_search_scale
        text_steps = beta_steps if text_search_step is None else text_search_step
        text_sharpnesses = _linear_grid(text_scale, text_steps, start, "text_search_scale", "text_search_step")

    counts = _search_image_grid(
        zero_shot_logits, image_cos, cache_labels, labels, sharpnesses, ratios, chunks, text, text_sharpness
    )
    best = _first_maximum(counts)
    best_i, best_k = divmod(best, len(alphas))
    result = SearchResult(
        sharpness=sharpnesses[best_i],
        residual_ratio=alphas[best_k],
        text_sharpness=None,
        accuracy=int(counts[best_i, best_k]) / num_rows,
        num_validation=num_rows,
        sharpness_grid=sharpnesses,
        residual_ratio_grid=alphas,
        grid_accuracy=counts.cpu().float() / num_rows,
    )
    if text is None:
        return result

    text_counts = _search_text_grid(
        zero_shot_logits,
        image_cos,
        cache_labels,
        labels,
        result.sharpness,
        ratios[best_k],
        chunks,
        text,
        text_sharpnesses,
    )
    best_j = _first_maximum(text_counts)
    result.text_sharpness = text_sharpnesses[best_j]
    result.accuracy = int(text_counts[best_j]) / num_rows
    result.text_sharpness_grid = text_sharpnesses
    result.text_grid_accuracy = text_counts.cpu().float() / num_rows
    return result
