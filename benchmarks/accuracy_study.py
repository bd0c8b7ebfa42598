"""Accuracy study (issues 15 and 24): every method with its defaults on the demo tasks (`xmadapter_hf.demo`), through
`fit` and through the Trainer path, plus XMAdapter's ablations and the departures from the authors' recipes.

For each task, seed and shot count: K training images per class drawn with the seed, 10 augmented views extracted once
and shared (a recipe without augmentation trains on the plain view, extracted too); the validation split (16 per
class) chooses every searched value and the selected epoch; test accuracy (25 per class) is measured once at the end.

Issue 24's study is one command, which runs what is missing and regenerates the tables and the curves:

    python benchmarks/accuracy_study.py --study

every method in ``METHODS`` (GDA included) through `fit` with its defaults and XMAdapter without its Gaussian term
(``xma-no-gaussian``, the paper's formula), on both tasks (``photo``, ``sketch``), 1/2/4/8/16 shots, 5 seeds. Each run
is appended to ``--log`` (default ``benchmarks/results/study.jsonl``) as it ends, and a run already there is skipped,
so an interrupted study resumes (and two processes, one per ``--tasks``, may share the log). The embeddings go to the
library's embedding store (``--cache-dir``), so every method and every rerun reads the same views without a backbone
forward. It ends by writing the tables (mean ± std over seeds, paired differences ± standard error) between the markers
of docs/accuracy.md and the curves to docs/accuracy_<task>.png; ``--study --no-run`` only regenerates those from the
log.

Variants (``--variants``, each a row of the table, all on the same seeds, views and splits):

- ``fit``: `fit(model, views, validation)` with its defaults, every method in ``--methods``;
- ``trainer``: the documented Trainer path (docs/training.md 3a) with default arguments and no validation split:
  `set_cache`, `search_hyperparameters(validation)`, `XMAdapterTrainer(model, recipe_arguments(model, ...),
  train_dataset=EmbeddingViewsDataset(views))`, `train()` (the last epoch is kept), search again. (`fit` is the
  Trainer *with* `validation=`: the same weights, `tests/test_training_path.py`);
- ablations through `fit`: ``xma-no-gaussian`` (XMAdapter without its Gaussian term: the paper's formula),
  ``xma-no-text-cache``, ``xma-no-hard-samples``, ``xma-dynamic-ratio``, ``xma-independent-query`` (0.1.0's text-side
  init), ``last-epoch`` (Tip-Adapter-F, XMAdapter and the Multi-Modal Adapter with `keep_best_epoch=False`), the
  Multi-Modal Adapter on plain embeddings (``multimodal-adapter-plain``), with early stopping at patience 20
  (``multimodal-adapter-patience-20``) and both, its authors' recipe (``multimodal-adapter-authors``).

Other runs: ``--quick`` (16 shots, 3 seeds); ``--tasks photo,sketch``; ``--rendering clean`` for the tasks' images in
the pre-training rendering (saturated: zero-shot 99); ``--report FILE...`` prints the tables of saved rows. One
thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

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

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("zero-shot", "tip-adapter", "tip-adapter-f", "clip-adapter", "multimodal-adapter", "meta-adapter", "gda",
           "xmadapter")  # fmt: skip
#: The order the study runs them in: the cheap ones first, so that a run cut short has whole methods.
RUN_ORDER = ("zero-shot", "gda", "tip-adapter", "xmadapter", "tip-adapter-f", "meta-adapter", "clip-adapter",
             "multimodal-adapter")  # fmt: skip
TRAINED = ("tip-adapter-f", "clip-adapter", "multimodal-adapter", "meta-adapter", "xmadapter")
TASKS = ("photo", "sketch")
# ablation -> (method, fit keyword arguments, config overrides)
ABLATIONS = {
    "xma-no-gaussian": ("xmadapter", {}, {"use_gaussian_term": False}),
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
STUDY_SHOTS, STUDY_SEEDS, STUDY_VARIANTS = (1, 2, 4, 8, 16), 5, ("fit", "xma-no-gaussian")
STUDY_LOG = ROOT / "benchmarks" / "results" / "study.jsonl"
DOCS = ROOT / "docs" / "accuracy.md"
BEGIN, END = "<!-- accuracy-study:begin -->", "<!-- accuracy-study:end -->"


def accuracy(model, embeds, labels) -> float:
    with torch.no_grad():
        return float((model(image_embeds=embeds).logits.argmax(-1) == labels).float().mean())


def trainer_path(model, views, val, seed: int):
    """docs/training.md 3a with default arguments: no validation split given to the Trainer (the last epoch)."""
    model.set_cache(views.embeds, views.labels)
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


# ----------------------------------------------------------------------------------------------------- tables
def key(row) -> tuple:
    return (row.get("task", "photo"), row["variant"], row["method"], row["shots"], row["seed"])


def select(rows, variant, method, shots, task=None) -> dict:
    """Test accuracy by seed of one (variant, method, shots) (of one task, when given)."""
    return {r["seed"]: r["test"] for r in rows
            if (r["variant"], r["method"], r["shots"]) == (variant, method, shots)
            and (task is None or r.get("task", "photo") == task)}  # fmt: skip


def differences(rows, a, b, shots, task=None) -> list[float]:
    """Paired test differences ``a - b`` in points over the seeds both have; ``a``, ``b``: (variant, method)."""
    base, runs = select(rows, *b, shots, task), select(rows, *a, shots, task)
    return [100 * (test - base[seed]) for seed, test in sorted(runs.items()) if seed in base]


def count(values) -> str:
    """`` (n=3)`` after a cell of fewer seeds than the study's."""
    return f" (n={len(values)})" if len(values) < STUDY_SEEDS else ""


