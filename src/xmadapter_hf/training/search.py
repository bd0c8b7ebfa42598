"""The validation search: chooses what a method's search space tunes (its residual ratio and sharpness values).

`search_on_validation(model, validation)` asks the method for its [`~xmadapter_hf.methods.SearchSpace`] (the hook
`AdapterMethod.search_space`; `None` for a method with nothing to tune), scores a grid on the validation split and
writes the choice into the config. The grid search itself is a pure function of tensors,

    logits(beta, alpha) = zero_shot_logits + alpha * sum_t weight_t exp(-beta_t (1 - cos_t)) L

searched as Tip-Adapter does: the first cache's sharpness and the residual ratio jointly (sharpness outer, ratio
inner, ties keep the first strict maximum), then each further cache's sharpness on its own 1-D grid (XMAdapter's text
cache; coordinate-wise, not a 3-D grid). The cache logits ``A L`` are computed once per sharpness value with the
library's one implementation (`methods/cache.py`) and every residual ratio is scored in one batched op; since the
fusion is linear and each weight is per row, the other caches' halves are computed once for the whole grid.

There is deliberately no way to pass a test split by another name: the search records `split: validation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import functional as Fn
from ..methods import CacheTerm, SearchSpace
from ..methods.cache import affinity_, class_sums
from ..validation import check_choice, check_int, check_labels, check_number, check_pair, check_tensor

__all__ = [
    "SEARCH_GRIDS",
    "SearchResult",
    "log_grid",
    "ratio_balance",
    "residual_ratio_grid",
    "search_hyperparameters",
    "search_on_validation",
    "search_space_grid",
    "sharpness_grid",
    "validation_embeddings",
]

#: The searches: "auto" (backbone-adaptive, coarse-to-fine) and "tip-adapter-grid" (Tip-Adapter's exact linear grid).
SEARCH_GRIDS = ("auto", "tip-adapter-grid")

# Tip-Adapter's alpha ranges were tuned for OpenAI CLIP's logit scale; other backbones rescale them.
_REFERENCE_LOGIT_SCALE = 100.0


def _linear_grid(scale, step, start, scale_name: str, step_name: str) -> list[float]:
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
    return _linear_grid(search_scale, search_step, start, "search_scale", "search_step")


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
    return [value * factor for value in _linear_grid(search_scale, search_step, start, "search_scale", "search_step")]


@dataclass
class SearchResult:
    """The values chosen by the search and the grids it searched.

    Args:
        sharpness (`float`): the chosen ``beta`` of the first cache.
        residual_ratio (`float`): the chosen ``alpha`` (already on the backbone's logit scale).
        text_sharpness (`float` or `None`): the chosen ``beta_txt`` of a second cache; `None` when there is none.
        accuracy (`float`): validation accuracy in [0, 1] at the chosen values.
        num_validation (`int`): the number of validation samples ``M`` (with a few images per class, report it).
        sharpness_grid (`list[float]`), residual_ratio_grid (`list[float]`), text_sharpness_grid (`list[float]`):
            the values searched.
        grid_accuracy (`torch.Tensor` of shape `(len(sharpness_grid), len(residual_ratio_grid))`): validation
            accuracy of every (beta, alpha) cell (at the further caches' starting sharpness).
        text_grid_accuracy (`torch.Tensor` of shape `(len(text_sharpness_grid),)` or `None`): validation accuracy of
            every ``beta_txt`` at the chosen (beta, alpha).
        fields (`dict[str, float]`): the chosen values under the config fields the search space names.
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
    fields: dict | None = None


def _count_correct(zero_shot: torch.Tensor, cache: torch.Tensor, ratios: torch.Tensor, labels: torch.Tensor):
    """Correct predictions of ``zero_shot + alpha * cache`` for every alpha at once. Returns (P,) int64."""
    logits = zero_shot[None] + ratios[:, None, None] * cache[None]  # (P, m, N)
    return (logits.argmax(dim=-1) == labels[None]).sum(dim=1)  # (P, m) -> (P,)


def _first_maximum(counts: torch.Tensor) -> int:
    """Flat index of the first maximum, i.e. the first strict improvement in row-major loop order."""
    flat = counts.reshape(-1)
    return int((flat == flat.max()).nonzero()[0, 0])


def _term_logits(distance, sharpness, space: SearchSpace, buffer=None) -> torch.Tensor:
    """``A L`` of one cache from its hoisted ``1 - cos`` (`(m, NK)`), into a reused buffer."""
    num_classes = space.zero_shot_logits.shape[1]
    return class_sums(affinity_(distance, sharpness, out=buffer), space.cache_labels, num_classes, space.shots)


def _fused(parts: list[torch.Tensor], terms: list[CacheTerm], rows: slice) -> torch.Tensor:
    """``sum_t weight_t A_t L`` of a chunk of rows (a weight of None is 1)."""
    fused = None
    for logits, term in zip(parts, terms):
        weight = term.weight
        if weight is not None:
            logits = weight * logits if weight.shape[0] == 1 else weight[rows] * logits
        fused = logits if fused is None else fused + logits
    return fused


def _grid_counts(space, labels, chunks, sharpnesses, ratios, fixed: list[float], varied: int) -> torch.Tensor:
    """Correct counts of every (sharpness of term ``varied``, ratio) cell, the other terms at ``fixed`` values.

    ``ratios`` is `(P,)` (the same residual ratios for every sharpness) or `(S, P)` (a row per sharpness value)."""
    ratios = ratios.expand(len(sharpnesses), -1) if ratios.dim() == 1 else ratios
    counts = torch.zeros(len(sharpnesses), ratios.shape[1], dtype=torch.long, device=labels.device)
    for rows in chunks:
        distances = [1.0 - term.cosines[rows] for term in space.terms]  # hoisted: only the exp depends on beta
        buffer = torch.empty_like(distances[varied])
        parts = [None if t == varied else _term_logits(d, fixed[t], space) for t, d in enumerate(distances)]
        for i, sharpness in enumerate(sharpnesses):
            parts[varied] = _term_logits(distances[varied], sharpness, space, buffer)
            counts[i] += _count_correct(space.zero_shot_logits[rows], _fused(parts, space.terms, rows), ratios[i],
                                        labels[rows])  # fmt: skip
    return counts


#: The bounds of `search_grid="auto"`: sharpness on a log grid over Tip-Adapter's whole permitted range (0, 100]
#: (from 0.1: below it every entry weighs alike), the residual ratio over four decades around ``alpha_ref(beta)``.
AUTO_SHARPNESS_RANGE = (0.1, 100.0)
AUTO_RATIO_DECADES = (-2.0, 2.0)
#: (sharpness values, residual-ratio values) of the coarse stage and values per axis of the fine stage.
AUTO_COARSE_STEPS = (40, 32)
AUTO_FINE_STEPS = 11
#: Rows the balance `alpha_ref` is measured on (the first rows of the validation split).
_BALANCE_ROWS = 512


def log_grid(low: float, high: float, steps: int) -> list[float]:
    """``steps`` values from ``low`` to ``high`` (both included), evenly spaced in log scale (one value: ``low``)."""
    if steps == 1:
        return [float(low)]
    ratio = math.log(high / low) / (steps - 1)
    return [float(low * math.exp(i * ratio)) for i in range(steps)]


def ratio_balance(space: SearchSpace, sharpnesses, fixed: list[float], varied: int = 0) -> torch.Tensor:
    """``alpha_ref(beta)`` for each sharpness value, `(S,)`: the residual ratio at which the fused cache logits spread
    across classes as much as the zero-shot logits do,

        alpha_ref(beta) = mean_rows std_classes(zero_shot) / mean_rows std_classes(sum_t weight_t A_t L),

    measured on the first 512 validation rows. It carries the backbone's logit scale (in the zero-shot logits) and
    the spread of the cache cosines (in ``A``), so the searched ratios follow both; labels are not used."""
    rows = slice(0, min(_BALANCE_ROWS, space.zero_shot_logits.shape[0]))
    distances = [1.0 - term.cosines[rows] for term in space.terms]
    parts = [None if t == varied else _term_logits(d, fixed[t], space) for t, d in enumerate(distances)]
    target = space.zero_shot_logits[rows].std(dim=1).mean()
    balance = []
    for sharpness in sharpnesses:
        parts[varied] = _term_logits(distances[varied].clone(), sharpness, space)
        spread = _fused(parts, space.terms, rows).std(dim=1).mean()
        balance.append(float(target / spread) if spread > 0 and torch.isfinite(spread) else float("nan"))
    values = torch.tensor(balance, dtype=torch.float64)
    finite = values[torch.isfinite(values)]
    fallback = float(finite.max()) if finite.numel() else 1.0  # a cache without spread: the widest balance found
    return torch.where(torch.isfinite(values), values, torch.full_like(values, fallback))


def _auto_search(space, labels, chunks, fixed, coarse_steps, fine_steps):
    """Coarse-to-fine search of (sharpness of the first term, residual ratio): returns ((count, beta, alpha) of the
    first maximum, the coarse betas, the coarse ratios `(S, P)`, the coarse counts) (coarse maxima win ties with the
    fine stage: it is searched second and only strict improvements move the choice)."""
    betas = log_grid(*AUTO_SHARPNESS_RANGE, coarse_steps[0])
    balance = ratio_balance(space, betas, fixed)  # (S,)
    factors = torch.tensor(log_grid(10 ** AUTO_RATIO_DECADES[0], 10 ** AUTO_RATIO_DECADES[1], coarse_steps[1]),
                           dtype=torch.float64)  # fmt: skip
    ratios = (balance[:, None] * factors[None]).float().to(labels.device)  # (S, P)
    counts = _grid_counts(space, labels, chunks, betas, ratios, fixed, varied=0)
    best_i, best_k = divmod(_first_maximum(counts), ratios.shape[1])
    best = (int(counts[best_i, best_k]), betas[best_i], float(ratios[best_i, best_k]))
    # fine stage: one coarse step either side of the choice on both axes, log-spaced
    beta_step = (AUTO_SHARPNESS_RANGE[1] / AUTO_SHARPNESS_RANGE[0]) ** (1 / max(1, coarse_steps[0] - 1))
    ratio_step = float(factors[1] / factors[0]) if coarse_steps[1] > 1 else 10.0
    fine_betas = [b for b in log_grid(best[1] / beta_step, best[1] * beta_step, fine_steps) if b <= 100.0]
    fine_ratios = torch.tensor(log_grid(best[2] / ratio_step, best[2] * ratio_step, fine_steps), device=labels.device)
    fine = _grid_counts(space, labels, chunks, fine_betas, fine_ratios, fixed, varied=0)
    fine_i, fine_k = divmod(_first_maximum(fine), fine_ratios.numel())
    if int(fine[fine_i, fine_k]) > best[0]:
        best = (int(fine[fine_i, fine_k]), fine_betas[fine_i], float(fine_ratios[fine_k]))
    return best, betas, ratios, counts


def _auto_text_search(space, labels, chunks, fixed, term, ratio, coarse_steps, fine_steps):
    """Coarse-to-fine 1-D search of a further term's sharpness at the chosen ratio: (count, beta_txt, grid, counts)."""
    ratio_tensor = torch.tensor([ratio], device=labels.device)
    betas = log_grid(*AUTO_SHARPNESS_RANGE, coarse_steps)
    counts = _grid_counts(space, labels, chunks, betas, ratio_tensor, fixed, term)[:, 0]
    best_j = _first_maximum(counts)
    best = (int(counts[best_j]), betas[best_j])
    step = (AUTO_SHARPNESS_RANGE[1] / AUTO_SHARPNESS_RANGE[0]) ** (1 / max(1, coarse_steps - 1))
    fine_betas = [b for b in log_grid(best[1] / step, best[1] * step, fine_steps) if b <= 100.0]
    fine = _grid_counts(space, labels, chunks, fine_betas, ratio_tensor, fixed, term)[:, 0]
    fine_j = _first_maximum(fine)
    if int(fine[fine_j]) > best[0]:
        best = (int(fine[fine_j]), fine_betas[fine_j])
    return best, betas, counts


def default_chunk_size(num_rows: int, num_entries: int, num_classes: int, num_ratios: int) -> int:
    """Validation rows per chunk so that the search's working tensors stay near 256 MiB: about ``rows * (2 NK +
    P N)`` float32 values (the hoisted distances and their affinities, the scores of every ratio)."""
    per_row = 4 * (2 * num_entries + num_ratios * num_classes + num_classes)
    return max(1, min(num_rows, (256 << 20) // max(1, per_row)))


@torch.no_grad()  # a learned gamma or keys may come with gradients attached; the search never needs them
def search_space_grid(
    space: SearchSpace,
    labels: torch.Tensor,
    logit_scale: float,
    *,
    search_grid: str = "tip-adapter-grid",
    search_scale: Sequence[float] = (7.0, 3.0),
    search_step: Sequence[int] = (200, 20),
    start: float = 0.1,
    text_search_scale: float | None = None,
    text_search_step: int | None = None,
    starting_sharpness: Sequence[float] | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """The grid search over a [`~xmadapter_hf.methods.SearchSpace`] (see the module docstring).

    ``search_grid="tip-adapter-grid"``: Tip-Adapter's linear grids, the first term's sharpness over ``search_step[0]``
    values below ``search_scale[0]`` with the residual ratio (``search_step[1]`` values below ``search_scale[1]``,
    scaled by ``logit_scale / 100``), the further terms held at ``starting_sharpness``; then each further term's
    sharpness on its own grid (``text_search_scale``/``_step``, defaulting to the first term's).

    ``search_grid="auto"``: backbone-adaptive and coarse-to-fine (docs/methods.md): sharpness on a log grid over
    [0.1, 100] (`AUTO_COARSE_STEPS[0]` values), the residual ratio on a log grid over ``alpha_ref(beta) * [1e-2,
    1e2]`` ([`ratio_balance`]; `AUTO_COARSE_STEPS[1]` values), then a finer grid one coarse step around the choice;
    each further term's sharpness likewise in 1-D. ``search_scale`` and ``search_step`` are not used.
    ``chunk_size`` bounds the rows processed at once (default: [`default_chunk_size`])."""
    logit_scale = check_number("logit_scale", logit_scale, 0.0, low_open=True)
    check_choice("search_grid", search_grid, SEARCH_GRIDS)
    further = len(space.terms) - 1
    fixed = [0.0, *(starting_sharpness or [1.0] * further)]
    num_rows, device = labels.shape[0], labels.device
    if search_grid == "tip-adapter-grid":
        (beta_max, alpha_max), (beta_steps, alpha_steps) = (
            check_pair("search_scale", search_scale, "sharpness, residual_ratio"),
            check_pair("search_step", search_step, "sharpness, residual_ratio"),
        )
    if chunk_size is None:
        num_ratios = AUTO_COARSE_STEPS[1] if search_grid == "auto" else alpha_steps
        size = default_chunk_size(num_rows, space.terms[0].cosines.shape[1], space.zero_shot_logits.shape[1],
                                  num_ratios)  # fmt: skip
    else:
        size = check_int("chunk_size", chunk_size, 1)
    chunks = [slice(i, min(i + size, num_rows)) for i in range(0, num_rows, size)]

    if search_grid == "auto":
        (count, beta, alpha), sharpnesses, ratios, counts = _auto_search(
            space, labels, chunks, fixed, AUTO_COARSE_STEPS, AUTO_FINE_STEPS
        )
        fixed[0] = beta
        result = SearchResult(
            sharpness=beta, residual_ratio=alpha, text_sharpness=None, accuracy=count / num_rows,
            num_validation=num_rows, sharpness_grid=sharpnesses, residual_ratio_grid=ratios.cpu().tolist(),
            grid_accuracy=counts.cpu().float() / num_rows,
        )  # fmt: skip
        for term in range(1, further + 1):
            (count, text_beta), text_grid, text_counts = _auto_text_search(
                space, labels, chunks, fixed, term, alpha, AUTO_COARSE_STEPS[0], AUTO_FINE_STEPS
            )
            fixed[term] = text_beta
            result.accuracy = count / num_rows
            result.text_sharpness, result.text_sharpness_grid = text_beta, text_grid
            result.text_grid_accuracy = text_counts.cpu().float() / num_rows
        result.fields = {space.residual_ratio_field: result.residual_ratio}
        result.fields.update({term.sharpness_field: value for term, value in zip(space.terms, fixed)})
        return result

    sharpnesses = sharpness_grid(beta_max, beta_steps, start)
    alphas = residual_ratio_grid(alpha_max, alpha_steps, logit_scale, start)
    if further:
        text_scale = beta_max if text_search_scale is None else text_search_scale
        text_steps = beta_steps if text_search_step is None else text_search_step
        text_sharpnesses = _linear_grid(text_scale, text_steps, start, "text_search_scale", "text_search_step")
    ratios = torch.tensor(alphas, dtype=torch.float32, device=device)

    counts = _grid_counts(space, labels, chunks, sharpnesses, ratios, fixed, varied=0)
    best_i, best_k = divmod(_first_maximum(counts), len(alphas))
    fixed[0] = sharpnesses[best_i]
    result = SearchResult(
        sharpness=sharpnesses[best_i], residual_ratio=alphas[best_k], text_sharpness=None,
        accuracy=int(counts[best_i, best_k]) / num_rows, num_validation=num_rows, sharpness_grid=sharpnesses,
        residual_ratio_grid=alphas, grid_accuracy=counts.cpu().float() / num_rows,
    )  # fmt: skip
    for term in range(1, further + 1):
        text_counts = _grid_counts(space, labels, chunks, text_sharpnesses, ratios[best_k : best_k + 1], fixed, term)
        best_j = _first_maximum(text_counts)
        fixed[term] = text_sharpnesses[best_j]
        result.accuracy = int(text_counts[best_j, 0]) / num_rows
        result.text_sharpness, result.text_sharpness_grid = text_sharpnesses[best_j], text_sharpnesses
        result.text_grid_accuracy = text_counts[:, 0].cpu().float() / num_rows
    result.fields = {space.residual_ratio_field: result.residual_ratio}
    result.fields.update({term.sharpness_field: value for term, value in zip(space.terms, fixed)})
    return result


def _weight(ratio, num_rows: int, device) -> torch.Tensor:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, torch.Tensor)):
        raise TypeError(f"`affinity_ratio` must be a float or a tensor, got {type(ratio).__name__}.")
    ratio = torch.as_tensor(ratio.detach() if isinstance(ratio, torch.Tensor) else ratio).to(device, torch.float32)
    if ratio.numel() == 1 and ratio.dim() <= 2:
        ratio = ratio.reshape(1, 1)
    elif ratio.shape != (num_rows, 1):
        raise ValueError(f"`affinity_ratio` must be a scalar or of shape ({num_rows}, 1), got {tuple(ratio.shape)}.")
    if not bool(((ratio >= 0) & (ratio <= 1)).all()):
        raise ValueError("`affinity_ratio` (gamma) must lie in [0, 1].")
    return ratio


def resolve_search_grid(search_grid, search_scale, search_step, dataset_name=None) -> tuple[str, tuple, tuple]:
    """(grid, scale, step) of a search: `None` is `"tip-adapter-grid"` when a scale or step was given, else
    `"auto"`; the `"tip-adapter-grid"`'s scale and step are the given ones, else the dataset's (``dataset_name``),
    else Tip-Adapter's ImageNet (7, 3) and (200, 20)."""
    if search_grid is None:
        search_grid = "tip-adapter-grid" if search_scale is not None or search_step is not None else "auto"
    check_choice("search_grid", search_grid, SEARCH_GRIDS)
    if dataset_name is not None and search_grid == "tip-adapter-grid":  # explicit argument > dataset > Tip's ImageNet
        from ..data.defaults import dataset_defaults

        defaults = dataset_defaults(dataset_name)
        search_scale = search_scale or tuple(defaults["search_scale"])
        search_step = search_step or defaults.get("search_step")
    scale = (7.0, 3.0) if search_scale is None else search_scale
    return search_grid, scale, (200, 20) if search_step is None else search_step


@torch.no_grad()
def search_hyperparameters(
    zero_shot_logits: torch.Tensor,
    image_cos: torch.Tensor,
    cache_labels: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    *,
    search_grid: str | None = None,
    search_scale: Sequence[float] | None = None,
    search_step: Sequence[int] | None = None,
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
    ``beta_txt`` alone on its 1-D grid. Ties keep the first strict maximum in loop order (sharpness outer, residual
    ratio inner), as Tip-Adapter's ``if acc > best_acc`` does; unlike Tip-Adapter, whose best starts at 0 and returns
    beta = alpha = 0 when every cell scores 0, a grid value is always chosen. The text step starts afresh: it
    returns the first maximum over the text grid, even when the starting ``text_sharpness`` scored higher.

    Args:
        zero_shot_logits (`torch.Tensor` of shape `(M, N)`): ``s * f W^T`` on the validation images.
        image_cos (`torch.Tensor` of shape `(M, NK)`): ``f F^T``, cosines with the image-cache keys.
        cache_labels (`torch.LongTensor` of shape `(NK,)`): each cache entry's class.
        labels (`torch.LongTensor` of shape `(M,)`): the validation labels.
        num_classes (`int`): ``N``.
        logit_scale (`float`): ``s``; the residual-ratio grid is multiplied by ``s / 100``.
        search_grid (`str`, *optional*): `"auto"` (backbone-adaptive log grids, coarse-to-fine; see
            [`search_space_grid`]) or `"tip-adapter-grid"` (Tip-Adapter's linear grids). Defaults to
            `"tip-adapter-grid"` when ``search_scale`` or ``search_step`` is given, to `"auto"` otherwise.
        search_scale (`tuple[float, float]`, *optional*, defaults to `(7.0, 3.0)`): upper ends (excluded) of the
            (sharpness, residual ratio) ranges of the `"tip-adapter-grid"`; the residual ratio's is for ``s = 100``.
        search_step (`tuple[int, int]`, *optional*, defaults to `(200, 20)`): number of values of each.
        start (`float`, *optional*, defaults to 0.1): first value of every grid.
        text_cos (`torch.Tensor` of shape `(M, NK)`, *optional*): ``g T^T`` for XMAdapter's text cache.
        affinity_ratio (`float` or `torch.Tensor` of shape `(M, 1)`, *optional*): ``gamma`` in [0, 1]; required with
            ``text_cos``, rejected without it.
        text_sharpness (`float`, *optional*, defaults to 1.0): ``beta_txt`` during the (beta, alpha) search.
        text_search_scale (`float`, *optional*), text_search_step (`int`, *optional*): the ``beta_txt`` grid;
            default to the sharpness grid's.
        chunk_size (`int`, *optional*): at most this many validation rows at a time (working memory about
            ``chunk_size * (2 * NK + search_step[1] * N)`` floats); `None` processes all rows at once.

    Returns:
        [`SearchResult`].

    Example:

    ```python
    >>> import torch
    >>> from xmadapter_hf.training.search import search_hyperparameters
    >>> image_cos = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # each image is closest to its own class's entry
    >>> result = search_hyperparameters(
    ...     torch.zeros(2, 2), image_cos, torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 100.0, search_step=(4, 3)
    ... )
    >>> result.accuracy, result.sharpness, result.num_validation
    (1.0, 0.1, 2)
    ```
    """
    check_number("logit_scale", logit_scale, 0.0, low_open=True)
    num_classes = check_int("num_classes", num_classes, 1)
    zero_shot_logits = check_tensor("zero_shot_logits", zero_shot_logits, 2, cols=num_classes)
    num_rows = zero_shot_logits.shape[0]
    if num_rows == 0:
        raise ValueError("The validation set is empty: `zero_shot_logits` has 0 rows.")
    image_cos = check_tensor("image_cos", image_cos, 2, rows=num_rows)
    if image_cos.shape[1] == 0:
        raise ValueError("The cache is empty: `image_cos` has 0 columns.")
    cache_labels = check_labels("cache_labels", cache_labels, image_cos.shape[1], num_classes)
    labels = check_labels("labels", labels, num_rows, num_classes)
    device = image_cos.device
    terms = [CacheTerm(image_cos.float(), "sharpness")]
    starting = []
    if text_cos is not None:
        text_cos = check_tensor("text_cos", text_cos, 2, rows=num_rows, cols=image_cos.shape[1])
        if affinity_ratio is None:
            raise ValueError("`affinity_ratio` (gamma) is required when `text_cos` is given.")
        gamma = _weight(affinity_ratio, num_rows, device)
        terms[0].weight = gamma
        terms.append(CacheTerm(text_cos.to(device, torch.float32), "text_sharpness", 1.0 - gamma))
        starting = [check_number("text_sharpness", text_sharpness, 0.0, low_open=True)]
        if text_search_step is not None:
            check_int("text_search_step", text_search_step, 1)
    elif affinity_ratio is not None:
        raise ValueError("`affinity_ratio` was given without `text_cos`; it only weighs the text cache.")
    space = SearchSpace(zero_shot_logits.to(device, torch.float32), cache_labels.to(device), terms)
    search_grid, search_scale, search_step = resolve_search_grid(search_grid, search_scale, search_step)
    return search_space_grid(
        space, labels.to(device), logit_scale, search_grid=search_grid, search_scale=search_scale,
        search_step=search_step, start=start,
        text_search_scale=text_search_scale, text_search_step=text_search_step, starting_sharpness=starting,
        chunk_size=chunk_size,
    )  # fmt: skip


# -------------------------------------------------------------------------------------------------- on a model
def validation_embeddings(model, validation, labels=None, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw embeddings `(M, C)` and labels of a validation split: an image dataset (plain view) or (embeds, labels)."""
    if isinstance(validation, torch.Tensor):
        if labels is None:
            raise ValueError("Pass the validation labels with validation embeddings: (M,) integers.")
        check_tensor("validation embeddings", validation, 2, cols=model.embed_dim)
        return validation, torch.as_tensor(labels).long()
    if model.processor is None:
        raise ValueError("The model has no processor to read validation images with: pass embeddings and labels.")
    from ..data.extraction import extract_embeddings

    extracted = extract_embeddings(
        model.clip, model.processor, validation, augment_views=0, batch_size=batch_size, show_progress=False
    )
    return extracted.embeds[0], extracted.labels


@torch.no_grad()
def search_on_validation(
    model,
    validation,
    labels=None,
    *,
    search_grid: str | None = None,
    search_scale: Sequence[float] | None = None,
    search_step: Sequence[int] | None = None,
    dataset_name: str | None = None,
    text_search_scale: float | None = None,
    text_search_step: int | None = None,
    batch_size: int = 32,
) -> SearchResult:
    """Grid-searches what the model's method tunes on a validation split and writes the choice into `model.config`.

    Args:
        model: an [`XMAdapterForImageClassification`] whose method has a search space (the cache methods); its
            current (possibly trained) keys and text side are used.
        validation: a validation image dataset, or raw validation embeddings `(M, C)` with ``labels``.
        search_grid (`str`, *optional*): `"auto"` or `"tip-adapter-grid"` (see [`search_space_grid`]). Defaults to
            `"tip-adapter-grid"` when ``search_scale`` or ``search_step`` is given, to `"auto"` otherwise: the
            automatic search finds the optimum whatever the backbone; Tip-Adapter's grid reproduces its tables.
        search_scale (`(float, float)`, *optional*): [sharpness max, residual-ratio max] of `"tip-adapter-grid"`;
            defaults to the dataset's (``dataset_name``) or Tip-Adapter's ImageNet scale (7, 3). The residual-ratio
            range is scaled by s / 100.
        search_step (`(int, int)`, *optional*): its sizes; defaults to the dataset's or `(200, 20)`. An explicit
            argument always wins over the dataset's value.
    """
    if not model.method.searches():  # the method does not say what to tune
        raise ValueError(
            f"Method {model.config.method!r} has nothing to search: it has no cache, so no residual ratio or "
            "sharpness."
        )
    if model.config.cache_size == 0:
        raise ValueError(
            "The model has no cache yet: call `model.build_cache(few_shot_dataset)` before `search_hyperparameters` "
            "(the search scores the cache on the validation split)."
        )
    search_grid, search_scale, search_step = resolve_search_grid(search_grid, search_scale, search_step, dataset_name)
    raw, labels = validation_embeddings(model, validation, labels, batch_size)
    device = model.class_embeds.device
    space = model.method.search_space(Fn.l2_normalize(raw.to(device).float()), model.cache_state())
    labels = check_labels("labels", labels.to(device), raw.shape[0], model.config.num_classes)
    starting = [getattr(model.config, term.sharpness_field) for term in space.terms[1:]]
    result = search_space_grid(
        space, labels, model.logit_scale, search_grid=search_grid, search_scale=search_scale, search_step=search_step,
        text_search_scale=text_search_scale, text_search_step=text_search_step, starting_sharpness=starting,
    )  # fmt: skip
    for name, value in result.fields.items():
        setattr(model.config, name, float(value))
    model.config.search_result = {
        "split": "validation",
        "num_validation": int(result.num_validation),
        "accuracy": float(result.accuracy),
        **{name: float(value) for name, value in result.fields.items()},
        "search_grid": search_grid,
        **({"search_scale": list(search_scale), "search_step": list(search_step)} if search_grid != "auto" else {}),
    }
    return result
