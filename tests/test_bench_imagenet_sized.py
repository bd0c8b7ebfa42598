"""benchmarks/bench_imagenet_sized.py runs (its --quick smoke run, in this process) and prints every phase beside its
floor with the ratio; the timings themselves are the benchmark's, not a test's (docs/benchmarks.md)."""

from __future__ import annotations

import re

from conftest import load_repo_module


def test_quick_run_prints_each_phase_against_its_floor(capsys):
    benchmark = load_repo_module("benchmarks/bench_imagenet_sized.py")
    rows = benchmark.main(["--quick", "--in-process", "--epochs", "1", "--methods", "tip-adapter-f", "gda"])
    printed = capsys.readouterr().out
    assert [row["method"] for row in rows] == ["tip-adapter-f", "gda"]
    tip, gda = rows
    assert tip["steps"] > 0 and tip["floors"]["train"] > 0 and tip["floors"]["search"] > 0
    assert tip["counts"]["search"] == 2 and tip["counts"]["affinity_elements"] > 0  # before and after training
    assert gda["floors"]["cache"] > 0 and gda["counts"]["logit_weights"] > 0
    for row in rows:
        assert abs(sum(row["seconds"][p] for p in benchmark.PHASES) - row["seconds"]["fit"]) < 1e-6
    lines = [line for line in printed.splitlines() if line.startswith("| tip-adapter-f |")]
    assert len(lines) == 1
    # search, train, val and per-step cells each read "seconds / floor = ratio", the ratio of the unrounded times
    assert len(re.findall(r"[\d.]+ / [\d.]+ = [\d.]+x", lines[0])) == 4
    for phase in ("search", "train", "val"):
        assert f"= {tip['seconds'][phase] / tip['floors'][phase]:.2f}x" in lines[0]
    # the steady-state per-step cost and the set-up split the training phase
    assert 0 < tip["seconds_per_step"] < tip["seconds"]["train"]
    assert f"= {tip['seconds_per_step'] / tip['floor_seconds_per_step']:.2f}x" in lines[0]
    setup = tip["seconds"]["train"] - tip["seconds_per_step"] * tip["steps"]
    assert abs(tip["train_setup_seconds"] - setup) < 1e-9
