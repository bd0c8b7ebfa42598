"""How many validation rows ``zero_shot + alpha * cache`` classifies correctly, for many ``alpha`` at once, exactly.

The direct way builds the `(P, m, N)` logits of every ratio and takes their argmax: `P` passes over `(m, N)` per
sharpness value, which at ImageNet's size (P = 32 ratios, N = 1,000 classes) costs more than the affinity pass
itself (docs/benchmarks.md). [`count_correct`] gives the same counts from a few passes over `(m, N)`:

Row ``r`` (label ``y``) is correct at ``alpha`` when ``d_j(alpha) = (z_j - z_y) + alpha (c_j - c_y)`` is below zero
for every other class ``j`` (a tie goes to the lower index, as `argmax` does). Each ``d_j`` is linear in ``alpha``, so
the ``alpha`` where *every* ``d_j`` stays below ``-tol_j(alpha)`` (with a tolerance far above float32's rounding of the
logits, ``tol_j = 1e-5 (|z_j| + |z_y| + alpha (|c_j| + |c_y|))``) is one interval, the intersection of half-lines:
there the row is certainly correct. Likewise, outside the interval where every ``d_j`` stays below ``+tol_j`` it is
certainly wrong. Only the (row, ``alpha``) pairs between the two, where some class is within rounding of the label's
logit, are decided by the direct computation (the float32 ``zero_shot + alpha * cache`` and its argmax, as before), so
the counts are exactly the direct way's (tests/test_search.py compares them, ties and near-ties included).
"""

from __future__ import annotations

import torch

__all__ = ["count_correct", "count_correct_direct"]

#: Relative tolerance of the certain decisions: float32 rounds ``z + alpha c`` within about 2.4e-7 of the magnitudes.
_TOLERANCE = 1e-5


def count_correct_direct(zero_shot: torch.Tensor, cache: torch.Tensor, ratios: torch.Tensor, labels: torch.Tensor):
    """Correct predictions of ``zero_shot + alpha * cache`` for every alpha, by building the `(P, m, N)` logits."""
    logits = zero_shot[None] + ratios[:, None, None] * cache[None]  # (P, m, N)
    return (logits.argmax(dim=-1) == labels[None]).sum(dim=1)  # (P, m) -> (P,)


def _interval(offset: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``alpha`` interval (low, high) where every ``offset_j + alpha slope_j < 0`` (`(m, N)` lines)."""
    bound = offset.div(slope).neg_()  # where each line crosses zero
    high = bound.masked_fill(slope <= 0, float("inf")).amin(dim=1)  # rising lines bound alpha from above
    low = bound.masked_fill_(slope >= 0, -float("inf")).amax(dim=1)  # falling lines from below
    flat = slope == 0
    if bool(flat.any()):
        flat_bad = (flat & (offset >= 0)).any(dim=1)  # a flat line at or above zero: never
        low, high = low.masked_fill(flat_bad, float("inf")), high.masked_fill(flat_bad, -float("inf"))
    return low, high


def _inside(alphas: torch.Tensor, low: torch.Tensor, high: torch.Tensor, grow: float) -> torch.Tensor:
    """`(P, m)`: ``alpha`` inside (low, high) shrunk (``grow < 0``) or grown (``grow > 0``) by a relative margin."""
    low, high = low[None], high[None]
    a = alphas[:, None]
    return (a > low - grow * low.abs()) & (a < high + grow * high.abs())


@torch.no_grad()
def count_correct(zero_shot: torch.Tensor, cache: torch.Tensor, ratios: torch.Tensor, labels: torch.Tensor):
    """Correct predictions of ``zero_shot + alpha * cache`` (`(m, N)` each) for every alpha of ``ratios`` `(P,)`
    (all >= 0), `(P,)` int64: the counts of [`count_correct_direct`], from O(m N) work (see the module docstring)."""
    if (
        zero_shot.dtype != torch.float32
        or cache.dtype != torch.float32
        or zero_shot.shape[1] < 2
        or not bool((ratios >= 0).all())
        or not (torch.isfinite(zero_shot).all() and torch.isfinite(cache).all() and torch.isfinite(ratios).all())
    ):
        return count_correct_direct(zero_shot, cache, ratios, labels)
    rows = torch.arange(labels.shape[0], device=labels.device)
    z_y, c_y = zero_shot[rows, labels][:, None], cache[rows, labels][:, None]  # (m, 1)
    d0, d1 = zero_shot - z_y, cache - c_y  # (m, N): d_j(alpha) = d0 + alpha d1
    # (+ a tiny floor: an exact tie of zeros is decided the direct way, where the lower index wins)
    t0 = (zero_shot.abs() + z_y.abs()).mul_(_TOLERANCE).add_(1e-30)
    t1 = (cache.abs() + c_y.abs()).mul_(_TOLERANCE)
    # the label's own column is no competitor: a line that is always below zero (crossing it at alpha = inf)
    d0[rows, labels], d1[rows, labels], t0[rows, labels], t1[rows, labels] = -float("inf"), 1.0, 0.0, 0.0
    sure_low, sure_high = _interval(d0 + t0, d1 + t1)  # every d_j < -tol_j: certainly correct
    open_low, open_high = _interval(d0 - t0, d1 - t1)  # every d_j < +tol_j: not certainly wrong
    sure = _inside(ratios, sure_low, sure_high, -_TOLERANCE)  # (P, m)
    possible = _inside(ratios, open_low, open_high, _TOLERANCE)
    counts = sure.sum(dim=1)
    unsure = possible & ~sure
    if bool(unsure.any()):  # within rounding of a tie: decide these pairs the direct way
        which, row = unsure.nonzero(as_tuple=True)
        logits = zero_shot[row] + ratios[which][:, None] * cache[row]  # (u, N), as the direct way computes them
        hits = (logits.argmax(dim=-1) == labels[row]).long()
        counts.index_add_(0, which, hits)
    return counts
