"""The scores' temperature with a tiny validation split (issue 23): what `xmadapter fit` meets at 1 shot.

`xmadapter fit` without a validation split of the data's own draws min(K, 4) validation images per class from the
training pool: at 1 shot on the demo task, 16 images for 16 classes. With so few, the plain NLL fit of the
temperature sends T to its lower bound whenever every validation image is right, and is noisy otherwise; the
library's fit adds one uninformative pseudo-observation (`xmadapter_hf.calibration`). This script measures, on the
demo task's test split, the expected calibration error (15 bins) of every method fitted with `fit` on a tiny
validation split (``--val-shots`` per class drawn from the demo's validation pool with the seed):

- `T = 1` (the raw softmax);
- T fitted by the plain NLL (``prior_strength = 0``) on the tiny split;
- T fitted as `fit` does (``prior_strength = 1``, what `config.temperature` holds);
- for reference, T fitted on the whole validation split (256 images) for the same model.

The fit itself (cache, search, training) does not depend on T: each model is fitted once and the temperatures are
fitted on its logits. Prints one markdown row per method and shot count, means over the seeds.

Run: ``OMP_NUM_THREADS=1 python benchmarks/calibration_tiny_split.py --shots 1 --seeds 0 1 2 3 4`` (one thread).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xmadapter_hf import XMAdapterForImageClassification, extract_embeddings, fit
from xmadapter_hf.calibration import expected_calibration_error, fit_temperature
from xmadapter_hf.demo import DEMO_CLASSES, demo_task, load_demo_clip
from xmadapter_hf.demo.compare import demo_methods

COLUMNS = ("T = 1", "plain NLL, tiny split", "fit's (prior 1), tiny split", "whole validation split")


def _plain(clip, processor, dataset):
    extracted = extract_embeddings(clip, processor, dataset, augment_views=0, show_progress=False)
    return extracted.embeds[0], extracted.labels


def _logits(model, embeds):
    with torch.no_grad():
        return model(image_embeds=embeds).logits.float()


def run(args) -> dict:
    clip, processor = load_demo_clip()
    test, full_validation = (
        _plain(clip, processor, demo_task("test")),
        _plain(clip, processor, demo_task("validation")),
    )
    cells: dict[tuple[str, int], list[tuple]] = {}
    for seed in args.seeds:
        tiny = _plain(clip, processor, demo_task("validation", shots=args.val_shots, seed=seed))
        for shots in args.shots:
            views = extract_embeddings(clip, processor, demo_task("train", shots=shots, seed=seed), augment_views=10,
                                       seed=seed, show_progress=False)  # fmt: skip
            for method in args.methods:
                model = XMAdapterForImageClassification.from_clip(clip, list(DEMO_CLASSES), processor=processor,
                                                                  method=method)  # fmt: skip
                model, _ = fit(model, views, tiny[0], validation_labels=tiny[1], seed=seed, show_progress=False)
                tiny_logits, test_logits = _logits(model, tiny[0]), _logits(model, test[0])
                temperatures = (
                    None,
                    fit_temperature(tiny_logits, tiny[1], prior_strength=0.0).temperature,
                    model.config.temperature,
                    fit_temperature(_logits(model, full_validation[0]), full_validation[1]).temperature,
                )
                eces = tuple(expected_calibration_error(test_logits, test[1], t) for t in temperatures)
                cells.setdefault((method, shots), []).append(eces)
                print(f"seed {seed} {shots} shots {method}: T {temperatures[1:]}, test ECE {eces}", flush=True)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--val-shots", type=int, default=1, help="validation images per class (1: 16 images)")
    parser.add_argument("--methods", nargs="+", default=demo_methods())
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    cells = run(args)
    print(f"\ntest ECE (15 bins), mean over seeds {args.seeds}; validation {args.val_shots} image(s) per class")
    print("| method | shots | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for (method, shots), rows in cells.items():
        means = [statistics.fmean(row[i] for row in rows) for i in range(len(COLUMNS))]
        print(f"| {method} | {shots} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
