"""Accuracy study (issue 15): every method through `fit` with its defaults on the demo task (`xmadapter_hf.demo`).

For each seed and shot count: K training images per class drawn with the seed, 10 augmented views extracted once and
shared (the Multi-Modal Adapter's recipe trains on the plain view: its plain embeddings are extracted too); the
validation split (16 per class) chooses every searched value and the early-stopping epoch; test accuracy (25 per
class) is measured once at the end. Reports mean +- std over seeds, and XMAdapter - Tip-Adapter-F paired differences
(mean +- standard error over seeds).

Run: ``python benchmarks/accuracy_study.py`` (shots 1/2/4/8/16, 5 seeds); ``--quick`` (16 shots, 3 seeds);
``--rendering clean`` for the second task (the demo classes in the pre-training rendering). One thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from xmadapter_hf import XMAdapterForImageClassification, fit
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.demo import DEMO_CLASSES, demo_clip_path, demo_task

METHODS = ("zero-shot", "tip-adapter", "tip-adapter-f", "clip-adapter", "multimodal-adapter", "xmadapter")


def accuracy(model, embeds, labels) -> float:
    with torch.no_grad():
        return float((model(image_embeds=embeds).logits.argmax(-1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shots", default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--rendering", default="photo")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shots_list = [int(s) for s in (args.shots or ("16" if args.quick else "1,2,4,8,16")).split(",")]
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    methods = args.methods.split(",")
    from transformers import AutoProcessor, CLIPModel

    path = demo_clip_path()
    clip, processor = CLIPModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)

    def extract(split, shots=None, seed=0, views=0):
        data = demo_task(split, shots=shots, seed=seed, rendering=args.rendering)
        return extract_embeddings(clip, processor, data, augment_views=views, seed=seed, show_progress=False)

    val, test = extract("validation"), extract("test")
    rows = []
    for shots in shots_list:
        for seed in seeds:
            views, plain = extract("train", shots, seed, 10), extract("train", shots, seed, 0)
            for method in methods:
                started = time.perf_counter()
                model = XMAdapterForImageClassification.from_clip(
                    clip, list(DEMO_CLASSES), processor=processor, method=method
                )
                train = plain if method == "multimodal-adapter" else views
                model, report = fit(model, train, val.embeds[0], validation_labels=val.labels, seed=seed,
                                    show_progress=False)  # fmt: skip
                row = dict(method=method, shots=shots, seed=seed, test=accuracy(model, test.embeds[0], test.labels),
                           validation=report.accuracy, seconds=round(time.perf_counter() - started, 1))  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n| method | {' | '.join(f'{k}-shot' for k in shots_list)} |")
    print(f"|---|{'---|' * len(shots_list)}")
    for method in methods:
        cells = []
        for shots in shots_list:
            values = [100 * r["test"] for r in rows if r["method"] == method and r["shots"] == shots]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        print(f"| {method} | {' | '.join(cells)} |")
    for other in ("tip-adapter-f", "tip-adapter"):
        if "xmadapter" not in methods or other not in methods:
            continue
        cells = []
        for shots in shots_list:
            by_seed = {r["seed"]: r["test"] for r in rows if r["method"] == other and r["shots"] == shots}
            diffs = [100 * (r["test"] - by_seed[r["seed"]]) for r in rows if r["method"] == "xmadapter"
                     and r["shots"] == shots]  # fmt: skip
            error = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
            cells.append(f"{statistics.mean(diffs):+.1f} ± {error:.1f}")
        print(f"| xmadapter − {other} (paired) | {' | '.join(cells)} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
