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
forward. It ends by writing the tables (mean ± std over seeds, paired differences ± standard error, issue 24's targets)
into docs/accuracy.md's ``<!-- generated: study -->`` region and the curves to docs/accuracy_<task>.png;
``--study --no-run`` only regenerates those from the log (`scripts/generate_docs.py --check` compares the region with
what the committed log gives). The tables are benchmarks/study_tables.py's.

`auto` is not fitted by the study: its rows are derived from the logged `fit` rows exactly as `xmadapter demo` derives
its own (`xmadapter_hf.demo.compare.auto_result`: per task, shots and seed, the candidate with the best validation
accuracy, a tie to the earlier of `AUTO_CANDIDATES`), and a (task, shots, seed) that lacks a candidate's row is left
out of them and named. ``--variants auto-check`` runs the real path, `fit` of `from_clip(..., method="auto")` on the
same views and splits, for the cells of ``--tasks``/``--shots``/``--seeds``; the tables compare its choice and test
accuracy with the derived row's.

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
import tempfile
import time
from pathlib import Path

import torch

# the tables, curves and the constants they share (benchmarks/ is on the path when this file runs as a script)
from study_tables import (
    ABLATIONS,
    AUTO_CHECK,
    METHODS,
    RUN_ORDER,
    STUDY_LOG,
    STUDY_SEEDS,
    STUDY_SHOTS,
    STUDY_VARIANTS,
    TASKS,
    VARIANTS,
    key,
    plot_curves,
    print_tables,
    read_rows,
    write_docs,
)

from xmadapter_hf import (
    EmbeddingViewsDataset,
    XMAdapterForImageClassification,
    XMAdapterTrainer,
    extract_embeddings,
    fit,
    recipe_arguments,
)
from xmadapter_hf.demo import DEMO_CLASSES, demo_task, load_demo_clip


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
        if variant == AUTO_CHECK:
            runs.append((variant, "auto", {}, {}))
        elif variant in ("fit", "trainer"):
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
                        if report.selection is not None:  # method="auto": what it chose and its validation table
                            extra.update(
                                chosen=model.config.method,
                                candidates={
                                    r["method"]: r.get("validation_accuracy", r.get("reason"))
                                    for r in report.selection
                                },
                            )
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
