"""Accuracy study (issue 15): every method with its defaults on the demo task (`xmadapter_hf.demo`), through `fit` and
through the Trainer path, plus XMAdapter's ablations and the departures from the authors' recipes.

For each seed and shot count: K training images per class drawn with the seed, 10 augmented views extracted once and
shared (a recipe without augmentation trains on the plain view, extracted too); the validation split (16 per class)
chooses every searched value and the selected epoch; test accuracy (25 per class) is measured once at the end.

Variants (``--variants``, each a row of the table, all on the same seeds, views and splits):

- ``fit``: `fit(model, views, validation)` with its defaults, every method in ``--methods``;
- ``trainer``: the documented Trainer path (docs/training.md 3a) with default arguments and no validation split:
  `set_cache`, `search_hyperparameters(validation)`, `XMAdapterTrainer(model, recipe_arguments(model, ...),
  train_dataset=EmbeddingViewsDataset(views))`, `train()` (the last epoch is kept), search again. (`fit` is the
  Trainer *with* `validation=`: the same weights, `tests/test_training_path.py`);
- ablations through `fit`: ``xma-no-text-cache``, ``xma-no-hard-samples``, ``xma-dynamic-ratio``,
  ``xma-independent-query`` (0.1.0's text-side init), ``last-epoch`` (Tip-Adapter-F, XMAdapter and the Multi-Modal
  Adapter with `keep_best_epoch=False`), the Multi-Modal Adapter on plain embeddings (``multimodal-adapter-plain``),
  with early stopping at patience 20 (``multimodal-adapter-patience-20``) and both, its authors' recipe
  (``multimodal-adapter-authors``).

Reports mean +- std over seeds, and paired differences over seeds (mean +- standard error).

Run: ``python benchmarks/accuracy_study.py`` (shots 1/2/4/8/16, 5 seeds, every variant); ``--quick`` (16 shots, 3
seeds); ``--task sketch`` for the second task (the demo classes drawn as magnified, tilted outlines: docs/demo.md);
``--rendering clean`` for either task's images in the pre-training rendering (saturated: zero-shot 99). One thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from xmadapter_hf import (
    EmbeddingViewsDataset,
    XMAdapterForImageClassification,
    XMAdapterTrainer,
    extract_embeddings,
    fit,
    recipe_arguments,
)
from xmadapter_hf.demo import DEMO_CLASSES, demo_task, load_demo_clip

METHODS = ("zero-shot", "tip-adapter", "tip-adapter-f", "clip-adapter", "multimodal-adapter", "xmadapter")
TRAINED = ("tip-adapter-f", "clip-adapter", "multimodal-adapter", "xmadapter")
# ablation -> (method, fit keyword arguments, config overrides)
ABLATIONS = {
    "xma-no-text-cache": ("xmadapter", {}, {"use_text_cache": False}),
    "xma-no-hard-samples": ("xmadapter", {}, {"hard_sample_strength": 0.0}),
    "xma-dynamic-ratio": ("xmadapter", {}, {"dynamic_affinity_ratio": True}),
    "xma-independent-query": ("xmadapter", {}, {"text_query": "independent"}),
    "tip-adapter-f-last-epoch": ("tip-adapter-f", {"keep_best_epoch": False}, {}),
    "xmadapter-last-epoch": ("xmadapter", {"keep_best_epoch": False}, {}),
    "multimodal-adapter-last-epoch": ("multimodal-adapter", {"keep_best_epoch": False}, {}),
    "multimodal-adapter-plain": ("multimodal-adapter", {"plain": True}, {}),
    "multimodal-adapter-patience-20": ("multimodal-adapter", {"early_stopping_patience": 20}, {}),
    "multimodal-adapter-authors": ("multimodal-adapter", {"plain": True, "early_stopping_patience": 20}, {}),
}
VARIANTS = ("fit", "trainer", *ABLATIONS)


def accuracy(model, embeds, labels) -> float:
    with torch.no_grad():
        return float((model(image_embeds=embeds).logits.argmax(-1) == labels).float().mean())


def trainer_path(model, views, val, seed: int):
    """docs/training.md 3a with default arguments: no validation split given to the Trainer (the last epoch)."""
    model.set_cache(views.embeds.mean(0), views.labels)
    model.config.seed = seed
    if model.method.uses_cache:
        model.search_hyperparameters(val.embeds[0], val.labels)
    if model.method.trainable:
        data = EmbeddingViewsDataset(views.embeds, views.labels, seed=seed)
        with tempfile.TemporaryDirectory() as out:
            args = recipe_arguments(model, out, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                                    logging_strategy="no")  # fmt: skip
            XMAdapterTrainer(model=model, args=args, train_dataset=data).train()
        model.eval()
        if model.method.uses_cache:
            model.search_hyperparameters(val.embeds[0], val.labels)
    return model


def select(rows, variant, method, shots) -> dict:
    """Test accuracy by seed of one (variant, method, shots)."""
    return {r["seed"]: r["test"] for r in rows if (r["variant"], r["method"], r["shots"]) == (variant, method, shots)}


def paired(rows, variant_a, method_a, variant_b, method_b, shots) -> str:
    base, runs = select(rows, variant_b, method_b, shots), select(rows, variant_a, method_a, shots)
    diffs = [100 * (test - base[seed]) for seed, test in runs.items() if seed in base]
    if not diffs:
        return "—"
    error = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.mean(diffs):+.1f} ± {error:.1f}"


def print_tables(rows) -> None:
    """The mean ± std table and the paired differences, for the rows' shot counts."""
    shots_list = sorted({r["shots"] for r in rows})
    print(f"\n| variant | method | {' | '.join(f'{k}-shot' for k in shots_list)} |")
    print(f"|---|---|{'---|' * len(shots_list)}")
    seen = []
    for r in rows:
        if (r["variant"], r["method"]) not in seen:
            seen.append((r["variant"], r["method"]))
    for variant, method in seen:
        cells = []
        for shots in shots_list:
            values = [100 * test for test in select(rows, variant, method, shots).values()]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}" if values else "—")
        print(f"| {variant} | {method} | {' | '.join(cells)} |")
    print(f"\nPaired differences (test points, mean ± standard error over seeds)\n\n| comparison | "
          f"{' | '.join(f'{k}-shot' for k in shots_list)} |\n|---|{'---|' * len(shots_list)}")  # fmt: skip
    comparisons = []
    for path_ in ("fit", "trainer"):
        comparisons += [((path_, "xmadapter"), (path_, "tip-adapter-f"))]
        comparisons += [((path_, m), (path_, "tip-adapter")) for m in TRAINED]
    for variant, (method, _, _) in ABLATIONS.items():
        comparisons.append(((variant, method), ("fit", method)))
    for (va, ma), (vb, mb) in comparisons:
        cells = [paired(rows, va, ma, vb, mb, k) for k in shots_list]
        if any(c != "—" for c in cells):
            print(f"| {va} {ma} − {vb} {mb} | {' | '.join(cells)} |")