def mean_error(values: list[float]) -> str:
    if not values:
        return "—"
    error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.1f} ± {error:.1f}{count(values)}"


def paired(rows, variant_a, method_a, variant_b, method_b, shots, task=None) -> str:
    return mean_error(differences(rows, (variant_a, method_a), (variant_b, method_b), shots, task))


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}{count(values)}"


def ordered_runs(rows) -> list[tuple[str, str]]:
    seen = []
    for r in rows:
        if (r["variant"], r["method"]) not in seen:
            seen.append((r["variant"], r["method"]))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(seen, key=lambda vm: (vm[0] != "fit", vm[0], order.get(vm[1], len(order))))


def print_tables(rows) -> None:
    """The mean ± std table and the paired differences, for the rows' shot counts (issue 15's layout)."""
    shots_list = sorted({r["shots"] for r in rows})
    print(f"\n| variant | method | {' | '.join(f'{k}-shot' for k in shots_list)} |")
    print(f"|---|---|{'---|' * len(shots_list)}")
    for variant, method in ordered_runs(rows):
        cells = [mean_std([100 * t for t in select(rows, variant, method, k).values()]) for k in shots_list]
        print(f"| {variant} | {method} | {' | '.join(cells)} |")
    print(f"\nPaired differences (test points, mean ± standard error over seeds)\n\n| comparison | "
          f"{' | '.join(f'{k}-shot' for k in shots_list)} |\n|---|{'---|' * len(shots_list)}")  # fmt: skip
    comparisons = [(("fit", "xmadapter"), ("fit", "gda"))]
    for path_ in ("fit", "trainer"):
        comparisons += [((path_, "xmadapter"), (path_, "tip-adapter-f"))]
        comparisons += [((path_, m), (path_, "tip-adapter")) for m in TRAINED]
    for variant, (method, _, _) in ABLATIONS.items():
        comparisons.append(((variant, method), ("fit", method)))
    for (va, ma), (vb, mb) in comparisons:
        cells = [paired(rows, va, ma, vb, mb, k) for k in shots_list]
        if any(c != "—" for c in cells):
            print(f"| {va} {ma} − {vb} {mb} | {' | '.join(cells)} |")


def study_tables(rows) -> str:
    """Issue 24's tables for docs/accuracy.md, per task: test accuracy (mean ± std), then paired differences."""
    lines = []
    for task in TASKS:
        task_rows = [r for r in rows if r.get("task", "photo") == task]
        if not task_rows:
            continue
        shots_list = sorted({r["shots"] for r in task_rows})
        header = " | ".join(f"{k}-shot" for k in shots_list)
        seeds = sorted({r["seed"] for r in task_rows})
        lines += [f"### Task `{task}`: test accuracy (%), mean ± std over seeds {seeds[0]}-{seeds[-1]}", "",
                  f"| variant | method | {header} |", f"|---|---|{'---|' * len(shots_list)}"]  # fmt: skip
        runs = ordered_runs(task_rows)
        for variant, method in runs:
            cells = [mean_std([100 * t for t in select(task_rows, variant, method, k).values()]) for k in shots_list]
            lines.append(f"| {variant} | {method} | {' | '.join(cells)} |")
        lines += ["", f"Paired differences on `{task}` (test points, mean ± standard error over seeds)", "",
                  f"| comparison | {header} |", f"|---|{'---|' * len(shots_list)}"]  # fmt: skip
        comparisons = [
            (("fit", "xmadapter"), ("fit", "gda")),
            (("xma-no-gaussian", "xmadapter"), ("fit", "gda")),
            (("fit", "xmadapter"), ("xma-no-gaussian", "xmadapter")),
            (("fit", "xmadapter"), ("fit", "tip-adapter-f")),
            (("fit", "gda"), ("fit", "tip-adapter")),
        ]
        comparisons += [(("fit", "auto"), ("fit", "best"))]
        for a, b in comparisons:
            if b == ("fit", "best"):
                cells = [mean_error(best_differences(task_rows, a, k)) for k in shots_list]
                label = "fit auto − the best single method (by mean test accuracy at that shot count)"
            else:
                cells = [mean_error(differences(task_rows, a, b, k)) for k in shots_list]
                label = f"{a[0]} {a[1]} − {b[0]} {b[1]}"
            if any(c != "—" for c in cells):
                lines.append(f"| {label} | {' | '.join(cells)} |")
        lines += ["", f"![test accuracy against shots on {task}](accuracy_{task}.png)", ""]
    return "\n".join(lines)


