"""The search's ratio scoring (training/counting.py): `count_correct` equals the direct argmax count for every input,
ties, constant rows, rows that change winner between the end ratios and non-finite values included."""

from __future__ import annotations

import pytest
import torch

from xmadapter_hf.training.counting import count_correct, count_correct_direct


def _check(base, term, ratios, labels):
    fast, direct = count_correct(base, term, ratios, labels), count_correct_direct(base, term, ratios, labels)
    assert fast.dtype == direct.dtype == torch.long
    assert torch.equal(fast, direct), (fast, direct)
    return direct


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_rows_equal_the_direct_count(dtype):
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        m, n, p = 64, int(torch.randint(2, 40, (1,), generator=gen)), int(torch.randint(3, 40, (1,), generator=gen))
        base = (torch.randn(m, n, generator=gen) * 10).to(dtype)
        term = torch.rand(m, n, generator=gen).to(dtype) * (trial % 3)
        ratios = torch.rand(p, generator=gen).to(dtype) * 5
        labels = torch.randint(0, n, (m,), generator=gen)
        counts = _check(base, term, ratios, labels)
        assert counts.max() <= m


def test_ties_and_near_ties_equal_the_direct_count():
    """Exact ties at a grid ratio (the argmax's first maximum decides), crossings between grid ratios, rows equal
    within rounding: the rows the end points leave undecided are counted the direct way."""
    n = 5
    ratios = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0, 4.0])
    base = torch.zeros(12, n)
    term = torch.zeros(12, n)
    base[0, 1], term[0, 3] = 1.0, 1.0  # class 1 leads at 0, ties class 3 at alpha = 1, then class 3 leads
    base[1, 3], term[1, 1] = 1.0, 1.0  # the mirror: the first maximum picks class 1 at the tie
    base[2] = 0.5  # a constant row: every alpha ties all classes, the argmax is class 0
    base[3, 2], base[3, 4] = 1.0, 1.0 + 1e-7  # within rounding of a tie everywhere
    base[4, 0], term[4, 0] = 3.0, 1.0  # clearly class 0 throughout
    base[5, 4], term[5, 4] = 3.0, 1.0  # clearly class 4 throughout
    base[6, 2], term[6, 3] = 1.0, 2.0  # crossing at alpha = 0.5 exactly
    base[7, 1], term[7, 1], term[7, 2] = 2.0, 1.0, 1.5  # class 1 leads, class 2 overtakes at alpha = 4
    base[8] = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # a tie between 0 and 1 at every alpha
    base[9:] = torch.randn(3, n)
    for labels in (
        torch.tensor([1, 1, 0, 2, 0, 4, 3, 1, 1, 4, 0, 2]),
        torch.tensor([3, 3, 1, 4, 0, 4, 2, 2, 0, 1, 2, 3]),
    ):
        _check(base, term, ratios, labels)
        _check(base, term, ratios.flip(0), labels)  # the ends are the smallest and largest ratio, in any order
        _check(base, term, torch.tensor([0.0, 0.5, 0.5, 1.0]), labels)  # repeated ratios


def test_non_finite_values_are_counted_the_direct_way():
    gen = torch.Generator().manual_seed(1)
    base, term = torch.randn(8, 6, generator=gen), torch.rand(8, 6, generator=gen)
    base[0, 2] = float("nan")
    term[1, 0] = float("inf")
    base[2, 5] = float("-inf")
    term[3, 3] = float("nan")
    base[4, 1] = 3e38  # overflows to inf at the larger ratios
    term[4, 1] = 3e38
    labels = torch.randint(0, 6, (8,), generator=gen)
    labels[:5] = torch.tensor([2, 0, 5, 3, 1])
    _check(base, term, torch.linspace(0, 3, 7), labels)


def test_degenerate_shapes():
    gen = torch.Generator().manual_seed(2)
    base, term, labels = (
        torch.randn(5, 4, generator=gen),
        torch.randn(5, 4, generator=gen),
        torch.tensor([0, 1, 2, 3, 0]),
    )
    for ratios in (
        torch.tensor([1.0]),
        torch.tensor([0.0, 2.0]),
        torch.tensor([1.0, 1.0, 1.0]),
        torch.tensor([-1.0, 0.0, 1.0]),
    ):
        _check(base, term, ratios, labels)
    _check(base[:0], term[:0], torch.tensor([0.0, 1.0, 2.0]), labels[:0])  # no rows
    _check(base[:, :1], term[:, :1], torch.tensor([0.0, 1.0, 2.0]), torch.zeros(5, dtype=torch.long))  # one class
    _check(base, term, torch.tensor([0.0, float("nan"), 2.0]), labels)  # a NaN ratio: the direct way


def test_a_search_shaped_input_is_mostly_decided_from_the_ends(monkeypatch):
    """On cache-like scores most rows are decided from the two ends, and only the rest reach the direct way."""
    import xmadapter_hf.training.counting as counting

    gen = torch.Generator().manual_seed(3)
    m, n = 400, 50
    labels = torch.randint(0, n, (m,), generator=gen)
    base = torch.randn(m, n, generator=gen) * 2
    base[torch.arange(m), labels] += 6.0
    term = torch.rand(m, n, generator=gen)
    term[torch.arange(m), labels] += 1.0
    ratios = torch.logspace(-2, 1, 32)
    rows = []
    original = counting.count_correct_direct

    def spy(base, term, ratios, labels):
        rows.append(base.shape[0])
        return original(base, term, ratios, labels)

    monkeypatch.setattr(counting, "count_correct_direct", spy)
    fast = count_correct(base, term, ratios, labels)
    assert rows and sum(rows) < m  # the direct way sees far fewer rows than the 32 ratios times m
    assert torch.equal(fast, original(base, term, ratios, labels))


def test_integer_logits_with_many_exact_ties():
    """Small integer logits and ratios on a half-integer grid tie exactly at many grid points, and many rows change
    winner several times across the grid (negative ratios included)."""
    gen = torch.Generator().manual_seed(4)
    for _ in range(10):
        base = torch.randint(-3, 4, (200, 6), generator=gen).float()
        term = torch.randint(-2, 3, (200, 6), generator=gen).float()
        labels = torch.randint(0, 6, (200,), generator=gen)
        _check(base, term, torch.arange(-8, 17).float() / 2, labels)
        _check(base, term, torch.arange(0, 33).float() / 4, labels)
