"""Benchmark: every method of the library, as it is, on the demo task with the demo CLIP (`xmadapter_hf.demo`).

For each seed and shot count K in 1/2/4/8/16: K training images per class are drawn from the demo task's train pool
with the seed; their 10 augmented views (fit's default) are extracted once and shared by every method; the
validation split (16 images per class) chooses the searched values; accuracy is on the test split (25 per class,
400 images), which no step sees before the final evaluation (`xmadapter_hf.demo.compare`, which `xmadapter demo`
runs too). Methods run through `fit` with its defaults, once with the default search range and once with
``search_scale=--wide-scale`` (default (50, 50)); the search range only matters to the cache methods (Tip-Adapter,
Tip-Adapter-F, XMAdapter), so the other methods run once. Zero-shot uses the default prompt "a photo of a {}.".

Run: ``python benchmarks/demo_baseline.py`` (3 seeds; ``--seeds 1`` for one; ``--json FILE`` to keep the results).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from xmadapter_hf.demo.compare import DEMO_SHOTS, accuracy_table, compare_methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a CLIP path or Hub id (default: the demo CLIP)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=list(DEMO_SHOTS))
    parser.add_argument("--wide-scale", type=float, nargs=2, default=(50.0, 50.0))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--searches", nargs="+", choices=("default", "wide"), default=["default", "wide"])
    parser.add_argument("--json", default=None, help="write every run's numbers to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scales = {"default": None, "wide": tuple(args.wide_scale)}
    started = time.perf_counter()

    def show(r):
        print(
            f"seed {r.seed} shots {r.shots:2d} {r.method:18s} {r.search:7s} test {r.test_accuracy:.3f} "
            f"(zero-shot {r.zero_shot_accuracy:.3f}, validation {r.validation_accuracy:.3f}) {r.seconds:.1f} s",
            flush=True,
        )

    results = compare_methods(
        args.model, seeds=range(args.seeds), shots=args.shots, searches={s: scales[s] for s in args.searches},
        on_result=show,
    )  # fmt: skip
    print(
        f"\nmean test accuracy (%) over {args.seeds} seed(s), ± std over seeds; {time.perf_counter() - started:.0f} s"
    )
    print(accuracy_table(results, by_search=True))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([r.to_dict() for r in results], handle, indent=1)


if __name__ == "__main__":
    main()
