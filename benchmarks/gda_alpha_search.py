"""Benchmark: GDA's alpha search on the demo task (`xmadapter_hf.demo`), the default against the official grid.

For each seed and shot count K: K training images per class from the demo task's train pool (the seed draws them),
their 10 augmented views (`fit`'s default), GDA through `fit`, alpha chosen on the validation split (256 images),
accuracy on the test split (400 images), under three searches on the same statistics:

- ``auto``: the library's default (`search_grid="auto"`): 61 log-spaced weights over ``weight_ref * [1e-2, 1e3]``,
  ``weight_ref`` the weight at which the Gaussian logits spread across classes as much as the zero-shot logits;
- ``official x s/100``: the official grid {1e-4, ..., 100} scaled by the backbone's logit scale over 100
  (`search_grid="paper"`), as the library scales Tip-Adapter's residual-ratio grid;
- ``official as written``: the official grid unscaled (the official code's, which assumes s = 100), chosen on the
  same validation split from the fitted model's `zero_shot_logits` and `gaussian_logits`.

Prints the mean test accuracy (%) ± std over seeds and the paired differences against ``auto``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/gda_alpha_search.py [--seeds 3] [--shots 1 4 16]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xmadapter_hf import XMAdapterForImageClassification, extract_embeddings, fit
from xmadapter_hf.demo import DEMO_CLASSES, demo_task, load_demo_clip
from xmadapter_hf.methods.gda import OFFICIAL_ALPHA_GRID

SEARCHES = ("auto", "official x s/100", "official as written")


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(-1) == labels).float().mean())


def _as_written(model, val, val_labels, test, test_labels) -> float:
    """The official grid unscaled, chosen on validation as the official loop does (the first strict maximum)."""
    with torch.no_grad():
        on_val, on_test = model(image_embeds=val), model(image_embeds=test)
    best, alpha = -1.0, OFFICIAL_ALPHA_GRID[0]
    for value in OFFICIAL_ALPHA_GRID:
        accuracy = _accuracy(on_val.zero_shot_logits + value * on_val.gaussian_logits, val_labels)
        if accuracy > best:
            best, alpha = accuracy, value
    return _accuracy(on_test.zero_shot_logits + alpha * on_test.gaussian_logits, test_labels)


def measure(clip, processor, seeds, shots) -> dict[str, dict[int, list[float]]]:
    """``{search: {K: [test accuracy per seed]}}`` (see the module docstring)."""

    def plain(split):
        extracted = extract_embeddings(clip, processor, demo_task(split), augment_views=0, show_progress=False)
        return extracted.embeds[0], extracted.labels

    (val, val_labels), (test, test_labels) = plain("validation"), plain("test")
    rows: dict[str, dict[int, list[float]]] = {name: {} for name in (*SEARCHES, "zero-shot")}
    for seed in seeds:
        for k in shots:
            views = extract_embeddings(clip, processor, demo_task("train", shots=k, seed=seed), augment_views=10,
                                       seed=seed, show_progress=False)  # fmt: skip
            for search, grid in zip(SEARCHES[:2], ("auto", "paper")):
                model = XMAdapterForImageClassification.from_clip(clip, list(DEMO_CLASSES), processor=processor,
                                                                  method="gda")  # fmt: skip
                model, _ = fit(model, views, val, validation_labels=val_labels, seed=seed, search_grid=grid,
                               show_progress=False)  # fmt: skip
                with torch.no_grad():
                    out = model(image_embeds=test)
                rows[search].setdefault(k, []).append(_accuracy(out.logits, test_labels))
            rows["official as written"].setdefault(k, []).append(
                _as_written(model, val, val_labels, test, test_labels)
            )
            rows["zero-shot"].setdefault(k, []).append(_accuracy(out.zero_shot_logits, test_labels))
            print(
                f"seed {seed} shots {k:2d}: " + ", ".join(f"{n} {r[k][-1]:.2f}" for n, r in rows.items()), flush=True
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    clip, processor = load_demo_clip()
    rows = measure(clip.eval(), processor, range(args.seeds), args.shots)
    print(f"\nGDA on the demo task, test accuracy (%), mean ± std over {args.seeds} seeds; "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    header = " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in args.shots)
    print(f"| alpha search | {header} |\n|---|" + "---:|" * len(args.shots))
    for name, row in rows.items():
        cells = [f"{statistics.fmean(row[k]):.1f} ± {_std(row[k]):.1f}" for k in args.shots]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\npaired difference against auto (points), mean ± std over seeds:")
    for name in SEARCHES[1:]:
        cells = []
        for k in args.shots:
            differences = [a - b for a, b in zip(rows["auto"][k], rows[name][k])]
            cells.append(f"{k}: {statistics.fmean(differences):+.1f} ± {_std(differences):.1f}")
        print(f"auto - {name}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