def best_single(rows, shots) -> str | None:
    """The method (variant `fit`, not `auto`) with the best mean test accuracy at ``shots``."""
    means = {}
    for method in METHODS:
        values = list(select(rows, "fit", method, shots).values())
        if values:
            means[method] = statistics.mean(values)
    return max(means, key=means.get) if means else None


def best_differences(rows, a, shots) -> list[float]:
    best = best_single(rows, shots)
    return [] if best is None else differences(rows, a, ("fit", best), shots)


def plot_curves(rows, path: str, task: str | None = None) -> None:
    """Mean test accuracy (± std over seeds) against shots, one panel per path (`fit`, `trainer`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmadapter_hf.plotting import method_colour

    if task is not None:
        rows = [r for r in rows if r.get("task", "photo") == task]
    paths = [p for p in ("fit", "trainer") if any(r["variant"] == p for r in rows)]
    figure, axes = plt.subplots(1, len(paths), figsize=(6.5 * len(paths), 4.6), sharey=True, squeeze=False)
    for axis, variant in zip(axes[0], paths):
        for method in (*METHODS, "auto"):
            shots = sorted({r["shots"] for r in rows if (r["variant"], r["method"]) == (variant, method)})
            if not shots:
                continue
            values = [[100 * t for t in select(rows, variant, method, k).values()] for k in shots]
            means = [statistics.mean(v) for v in values]
            spreads = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            style = dict(linewidth=2.5) if method in ("xmadapter", "gda") else dict(linewidth=1.2)
            axis.errorbar(shots, means, yerr=spreads, marker="o", capsize=3, label=method, color=method_colour(method),
                          **style)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xlabel("shots per class")
        axis.set_title(f"{variant} ({task or 'demo'} task, mean ± std over seeds)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def read_rows(names) -> list[dict]:
    """Rows of JSON lists, this script's logs (a JSON row a line) or its JSONL logs; the last row of a run wins."""
    rows = {}
    for name in names:
        if not os.path.exists(name):
            continue
        with open(name) as handle:
            text = handle.read()
        found = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.startswith('{"')]  # fmt: skip
        rows.update({key(r): r for r in found if "variant" in r})
    return list(rows.values())


def write_docs(rows) -> None:
    """The tables between the markers of docs/accuracy.md and one PNG of curves per task."""
    text = DOCS.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOCS} has no {BEGIN} ... {END} markers to write the tables between.")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOCS.write_text(f"{before}{BEGIN}\n{study_tables(rows)}\n{END}{after}")
    for task in TASKS:
        if any(r.get("task", "photo") == task for r in rows):
            plot_curves(rows, str(ROOT / "docs" / f"accuracy_{task}.png"), task)
    print(f"wrote {DOCS} and docs/accuracy_<task>.png from {len(rows)} runs")


