"""Benchmark: Meta-Adapter on the demo task with the demo CLIP (`xmadapter_hf.demo`), few-shot and base-to-novel.

- few-shot: for each seed, 16 training images per class (16 classes) with their 10 augmented views (fit's default),
  validation split (16 per class) for the search and the checkpoint choice, test split (25 per class, 400 images).
  Tip-Adapter and Meta-Adapter through `fit` with its defaults; zero-shot is the same model's zero-shot logits.
- base-to-novel (online use): Meta-Adapter is meta-trained by `fit` on the first 8 classes (their 16-shot views,
  their validation images), saved, loaded with `from_pretrained(dir, class_names=<the other 8>)`, and its cache set
  from the novel classes' 16-shot supports (the views' mean, which `build_cache` computes); no training step on the
  novel classes. Accuracy on the novel classes' test images, scored over the 8 novel classes, beside zero-shot over
  the same 8 classes and an untrained Meta-Adapter (its initialisation) given the same supports.
- ``--xmadapter-gap``: XMAdapter trained by `fit` on the 8 base classes, then `add_classes` with the 8 novel ones
  (same supports); accuracy on the novel test images over all 16 classes, beside a training-free Tip-Adapter built
  on the same grown cache with XMAdapter's searched residual ratio and sharpness (the comparison of
  tests/test_add_classes.py).

Run: ``python benchmarks/meta_adapter_demo.py --threads 1 [--seeds 3] [--xmadapter-gap]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from xmadapter_hf import XMAdapterForImageClassification, extract_embeddings, fit
from xmadapter_hf.data.extraction import ExtractedEmbeddings
from xmadapter_hf.demo import DEMO_CLASSES, demo_task, load_demo_clip

BASE = 8  # classes 0..7 are the base classes, 8..15 the novel ones


@torch.no_grad()
def accuracy(model, embeds: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(method, zero-shot) top-1 accuracy of raw image embeddings."""
    out = model(image_embeds=embeds)
    hits = (out.logits.argmax(-1) == labels).float().mean(), (out.zero_shot_logits.argmax(-1) == labels).float().mean()
    return float(hits[0]), float(hits[1])


def subset(extracted: ExtractedEmbeddings, keep: torch.Tensor, offset: int = 0) -> ExtractedEmbeddings:
    return ExtractedEmbeddings(extracted.embeds[:, keep], extracted.labels[keep] - offset)


def support_keys(views: ExtractedEmbeddings) -> torch.Tensor:
    """Raw cache keys: the mean of each image's views (set_cache normalises), as `build_cache` computes them."""
    return views.embeds.mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--xmadapter-gap", action="store_true")
    parser.add_argument("--meta-epochs", type=int, default=None, help="Meta-Adapter's epochs (default: its recipe's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    clip, processor = load_demo_clip()  # in eval mode
    classes = list(DEMO_CLASSES)

    def plain(split):
        extracted = extract_embeddings(clip, processor, demo_task(split), augment_views=0, show_progress=False)
        return extracted.embeds[0], extracted.labels

    val, val_labels = plain("validation")
    test, test_labels = plain("test")
    base_val, novel_test = val_labels < BASE, test_labels >= BASE
    results: dict[str, list[float]] = {}
    steps: dict[str, int] = {}  # optimiser steps of each fit

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    def run_fit(method, views, names, val_embeds, val_targets, seed):
        model = XMAdapterForImageClassification.from_clip(clip, names, processor=processor, method=method)
        epochs = args.meta_epochs if method == "meta-adapter" else None
        model, report = fit(
            model, views, val_embeds, validation_labels=val_targets, seed=seed, epochs=epochs, show_progress=False
        )
        steps[f"{method} on {len(names)} classes"] = report.steps
        return model.eval()

    for seed in range(args.seeds):
        views = extract_embeddings(
            clip, processor, demo_task("train", shots=args.shots, seed=seed), augment_views=10, seed=seed,
            show_progress=False,
        )  # fmt: skip
        # (a) few-shot, all 16 classes
        for method in ("tip-adapter", "meta-adapter"):
            model = run_fit(method, views, classes, val, val_labels, seed)
            acc, zs = accuracy(model, test, test_labels)
            record(f"few-shot {method}", acc)
            if method == "tip-adapter":
                record("few-shot zero-shot", zs)
        # (b) base-to-novel: meta-train on the base classes, apply online to the novel ones
        base_views, novel_views = subset(views, views.labels < BASE), subset(views, views.labels >= BASE, BASE)
        meta = run_fit("meta-adapter", base_views, classes[:BASE], val[base_val], val_labels[base_val], seed)
        record("base meta-adapter (base test, 8-way)", accuracy(meta, test[~novel_test], test_labels[~novel_test])[0])
        with tempfile.TemporaryDirectory() as directory:
            meta.save_pretrained(directory)
            online = XMAdapterForImageClassification.from_pretrained(
                directory, class_names=classes[BASE:], clip_model=clip, processor=processor
            ).eval()
        online.set_cache(support_keys(novel_views), novel_views.labels)
        acc, zs = accuracy(online, test[novel_test], test_labels[novel_test] - BASE)
        record("novel meta-adapter, meta-trained on base (8-way)", acc)
        record("novel zero-shot (8-way)", zs)
        untrained = XMAdapterForImageClassification.from_clip(
            clip, classes[BASE:], processor=processor, method="meta-adapter"
        ).eval()
        untrained.set_cache(support_keys(novel_views), novel_views.labels)
        novel_acc = accuracy(untrained, test[novel_test], test_labels[novel_test] - BASE)[0]
        record("novel meta-adapter, untrained (8-way)", novel_acc)
        if args.xmadapter_gap:
            xm = run_fit("xmadapter", base_views, classes[:BASE], val[base_val], val_labels[base_val], seed)
            xm.add_classes(classes[BASE:], embeds=support_keys(novel_views), labels=novel_views.labels)
            record("grown xmadapter, novel test (16-way)", accuracy(xm, test[novel_test], test_labels[novel_test])[0])
            tip = XMAdapterForImageClassification.from_clip(
                clip, classes, processor=processor, method="tip-adapter",
                residual_ratio=xm.config.residual_ratio, sharpness=xm.config.sharpness,
            ).eval()  # fmt: skip
            tip.set_cache(xm.cache_embeds.float(), xm.cache_labels)
            tip_acc = accuracy(tip, test[novel_test], test_labels[novel_test])[0]
            record("tip-adapter on the grown cache, novel test (16-way)", tip_acc)
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()), flush=True)

    seconds = time.perf_counter() - started
    print(f"\n{args.shots} shots, {args.seeds} seed(s), {args.threads} thread(s), {seconds:.0f} s")
    print("optimiser steps per fit: " + ", ".join(f"{k} {v}" for k, v in steps.items()))
    print("| setting | test accuracy (%), mean ± std over seeds |\n|---|---:|")
    for name, values in results.items():
        spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
        print(f"| {name} | {100 * statistics.fmean(values):.1f}{spread} |")


if __name__ == "__main__":
    main()
