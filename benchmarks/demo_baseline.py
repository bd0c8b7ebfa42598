"""Benchmark: every method of the library, as it is, on the demo task with the demo CLIP (`xmadapter_hf.demo`).

For each seed and shot count K in 1/2/4/8/16: K training images per class are drawn from the demo task's train pool
with the seed; their 10 augmented views (fit's default) are extracted once and shared by every method; the
validation split (16 images per class) chooses the searched values; accuracy is on the test split (25 per class,
400 images), which no step sees before the final evaluation. Methods run through `fit` with its defaults, once with
the default search range and once with ``search_scale=--wide-scale`` (default (50, 50)); the search range only
matters to the cache methods (Tip-Adapter, Tip-Adapter-F, XMAdapter), so CLIP-Adapter and the Multi-Modal Adapter
run once. Zero-shot uses the default prompt "a photo of a {}.".

Run: ``python benchmarks/demo_baseline.py`` (3 seeds; ``--seeds 1`` for one; ``--json FILE`` to keep the results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from xmadapter_hf import XMAdapterForImageClassification, extract_embeddings, fit
from xmadapter_hf.demo import DEMO_CLASSES, demo_clip_path, demo_task

CACHE_METHODS = ("tip-adapter", "tip-adapter-f", "xmadapter")
OTHER_METHODS = ("clip-adapter", "multimodal-adapter")


def accuracy(model, embeds: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(method, zero-shot) top-1 accuracy of raw image embeddings."""
    with torch.no_grad():
        out = model(image_embeds=embeds)
    return (
        float((out.logits.argmax(-1) == labels).float().mean()),
        float((out.zero_shot_logits.argmax(-1) == labels).float().mean()),
    )


def run(
    model_path: str,
    seeds: list[int],
    shots_list: list[int],
    wide_scale: tuple[float, float],
    threads: int,
    searches: tuple[str, ...] = ("default", "wide"),
):
    from transformers import AutoProcessor, CLIPModel

    torch.set_num_threads(threads)
    clip = CLIPModel.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)

    def plain(split):
        extracted = extract_embeddings(clip, processor, demo_task(split), augment_views=0, show_progress=False)
        return extracted.embeds[0], extracted.labels

    val_embeds, val_labels = plain("validation")
    test_embeds, test_labels = plain("test")
    rows = []
    for seed in seeds:
        for shots in shots_list:
            started = time.perf_counter()
            views = extract_embeddings(
                clip, processor, demo_task("train", shots=shots, seed=seed), augment_views=10, seed=seed,
                show_progress=False,
            )  # fmt: skip
            extraction = time.perf_counter() - started
            settings = [(m, "default", None) for m in CACHE_METHODS + OTHER_METHODS if "default" in searches]
            settings += [(m, "wide", wide_scale) for m in CACHE_METHODS if "wide" in searches]
            if "default" not in searches:  # the methods without a search run once, under either name
                settings += [(m, "wide", None) for m in OTHER_METHODS]
            for method, search, scale in settings:
                started = time.perf_counter()
                model = XMAdapterForImageClassification.from_clip(
                    clip, list(DEMO_CLASSES), processor=processor, method=method
                )
                model, report = fit(
                    model, views, val_embeds, validation_labels=val_labels, seed=seed, search_scale=scale,
                    show_progress=False,
                )  # fmt: skip
                test, zero_shot = accuracy(model, test_embeds, test_labels)
                row = dict(
                    seed=seed, shots=shots, method=method, search=search, test=test, zero_shot=zero_shot,
                    validation=report.accuracy, seconds=time.perf_counter() - started, extraction_seconds=extraction,
                    search_after=report.search_after or report.search_before,
                )  # fmt: skip
                rows.append(row)
                print(
                    f"seed {seed} shots {shots:2d} {method:18s} {search:7s} test {test:.3f} "
                    f"(zero-shot {zero_shot:.3f}, validation {report.accuracy:.3f}) {row['seconds']:.1f} s",
                    flush=True,
                )
    return rows


def table(rows, shots_list) -> str:
    """Markdown: mean test accuracy (%) over seeds per method and search, by shot count."""

    def mean(values):
        return 100 * statistics.fmean(values)

    lines = ["| method | search | " + " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in shots_list) + " |"]
    lines.append("|---|---|" + "---:|" * len(shots_list))
    zero = [
        mean([r["zero_shot"] for r in rows if r["shots"] == k and r["method"] == "tip-adapter"]) for k in shots_list
    ]
    lines.append("| zero-shot | - | " + " | ".join(f"{v:.1f}" for v in zero) + " |")
    for method in CACHE_METHODS + OTHER_METHODS:
        for search in ("default", "wide"):
            cells = []
            for k in shots_list:
                values = [
                    r["test"] for r in rows if r["shots"] == k and r["method"] == method and r["search"] == search
                ]
                if not values:
                    break
                cells.append(
                    f"{mean(values):.1f}" + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")
                )
            if cells:
                label = search if method in CACHE_METHODS else "(none)"
                lines.append(f"| {method} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="a CLIP path or Hub id (default: the demo CLIP)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--wide-scale", type=float, nargs=2, default=(50.0, 50.0))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--searches", nargs="+", choices=("default", "wide"), default=["default", "wide"])
    parser.add_argument("--json", default=None, help="write every run's numbers to this file")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(
        args.model or demo_clip_path(), list(range(args.seeds)), args.shots, tuple(args.wide_scale), args.threads,
        tuple(args.searches),
    )  # fmt: skip
    print(
        f"\nmean test accuracy (%) over {args.seeds} seed(s), ± std over seeds; {time.perf_counter() - started:.0f} s"
    )
    print(table(rows, args.shots))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
