"""Scoring every residual ratio of the grid search: the correct predictions of ``base + alpha * term`` for each alpha.

The direct way ([`count_correct_direct`]) builds the `(P, m, N)` logits of all P ratios and takes their argmax: at
ImageNet's N = 1,000 classes and P = 32 that is most of the search's time, more than the affinity pass it scores.
[`count_correct`] gives the same counts, bit for bit, from the two end ratios and the direct way on the few rows the
end points leave undecided:

For one row with true class ``y``, each class's logit ``z_j + alpha s_j`` is linear in alpha, so the true class's
lead ``min_{j != y} (z_y + alpha s_y) - (z_j + alpha s_j)`` is a minimum of linear functions, concave in alpha: a row
whose lead is positive at the smallest and at the largest ratio is correct at every ratio in between, and a row where
one class beats the true class at both ends (a linear difference) is wrong at every ratio in between. Floating-point
logits are not exactly linear, so "positive" means above a bound on the rounding: with ``D = eps (|z|_max + |alpha|_max
|s|_max)`` per row (the worst error of ``fl(z + fl(alpha s))`` in the coarsest dtype involved), a lead above ``6 D``
at both ends keeps every computed logit of the row's winner strictly above every other at every ratio of the grid,
whatever the order of the float operations, so the argmax (first maximum on ties) is the true class exactly where
the direct way's is. Rows within the bound of a tie, non-finite rows and rows whose winner changes between the ends
are counted the direct way. The result is therefore equal to the direct count for every input, ties included
(tests/test_counting.py checks it against the direct way on ties, constant rows and non-finite values).
"""

from __future__ import annotations

import torch

__all__ = ["count_correct", "count_correct_direct"]

#: The lead (in units of the per-row rounding bound ``D``) that decides a row from the end ratios alone.
_LEAD = 6.0
#: Ratios counted the direct way at once (fewer than this: splitting the grid further costs more than it saves).
_LEAF = 4


def count_correct_direct(base: torch.Tensor, term: torch.Tensor, ratios: torch.Tensor, labels: torch.Tensor):
    """Correct predictions of ``base + alpha * term`` for every alpha of ``ratios`` at once: `(P,)` int64.

    ``base`` and ``term`` are `(m, N)` logits, ``ratios`` `(P,)`, ``labels`` `(m,)`: the argmax of the `(P, m, N)`
    logits (the first maximum on ties) against the labels."""
    logits = base[None] + ratios[:, None, None] * term[None]  # (P, m, N)
    return (logits.argmax(dim=-1) == labels[None]).sum(dim=1)  # (P, m) -> (P,)


def count_correct(base: torch.Tensor, term: torch.Tensor, ratios: torch.Tensor, labels: torch.Tensor):
    """[`count_correct_direct`]'s counts (equal for every input), scoring the direct way only the rows the end ratios
    leave undecided, on halves of the grid in turn (see the module docstring)."""
    num_rows, num_ratios = base.shape[0], ratios.numel()
    if num_ratios <= _LEAF or num_rows == 0 or base.shape[-1] < 2 or not bool(torch.isfinite(ratios).all()):
        return count_correct_direct(base, term, ratios, labels)
    probe = base[:1, :1] + ratios[:1, None, None] * term[:1, :1]  # the logits' dtype, as the direct way promotes
    eps = max(torch.finfo(t.dtype).eps for t in (base, term, ratios, probe))
    tiny = max(torch.finfo(t.dtype).tiny for t in (base, term, ratios, probe))
    bound = (_row_magnitude(base) + float(ratios.abs().max()) * _row_magnitude(term)) * (eps * (1 + eps)) + tiny
    threshold = (_LEAD * bound).to(probe.dtype)  # (m,): NaN or inf where a row is not finite
    finite = torch.isfinite(threshold)
    counts = [0] * num_ratios  # Python ints: no tensor op per update
    if not bool(finite.all()):  # rows with a non-finite value: the direct way, on every ratio
        odd = (~finite).nonzero()[:, 0]
        _add(counts, range(num_ratios), count_correct_direct(base[odd], term[odd], ratios, labels[odd]))
        rows = finite.nonzero()[:, 0]
        base, term, threshold, labels = base[rows], term[rows], threshold[rows], labels[rows]
    _count_sorted(base, term, threshold, labels, ratios, ratios.argsort(), counts)
    return torch.tensor(counts, dtype=torch.long, device=base.device)


def _add(counts: list, positions, values: torch.Tensor) -> None:
    for position, value in zip(positions, values.tolist()):
        counts[position] += value


def _count_sorted(base, term, threshold, labels, ratios, order, counts: list) -> None:
    """Adds the correct counts of the ratios ``ratios[order]`` (``order`` sorts them) into ``counts[order]``; every
    row's threshold is finite."""
    if order.numel() <= _LEAF or base.shape[0] == 0:
        if base.shape[0]:
            _add(counts, order.tolist(), count_correct_direct(base, term, ratios[order], labels))
        return
    ends = ratios[order[[0, -1]]]  # (2,): the smallest and largest ratio
    dtype = threshold.dtype  # the direct way's promoted dtype
    # (2, m, N): the logits at each end, in one fused pass (the bound holds whatever the rounding order)
    logits = torch.addcmul(base[None].to(dtype), ends[:, None, None].to(dtype), term[None].to(dtype))
    top, winner = logits.max(dim=-1)  # (2, m) each: the value and the first index of each end's maximum
    # the true class's and both ends' winners' logits at both ends, (2, m, 3)
    picked = logits.gather(-1, torch.stack([labels, winner[0], winner[1]], dim=-1)[None].expand(2, -1, -1))
    # one class (either end's winner) more than the threshold above the true class at both ends: wrong throughout
    behind = ((picked[..., 1:] - picked[..., :1]) > threshold[None, :, None]).all(dim=0)  # (m, 2)
    trails = (behind & (winner.t() != labels[:, None])).any(dim=-1)
    # correct at both ends with every other class more than the threshold below: correct at every ratio between
    second = logits.scatter_(-1, winner[..., None], -torch.inf).amax(dim=-1)  # (2, m): the runner-up's logit
    leads = ((winner == labels[None]) & ((top - second) > threshold)).all(dim=0)
    decided = int(leads.sum())
    for position in order.tolist():
        counts[position] += decided
    rest = (~(leads | trails)).nonzero()[:, 0]
    if rest.numel() == 0:
        return
    if rest.numel() < base.shape[0]:
        base, term = base.index_select(0, rest), term.index_select(0, rest)
        threshold, labels = threshold[rest], labels[rest]
    half = order.numel() // 2  # the undecided rows on each half of the grid: most cross between two ratios only
    _count_sorted(base, term, threshold, labels, ratios, order[:half], counts)
    _count_sorted(base, term, threshold, labels, ratios, order[half:], counts)


def _row_magnitude(values: torch.Tensor) -> torch.Tensor:
    """``max_j |values_j|`` of each row, float64 (NaN where a row holds a NaN)."""
    low, high = values.amin(dim=-1), values.amax(dim=-1)  # two passes: faster than `aminmax` on CPU
    return torch.maximum(low.abs(), high.abs()).double()
