"""Benchmark: `add_classes` on the demo backbone, every method (docs/add-classes.md).

For each seed, 3 of the demo task's 16 texture classes (drawn with the seed) are held out as the new classes and the
other 13 are the base. Each method is adapted to the base classes by `fit` with its defaults (16 training images per
class with their 10 augmented views, the base classes' validation images), then grown with `add_classes` by the 3
new classes and their 16 support images (all their views: the cache keys average them as `build_cache` does, and
GDA reads each view), with no training step on them. Reported on the test split (25 images per class), scored over
all 16 classes:

- the new classes' test images: the grown method, and a training-free Tip-Adapter built on the same grown cache with
  the method's residual ratio and sharpness (a method without a cache term: with those of a Tip-Adapter fitted on the
  same base classes), and the paired difference;
- the base classes' test images, before and after growing (what the new columns take from the old classes).

Run: ``OMP_NUM_THREADS=1 python benchmarks/add_classes_demo.py --threads 1 [--seeds 5] [--methods ...]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from xmadapter_hf import XMAdapterForImageClassification, extract_embeddings, fit, registered_methods
from xmadapter_hf.data.extraction import ExtractedEmbeddings
from xmadapter_hf.demo import DEMO_CLASSES, demo_task, load_demo_clip
from xmadapter_hf.methods import get_method_class

NEW = 3


@torch.no_grad()
def accuracy(model, embeds: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(image_embeds=embeds).logits.argmax(-1) == labels).float().mean())


def relabel(labels: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Labels in the benchmark's class order (base classes first, then the new ones)."""
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    return position[labels]


def fit_on_base(clip, processor, method, names, train_views, val_embeds, val_labels, seed):
    """``method`` adapted by `fit` with its defaults to the base classes."""
    model = XMAdapterForImageClassification.from_clip(clip, names, processor=processor, method=method)
    model, _ = fit(model, train_views, val_embeds, validation_labels=val_labels, seed=seed, show_progress=False)
    return model.eval()


def measure(clip, processor, methods, seeds, shots: int = 16, augment_views: int = 10):
    """``{method: {"new", "tip", "gap", "old before", "old after": [one accuracy per seed]}}`` (see the docstring)."""

    def plain(split):
        extracted = extract_embeddings(clip, processor, demo_task(split), augment_views=0, show_progress=False)
        return extracted.embeds[0], extracted.labels

    val, val_labels = plain("validation")
    test, test_labels = plain("test")
    rows: dict[str, dict[str, list[float]]] = {}

    for seed in seeds:
        order = torch.randperm(len(DEMO_CLASSES), generator=torch.Generator().manual_seed(seed))
        base_count = len(DEMO_CLASSES) - NEW
        names = [DEMO_CLASSES[i] for i in order]
        views = extract_embeddings(
            clip, processor, demo_task("train", shots=shots, seed=seed), augment_views=augment_views, seed=seed,
            show_progress=False,
        )  # fmt: skip
        train_labels = relabel(views.labels, order)
        base = train_labels < base_count
        base_views = ExtractedEmbeddings(views.embeds[:, base], train_labels[base])
        support, support_labels = views.embeds[:, ~base], train_labels[~base] - base_count  # (V, M, C)
        v_labels, t_labels = relabel(val_labels, order), relabel(test_labels, order)
        base_val, new_test = v_labels < base_count, t_labels >= base_count

        base_task = (names[:base_count], base_views, val[base_val], v_labels[base_val], seed)
        fitted_tip = fit_on_base(clip, processor, "tip-adapter", *base_task)
        grown_tip = copy.deepcopy(fitted_tip)  # the cache of the references of the methods without one
        grown_tip.add_classes(names[base_count:], embeds=support, labels=support_labels, show_progress=False)
        for method in methods:
            model = (
                copy.deepcopy(fitted_tip)
                if method == "tip-adapter"
                else fit_on_base(clip, processor, method, *base_task)
            )
            old_before = accuracy(model, test[~new_test], t_labels[~new_test])
            model.add_classes(names[base_count:], embeds=support, labels=support_labels, show_progress=False)
            has_cache = get_method_class(method).uses_cache
            settings = model.config if has_cache else fitted_tip.config
            reference = XMAdapterForImageClassification.from_clip(
                clip, names, processor=processor, method="tip-adapter",
                residual_ratio=settings.residual_ratio, sharpness=settings.sharpness,
            ).eval()  # fmt: skip
            grown_cache = model if has_cache else grown_tip
            reference.set_cache(grown_cache.cache_embeds.float(), grown_cache.cache_labels)
            row = rows.setdefault(method, {})
            for key, value in (
                ("new", accuracy(model, test[new_test], t_labels[new_test])),
                ("tip", accuracy(reference, test[new_test], t_labels[new_test])),
                ("old before", old_before),
                ("old after", accuracy(model, test[~new_test], t_labels[~new_test])),
            ):
                row.setdefault(key, []).append(value)
            row.setdefault("gap", []).append(row["new"][-1] - row["tip"][-1])
        print(
            f"seed {seed} (new: {names[base_count:]}): "
            + ", ".join(f"{m} {r['new'][-1]:.3f} vs {r['tip'][-1]:.3f}" for m, r in rows.items()),
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--augment-views", type=int, default=10, help="views per training image (fit's default: 10)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=registered_methods())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    clip, processor = load_demo_clip()
    rows = measure(clip, processor, args.methods, range(args.seeds), args.shots, args.augment_views)

    def cell(values):
        spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{100 * statistics.fmean(values):.1f}{spread}"

    seconds = time.perf_counter() - started
    print(
        f"\n{args.shots} shots ({args.augment_views} views), {args.seeds} seed(s), {NEW} new classes of "
        f"{len(DEMO_CLASSES)}, {args.threads} thread(s), {seconds:.0f} s"
    )
    print(
        "| method | new classes, grown method | Tip-Adapter on the grown cache | paired difference | "
        "base classes before | base classes after |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for method, row in rows.items():
        print(
            f"| {method} | {cell(row['new'])} | {cell(row['tip'])} | {cell(row['gap'])} | "
            f"{cell(row['old before'])} | {cell(row['old after'])} |"
        )


if __name__ == "__main__":
    main()