# ------------------------------------------------------------------------------------------------------ runs
def run_study(args, tasks, shots_list, seeds, methods, variants, log: Path | None) -> list[dict]:
    """Runs every (task, variant, method, shots, seed) not in ``log`` yet, appending each row to it as it ends."""
    torch.set_num_threads(1)
    done = {key(r) for r in read_rows([str(log)])} if log is not None else set()
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    clip, processor = load_demo_clip()
    extracted = {}

    def extract(task, split, shots=None, seed=0, views=0):
        if (task, split, shots, seed, views) not in extracted:
            data = demo_task(split, shots=shots, seed=seed, rendering=args.rendering, task=task)
            extracted[task, split, shots, seed, views] = extract_embeddings(
                clip, processor, data, augment_views=views, seed=seed, show_progress=False, cache_dir=args.cache_dir
            )
            if len(extracted) > 64:  # keep the validation and test splits, forget old training views
                extracted.pop(next(k for k in extracted if k[1] == "train"))
        return extracted[task, split, shots, seed, views]

    def build(method, **overrides):
        return XMAdapterForImageClassification.from_clip(
            clip, list(DEMO_CLASSES), processor=processor, method=method, **overrides
        )

    runs = []
    for variant in variants:
        if variant in ("fit", "trainer"):
            order = [m for m in RUN_ORDER if m in methods] + [m for m in methods if m not in RUN_ORDER]
            runs += [(variant, m, {}, {}) for m in order if variant == "fit" or m != "zero-shot"]
        else:
            method, keywords, overrides = ABLATIONS[variant]
            runs.append((variant, method, keywords, overrides))
    rows = []
    for variant, method, keywords, overrides in runs:  # method by method: a study cut short has whole methods
        for task in tasks:
            val, test = extract(task, "validation"), extract(task, "test")
            for shots in shots_list:
                for seed in seeds:
                    row_key = (task, variant, method, shots, seed)
                    if row_key in done:
                        continue
                    started = time.perf_counter()
                    model = build(method, **overrides)
                    recipe = type(model.method).recipe
                    options = dict(keywords)
                    use_plain = options.pop("plain", False) or (recipe is not None and not recipe.augment)
                    train = extract(task, "train", shots, seed, 0 if use_plain else 10)
                    extra = {}
                    if variant == "trainer":
                        model = trainer_path(model, train, val, seed)
                    else:
                        model, report = fit(model, train, val.embeds[0], validation_labels=val.labels, seed=seed,
                                            show_progress=False, **options)  # fmt: skip
                        extra = dict(validation=report.accuracy, start=report.training_free_accuracy,
                                     selection=report.extra.get("early_stopping"),
                                     searched=report.search_after or report.search_before)  # fmt: skip
                    row = dict(task=task, variant=variant, method=method, shots=shots, seed=seed,
                               test=accuracy(model, test.embeds[0], test.labels),
                               seconds=round(time.perf_counter() - started, 1), **extra)  # fmt: skip
                    rows.append(row)
                    line = json.dumps(row)
                    print(line, flush=True)
                    if log is not None:
                        with open(log, "a") as handle:  # one write per row: processes may share the log
                            handle.write(line + "\n")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", action="store_true", help="issue 24's study (see the module docstring)")
    parser.add_argument("--no-run", action="store_true", help="with --study: only rewrite the tables and curves")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shots", default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--task", default=None, choices=TASKS, help="one demo task (docs/demo.md)")
    parser.add_argument("--tasks", default=None, help="comma-separated demo tasks (default: photo; --study: both)")
    parser.add_argument("--rendering", default=None, help="the task's own rendering (default) or clean")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--variants", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--log", default=None, help="append each run to this JSONL file, skipping runs in it")
    parser.add_argument("--cache-dir", default=os.environ.get("XMADAPTER_STUDY_CACHE",
                        os.path.join(os.path.expanduser("~"), ".cache", "xmadapter-hf", "study-embeddings")),
                        help="the embedding store of the extracted views")  # fmt: skip
    # --report FILE...: print the tables of saved rows (JSON lists, or this script's logs: a JSON row a line), exit
    parser.add_argument("--report", nargs="+", default=None)
    parser.add_argument("--plot", default=None, help="with --report: test accuracy against shots, a PNG")
    args = parser.parse_args()
    if args.report:
        rows = read_rows(args.report)
        print_tables(rows)
        if args.plot:
            plot_curves(rows, args.plot)
        return
    default_tasks = ",".join(TASKS) if args.study else "photo"
    tasks = (args.tasks or args.task or default_tasks).split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {TASKS}")
    default_shots = ",".join(map(str, STUDY_SHOTS)) if not args.quick else "16"
    shots_list = [int(s) for s in (args.shots or default_shots).split(",")]
    seeds = list(range(args.seeds or (3 if args.quick else STUDY_SEEDS)))
    methods = args.methods.split(",")
    variants = (args.variants or ",".join(STUDY_VARIANTS if args.study else VARIANTS)).split(",")
    log = Path(args.log) if args.log else (STUDY_LOG if args.study else None)
    if args.study:
        if not args.no_run:
            run_study(args, tasks, shots_list, seeds, methods, variants, log)
        write_docs(read_rows([str(log)]))
        return
    rows = run_study(args, tasks, shots_list, seeds, methods, variants, log)
    print_tables(rows)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
