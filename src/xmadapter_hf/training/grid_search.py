"""The grid search over a method's [`~xmadapter_hf.methods.SearchSpace`]: a pure function of tensors,

    logits(beta, alpha) = zero_shot_logits + alpha * sum_t weight_t exp(-beta_t (1 - cos_t)) L

searched as Tip-Adapter does: the first cache's sharpness and the residual ratio jointly (sharpness outer, ratio
inner, ties keep the first strict maximum), then each further cache's sharpness on its own 1-D grid (XMAdapter's text
cache; coordinate-wise, not a 3-D grid). The cache logits ``A L`` are computed once per sharpness value with the
library's one implementation (`methods/cache.py`) and every residual ratio is scored at once (`counting.py`: the
rows the smallest and largest ratio decide are not scored at every ratio; the counts equal the direct argmax's);
since the fusion is linear and each weight is per row, the other caches' halves are computed once for the whole grid.

A space may also hold logit terms ([`~xmadapter_hf.methods.LogitTerm`], ``+ weight_g * logits_g``: GDA's Gaussian
discriminant), whose logits are computed once: the caches are searched with them at their starting weights, then
each term's weight on its own 1-D grid with the caches at their chosen values (coordinate-wise again; ties keep the
smallest weight). A term marked `searched_first` (XMAdapter's Gaussian term) is searched before the caches instead,
with the caches off, and the caches are then searched with it at its chosen weight and a residual ratio of 0 tried
first (ties keep the caches off), so that the searched space contains that term alone. A space without cache terms
searches its logit terms only.

The entry points on a model and on raw tensors, which build the search space, are in `search.py`; the grids' values
in `grids.py`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..methods import CacheTerm, LogitTerm, SearchSpace
from ..methods.cache import affinity_, class_sums
from ..validation import check_choice, check_int, check_number, check_pair
from .counting import count_correct
from .grids import SEARCH_GRIDS, linear_grid, log_grid, residual_ratio_grid, sharpness_grid

__all__ = [
    "AUTO_COARSE_STEPS",
    "AUTO_FINE_STEPS",
    "AUTO_RATIO_DECADES",
    "AUTO_SHARPNESS_RANGE",
    "AUTO_WEIGHT_DECADES",
    "AUTO_WEIGHT_STEPS",
    "SearchResult",
    "default_chunk_size",
    "logit_term_grid",
    "ratio_balance",
    "search_space_grid",
    "weight_balance",
]


@dataclass
class SearchResult:
    """The values chosen by the search and the grids it searched.

    Args:
        sharpness (`float` or `None`): the chosen ``beta`` of the first cache; `None` for a space without cache terms.
        residual_ratio (`float` or `None`): the chosen ``alpha`` (already on the backbone's logit scale); `None`
            without cache terms.
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
        weight_grids (`dict[str, list[float]]`): each logit term's searched weights, by its config field.
        weight_grid_accuracy (`dict[str, torch.Tensor]`): validation accuracy of each of those weights.
    """

    sharpness: float | None
    residual_ratio: float | None
    text_sharpness: float | None
    accuracy: float
    num_validation: int
    sharpness_grid: list[float]
    residual_ratio_grid: list[float]
    text_sharpness_grid: list[float] | None = None
    grid_accuracy: torch.Tensor | None = None
    text_grid_accuracy: torch.Tensor | None = None
    fields: dict | None = None
    weight_grids: dict = dataclasses.field(default_factory=dict)
    weight_grid_accuracy: dict = dataclasses.field(default_factory=dict)


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
            counts[i] += count_correct(space.zero_shot_logits[rows], _fused(parts, space.terms, rows), ratios[i],
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


def _auto_search(space, labels, chunks, fixed, coarse_steps, fine_steps, zero_first: bool = False):
    """Coarse-to-fine search of (sharpness of the first term, residual ratio): returns ((count, beta, alpha) of the
    first maximum, the coarse betas, the coarse ratios `(S, P)`, the coarse counts) (coarse maxima win ties with the
    fine stage: it is searched second and only strict improvements move the choice). ``zero_first``: a ratio of 0
    (the caches off) heads every row of the coarse grid, and a choice of 0 is final (no fine stage)."""
    betas = log_grid(*AUTO_SHARPNESS_RANGE, coarse_steps[0])
    balance = ratio_balance(space, betas, fixed)  # (S,)
    factors = torch.tensor(log_grid(10 ** AUTO_RATIO_DECADES[0], 10 ** AUTO_RATIO_DECADES[1], coarse_steps[1]),
                           dtype=torch.float64)  # fmt: skip
    ratios = (balance[:, None] * factors[None]).float().to(labels.device)  # (S, P)
    if zero_first:
        ratios = torch.cat([ratios.new_zeros(ratios.shape[0], 1), ratios], dim=1)  # (S, 1 + P)
    counts = _grid_counts(space, labels, chunks, betas, ratios, fixed, varied=0)
    best_i, best_k = divmod(_first_maximum(counts), ratios.shape[1])
    best = (int(counts[best_i, best_k]), betas[best_i], float(ratios[best_i, best_k]))
    if best[2] == 0.0:
        return best, betas, ratios, counts
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


#: `search_grid="auto"` for a logit term: its weight on a log grid over ``weight_ref * 10^[-2, 3]`` (61 values, twelve
#: per decade; the range reaches far above the balance, where the term alone decides: on the demo task GDA's best
#: weight was up to 42 times it at 16 shots, docs/methods.md).
AUTO_WEIGHT_DECADES = (-2.0, 3.0)
AUTO_WEIGHT_STEPS = 61


def weight_balance(space: SearchSpace, term: LogitTerm) -> float:
    """``weight_ref``: the weight at which ``term``'s logits spread across classes as much as the zero-shot logits,
    ``mean_rows std_classes(zero_shot) / mean_rows std_classes(logits)`` on the first 512 validation rows (as
    [`ratio_balance`] for a cache; labels are not used). 1 for logits without spread."""
    rows = slice(0, min(_BALANCE_ROWS, space.zero_shot_logits.shape[0]))
    target = space.zero_shot_logits[rows].std(dim=1).mean()
    spread = term.logits[rows].float().std(dim=1).mean()
    value = float(target / spread) if spread > 0 else math.nan
    return value if math.isfinite(value) and value > 0 else 1.0


def logit_term_grid(space: SearchSpace, term: LogitTerm, search_grid: str) -> list[float]:
    """The weights searched for ``term``, increasing: its `paper_grid` unless ``search_grid`` is `"auto"` (or it has
    none), else `AUTO_WEIGHT_STEPS` log-spaced values over ``weight_ref * 10^AUTO_WEIGHT_DECADES``; 0 first where
    the term may be switched off (`LogitTerm.can_switch_off`: a tie keeps it off)."""
    if search_grid != "auto" and term.paper_grid is not None:
        grid = [float(value) for value in term.paper_grid]
    else:
        low, high = (10.0**decade for decade in AUTO_WEIGHT_DECADES)
        reference = weight_balance(space, term)
        grid = [reference * factor for factor in log_grid(low, high, AUTO_WEIGHT_STEPS)]
    return ([0.0] if term.can_switch_off else []) + grid


def _logits_at(space: SearchSpace, rows: slice, fixed, ratio, weights, skip: int | None = None) -> torch.Tensor:
    """``zero_shot + alpha sum_t weight_t A_t L + sum_g w_g logits_g`` of a chunk of rows at the given values, the
    logit term ``skip`` left out."""
    logits = space.zero_shot_logits[rows]
    if space.terms:
        parts = [_term_logits(1.0 - term.cosines[rows], fixed[t], space) for t, term in enumerate(space.terms)]
        logits = logits + ratio * _fused(parts, space.terms, rows)
    for g, term in enumerate(space.logit_terms):
        if g != skip and weights[g] != 0:
            logits = logits + weights[g] * term.logits[rows]
    return logits


def _search_logit_terms(space, labels, chunks, result: SearchResult, fixed, weights, search_grid: str,
                        which: list[int] | None = None) -> None:  # fmt: skip
    """Each logit term's weight (of the terms ``which``, default all) on its own 1-D grid, in order, the caches at
    their chosen values and the other logit terms at their current weights; fills ``weights``, ``result``'s accuracy
    and its weight grids."""
    num_rows = labels.shape[0]
    for g, term in enumerate(space.logit_terms):
        if which is not None and g not in which:
            continue
        grid = logit_term_grid(space, term, search_grid)
        values = torch.tensor(grid, dtype=term.logits.dtype, device=labels.device)
        counts = torch.zeros(len(grid), dtype=torch.long, device=labels.device)
        for rows in chunks:
            base = _logits_at(space, rows, fixed, result.residual_ratio, weights, skip=g)
            counts += count_correct(base, term.logits[rows], values, labels[rows])
        best = _first_maximum(counts)
        weights[g] = grid[best]
        result.accuracy = int(counts[best]) / num_rows
        result.weight_grids[term.weight_field] = grid
        result.weight_grid_accuracy[term.weight_field] = counts.cpu().float() / num_rows


def default_chunk_size(num_rows: int, num_entries: int, num_classes: int, num_ratios: int) -> int:
    """Validation rows per chunk so that the search's working tensors stay near 256 MiB: about ``rows * (2 NK +
    P N)`` float32 values (the hoisted distances and their affinities, the scores of every ratio)."""
    per_row = 4 * (2 * num_entries + num_ratios * num_classes + num_classes)
    return max(1, min(num_rows, (256 << 20) // max(1, per_row)))


def _auto_cache_search(space, labels, chunks, fixed, zero_first: bool = False) -> SearchResult:
    """`search_grid="auto"` over the cache terms (the first jointly with the residual ratio, the others in 1-D);
    fills ``fixed`` with the chosen sharpness values. ``zero_first``: the residual ratio 0 is tried first."""
    num_rows = labels.shape[0]
    (count, beta, alpha), sharpnesses, ratios, counts = _auto_search(
        space, labels, chunks, fixed, AUTO_COARSE_STEPS, AUTO_FINE_STEPS, zero_first
    )
    fixed[0] = beta
    result = SearchResult(
        sharpness=beta, residual_ratio=alpha, text_sharpness=None, accuracy=count / num_rows,
        num_validation=num_rows, sharpness_grid=sharpnesses, residual_ratio_grid=ratios.cpu().tolist(),
        grid_accuracy=counts.cpu().float() / num_rows,
    )  # fmt: skip
    for term in range(1, len(space.terms)):
        (count, text_beta), text_grid, text_counts = _auto_text_search(
            space, labels, chunks, fixed, term, alpha, AUTO_COARSE_STEPS[0], AUTO_FINE_STEPS
        )
        fixed[term] = text_beta
        result.accuracy = count / num_rows
        result.text_sharpness, result.text_sharpness_grid = text_beta, text_grid
        result.text_grid_accuracy = text_counts.cpu().float() / num_rows
    return result


def _paper_cache_search(space, labels, chunks, fixed, logit_scale, scale, steps, start, text_scale, text_steps,
                        zero_first: bool = False):  # fmt: skip
    """Tip-Adapter's linear grids over the cache terms; fills ``fixed`` with the chosen sharpness values.
    ``zero_first``: the residual ratio 0 is tried first."""
    num_rows, (beta_max, alpha_max), (beta_steps, alpha_steps) = labels.shape[0], scale, steps
    sharpnesses = sharpness_grid(beta_max, beta_steps, start)
    alphas = ([0.0] if zero_first else []) + list(residual_ratio_grid(alpha_max, alpha_steps, logit_scale, start))
    if len(space.terms) > 1:
        text_scale = beta_max if text_scale is None else text_scale
        text_steps = beta_steps if text_steps is None else text_steps
        text_sharpnesses = linear_grid(text_scale, text_steps, start, "text_search_scale", "text_search_step")
    ratios = torch.tensor(alphas, dtype=torch.float32, device=labels.device)
    counts = _grid_counts(space, labels, chunks, sharpnesses, ratios, fixed, varied=0)
    best_i, best_k = divmod(_first_maximum(counts), len(alphas))
    fixed[0] = sharpnesses[best_i]
    result = SearchResult(
        sharpness=sharpnesses[best_i], residual_ratio=alphas[best_k], text_sharpness=None,
        accuracy=int(counts[best_i, best_k]) / num_rows, num_validation=num_rows, sharpness_grid=sharpnesses,
        residual_ratio_grid=alphas, grid_accuracy=counts.cpu().float() / num_rows,
    )  # fmt: skip
    for term in range(1, len(space.terms)):
        text_counts = _grid_counts(space, labels, chunks, text_sharpnesses, ratios[best_k : best_k + 1], fixed, term)
        best_j = _first_maximum(text_counts)
        fixed[term] = text_sharpnesses[best_j]
        result.accuracy = int(text_counts[best_j, 0]) / num_rows
        result.text_sharpness, result.text_sharpness_grid = text_sharpnesses[best_j], text_sharpnesses
        result.text_grid_accuracy = text_counts[:, 0].cpu().float() / num_rows
    return result


def _without_caches(space, labels, chunks, weights) -> SearchResult:
    """The result of a space without cache terms before its logit terms are searched: the accuracy at their
    starting weights."""
    correct = sum(int((_logits_at(space, rows, [], 0.0, weights).argmax(-1) == labels[rows]).sum()) for rows in chunks)
    return SearchResult(
        sharpness=None, residual_ratio=None, text_sharpness=None, accuracy=correct / labels.shape[0],
        num_validation=labels.shape[0], sharpness_grid=[], residual_ratio_grid=[],
    )  # fmt: skip


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
    starting_weights: Sequence[float] | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """The grid search over a [`~xmadapter_hf.methods.SearchSpace`] (see the module docstring).

    ``search_grid="tip-adapter-grid"`` (or its general name `"paper"`: each term's paper's own grid): Tip-Adapter's
    linear grids, the first cache term's sharpness over ``search_step[0]`` values below ``search_scale[0]`` with the
    residual ratio (``search_step[1]`` values below ``search_scale[1]``, scaled by ``logit_scale / 100``), the
    further terms held at ``starting_sharpness``; then each further term's sharpness on its own grid
    (``text_search_scale``/``_step``, defaulting to the first term's); each logit term's weight over its
    `paper_grid` (GDA's official alpha grid, already scaled by ``s / 100``).

    ``search_grid="auto"``: backbone-adaptive and coarse-to-fine (docs/methods.md): sharpness on a log grid over
    [0.1, 100] (`AUTO_COARSE_STEPS[0]` values), the residual ratio on a log grid over ``alpha_ref(beta) * [1e-2,
    1e2]`` ([`ratio_balance`]; `AUTO_COARSE_STEPS[1]` values), then a finer grid one coarse step around the choice;
    each further term's sharpness likewise in 1-D; each logit term's weight over [`logit_term_grid`]'s
    backbone-adaptive range. ``search_scale`` and ``search_step`` are not used.

    Logit terms start at ``starting_weights`` (default 1 each) while the caches are searched, except those marked
    `searched_first`, which are searched before the caches with the caches off (and the caches' residual ratio then
    tries 0 first); the chosen weights are in `fields` under their config fields. ``chunk_size`` bounds the rows
    processed at once (default: [`default_chunk_size`])."""
    logit_scale = check_number("logit_scale", logit_scale, 0.0, low_open=True)
    check_choice("search_grid", search_grid, SEARCH_GRIDS)
    if not space.terms and not space.logit_terms:
        raise ValueError("The search space has no term to search: neither a cache term nor a logit term.")
    count = len(space.logit_terms)
    weights = [float(w) for w in (starting_weights if starting_weights is not None else [1.0] * count)]
    if len(weights) != count:
        raise ValueError(f"`starting_weights` needs one weight per logit term ({count}); got {len(weights)}.")
    fixed = [0.0, *(starting_sharpness or [1.0] * (len(space.terms) - 1))] if space.terms else []
    paper = search_grid != "auto" and bool(space.terms)  # Tip-Adapter's grids for the caches
    if paper:
        scale = check_pair("search_scale", search_scale, "sharpness, residual_ratio")
        steps = check_pair("search_step", search_step, "sharpness, residual_ratio")
    chunks = _row_chunks(space, labels.shape[0], steps[1] if paper else AUTO_COARSE_STEPS[1] + 1, chunk_size)
    first = [g for g, term in enumerate(space.logit_terms) if term.searched_first] if space.terms else []
    # the `searched_first` terms alone with the caches off, the other logit terms at their starting weights
    searched_first = _search_first_terms(space, labels, chunks, weights, first, search_grid) if first else None
    if space.terms:
        cache_space = space  # the caches are searched with the logit terms at their starting weights
        if space.logit_terms:
            rows_only = dataclasses.replace(space, terms=[])
            base = torch.cat([_logits_at(rows_only, rows, [], 0.0, weights) for rows in chunks])
            cache_space = dataclasses.replace(space, zero_shot_logits=base, logit_terms=[])
        if paper:
            result = _paper_cache_search(cache_space, labels, chunks, fixed, logit_scale, scale, steps, start,
                                         text_search_scale, text_search_step, bool(first))  # fmt: skip
        else:
            result = _auto_cache_search(cache_space, labels, chunks, fixed, bool(first))
        result.fields = {space.residual_ratio_field: result.residual_ratio}
        result.fields.update({term.sharpness_field: value for term, value in zip(space.terms, fixed)})
    else:
        result = _without_caches(space, labels, chunks, weights)
        result.fields = {}
    if searched_first is not None:
        result.weight_grids.update(searched_first.weight_grids)
        result.weight_grid_accuracy.update(searched_first.weight_grid_accuracy)
    later = [g for g in range(len(space.logit_terms)) if g not in first]
    if later:
        _search_logit_terms(space, labels, chunks, result, fixed, weights, search_grid, later)
    if space.logit_terms:
        result.fields.update({term.weight_field: weight for term, weight in zip(space.logit_terms, weights)})
    return result


def _search_first_terms(space, labels, chunks, weights, first: list[int], search_grid: str) -> SearchResult:
    """The `searched_first` logit terms' weights (into ``weights``), each on its own 1-D grid with the caches off;
    returns a result holding their grids (its accuracy is superseded by the cache search that follows)."""
    alone = dataclasses.replace(space, terms=[])
    scratch = SearchResult(sharpness=None, residual_ratio=0.0, text_sharpness=None, accuracy=0.0,
                           num_validation=labels.shape[0], sharpness_grid=[], residual_ratio_grid=[])  # fmt: skip
    _search_logit_terms(alone, labels, chunks, scratch, [], weights, search_grid, first)
    return scratch


def _row_chunks(space: SearchSpace, num_rows: int, num_ratios: int, chunk_size: int | None) -> list[slice]:
    """The validation rows in chunks of ``chunk_size`` (default: [`default_chunk_size`] for ``num_ratios`` residual
    ratios, or for the longest logit-term grid)."""
    if chunk_size is None:
        if space.logit_terms:
            grids = (AUTO_WEIGHT_STEPS, *(len(term.paper_grid or ()) for term in space.logit_terms))
            num_ratios = max(num_ratios, 1 + max(grids))  # +1: a grid may start with 0
        entries = space.terms[0].cosines.shape[1] if space.terms else 0
        size = default_chunk_size(num_rows, entries, space.zero_shot_logits.shape[1], num_ratios)
    else:
        size = check_int("chunk_size", chunk_size, 1)
    return [slice(i, min(i + size, num_rows)) for i in range(0, num_rows, size)]
