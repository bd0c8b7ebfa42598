"""The accuracy study's derived `auto` rows (benchmarks/study_tables.py): chosen from the logged `fit` rows by the
demo's own rule (`auto_result`: best validation accuracy, a tie to the earlier of `AUTO_CANDIDATES`), a cell that
lacks a candidate's row marked and left out of the tables, and issue 24's acceptance verdicts."""

from __future__ import annotations

import pytest
from conftest import load_repo_module

from xmadapter_hf.methods import AUTO_CANDIDATES


@pytest.fixture(scope="module")
def tables():
    return load_repo_module("benchmarks/study_tables.py")


def _row(method, validation, test, seed=0, shots=4, task="photo", variant="fit"):
    return dict(task=task, variant=variant, method=method, shots=shots, seed=seed, validation=validation, test=test,
                seconds=1.0)  # fmt: skip


def _cell(seed, shots=4, **overrides):
    """Every candidate at validation 0.5 (test 0.5) but the ones given, ``method: (validation, test)``."""
    values = {m: (0.5, 0.5) for m in AUTO_CANDIDATES} | overrides
    return [_row(m, v, t, seed=seed, shots=shots) for m, (v, t) in values.items()]


def test_derived_auto_takes_the_best_validation_and_the_earlier_candidate_on_a_tie(tables):
    rows = _cell(0, **{"clip-adapter": (0.7, 0.6), "xmadapter": (0.7, 0.65), "gda": (0.69, 0.9)})
    (auto,) = tables.derived_auto_rows(rows)
    # xmadapter comes before clip-adapter in AUTO_CANDIDATES: the tie is its; gda's better test does not count
    assert AUTO_CANDIDATES.index("xmadapter") < AUTO_CANDIDATES.index("clip-adapter")
    assert (auto["chosen"], auto["test"], auto["missing"]) == ("xmadapter", 0.65, [])
    assert (auto["variant"], auto["method"]) == ("derived", "auto")


def test_a_cell_without_every_candidate_is_marked_and_left_out(tables):
    rows = _cell(0) + [r for r in _cell(1, **{"gda": (0.9, 0.9)}) if r["method"] != "multimodal-adapter"]
    derived = {r["seed"]: r for r in tables.derived_auto_rows(rows)}
    assert derived[1]["missing"] == ["multimodal-adapter"] and derived[0]["missing"] == []
    assert [r["seed"] for r in tables.complete(derived.values())] == [0]
    text = tables.study_tables(rows)
    assert "| derived | auto |" in text and "(n=1)" in text
    assert "4-shot seeds 1 (no multimodal-adapter)" in text


def test_acceptance_verdicts(tables):
    rows = []
    for seed in range(5):
        for shots in (4, 8, 16):
            rows += _cell(seed, shots, **{"gda": (0.6, 0.70), "xmadapter": (0.6, 0.696), "clip-adapter": (0.7, 0.68)})
    lines = tables.acceptance_table(rows, tables.derived_auto_rows(rows))
    xma = next(line for line in lines if line.startswith("| photo | XMAdapter − GDA"))
    auto = next(line for line in lines if line.startswith("| photo | auto − best"))
    assert xma.endswith("| -0.4 ± 0.0 | -0.4 ± 0.0 | -0.4 ± 0.0 | yes |")  # -0.4 >= -0.5
    assert auto.endswith("| -2.0 ± 0.0 | -2.0 ± 0.0 | -2.0 ± 0.0 | **no** |")  # clip-adapter chosen, gda best
    lines = tables.acceptance_table(rows[:-1], tables.derived_auto_rows(rows[:-1]))
    assert any(line.endswith("| incomplete |") for line in lines)