def plot_curves(rows, path: str) -> None:
    """Mean test accuracy (± std over seeds) against shots, one panel per path (`fit`, `trainer`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmadapter_hf.plotting import method_colour

    paths = [p for p in ("fit", "trainer") if any(r["variant"] == p for r in rows)]
    figure, axes = plt.subplots(1, len(paths), figsize=(6 * len(paths), 4.2), sharey=True, squeeze=False)
    for axis, variant in zip(axes[0], paths):
        for method in METHODS:
            shots = sorted({r["shots"] for r in rows if (r["variant"], r["method"]) == (variant, method)})
            if not shots:
                continue
            values = [[100 * t for t in select(rows, variant, method, k).values()] for k in shots]
            means = [statistics.mean(v) for v in values]
            spreads = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            axis.errorbar(shots, means, yerr=spreads, marker="o", capsize=3, label=method, color=method_colour(method))
        axis.set_xscale("log", base=2)
        axis.set_xlabel("shots per class")
        axis.set_title(f"{variant} (demo task, mean ± std over seeds)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shots", default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--task", default="photo", choices=("photo", "sketch"), help="the demo task (docs/demo.md)")
    parser.add_argument("--rendering", default=None, help="the task's own rendering (default) or clean")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", default=None)
    # --report FILE...: print the tables of saved rows (JSON lists, or this script's logs: a JSON row a line), exit
    parser.add_argument("--report", nargs="+", default=None)
    parser.add_argument("--plot", default=None, help="with --report: test accuracy against shots, a PNG")
    args = parser.parse_args()
    if args.report:
        rows = []
        for name in args.report:
            with open(name) as handle:
                text = handle.read()
            if text.lstrip().startswith("["):
                rows += json.loads(text)
            else:
                rows += [json.loads(line) for line in text.splitlines() if line.startswith('{"variant"')]
        print_tables(rows)
        if args.plot:
            plot_curves(rows, args.plot)
        return
    torch.set_num_threads(1)
    shots_list = [int(s) for s in (args.shots or ("16" if args.quick else "1,2,4,8,16")).split(",")]
    seeds = list(range(args.seeds or (3 if args.quick else 5)))
    methods, variants = args.methods.split(","), args.variants.split(",")
    clip, processor = load_demo_clip()

    def extract(split, shots=None, seed=0, views=0):
        data = demo_task(split, shots=shots, seed=seed, rendering=args.rendering, task=args.task)
        return extract_embeddings(clip, processor, data, augment_views=views, seed=seed, show_progress=False)

    def build(method, **overrides):
        return XMAdapterForImageClassification.from_clip(
            clip, list(DEMO_CLASSES), processor=processor, method=method, **overrides
        )

    val, test = extract("validation"), extract("test")
    rows = []
    for shots in shots_list:
        for seed in seeds:
            views, plain = extract("train", shots, seed, 10), extract("train", shots, seed, 0)
            runs = []
            for variant in variants:
                if variant in ("fit", "trainer"):
                    runs += [(variant, m, {}, {}) for m in methods if variant == "fit" or m != "zero-shot"]
                else:
                    method, keywords, overrides = ABLATIONS[variant]
                    runs.append((variant, method, dict(keywords), overrides))
            for variant, method, keywords, overrides in runs:
                started = time.perf_counter()
                model = build(method, **overrides)
                recipe = type(model.method).recipe
                use_plain = keywords.pop("plain", False) or (recipe is not None and not recipe.augment)
                train = plain if use_plain else views
                extra = {}
                if variant == "trainer":
                    model = trainer_path(model, train, val, seed)
                else:
                    model, report = fit(model, train, val.embeds[0], validation_labels=val.labels, seed=seed,
                                        show_progress=False, **keywords)  # fmt: skip
                    extra = dict(validation=report.accuracy, start=report.training_free_accuracy,
                                 selection=report.extra.get("early_stopping"))  # fmt: skip
                row = dict(variant=variant, method=method, shots=shots, seed=seed,
                           test=accuracy(model, test.embeds[0], test.labels),
                           seconds=round(time.perf_counter() - started, 1), **extra)  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    print_tables(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
