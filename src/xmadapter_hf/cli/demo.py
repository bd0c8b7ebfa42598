"""`xmadapter demo`: every method at 1/2/4/8/16 shots on the demo task, offline, on the shipped demo CLIP.

Prints the test accuracy table (mean over the seeds; its `auto` row is the method with the best validation accuracy
at each seed and shot count, from the same fits), XMAdapter's affinity ratio per shot count and the test split's
calibration (expected calibration error and NLL of the scores before and after the temperature `fit` fitted on the
validation split), and writes into `--output`: `results.json` (every fit), `table.md` (the three tables),
`few_shot_curve.png` (accuracy against shots, one line per method) and `affinity_ratio.png` (XMAdapter's image cache
weight against shots); the PNGs need the `plot` extra (matplotlib): without it the tables are printed and written, and
the last line says how to install it. The demo task is 16 texture classes the demo CLIP never saw in pre-training,
rendered with a distribution shift (docs/demo.md); the validation split (16 images per class) chooses the searched
values, the test split (25 per class) is scored once.
`--export-images DIR` only writes the demo task as an image folder (DIR/{train,validation,test}/<class>/*.png,
`max(--shots)` training images per class) and exits.
"""

from __future__ import annotations

import time
from pathlib import Path

from .common import (
    CLIError,
    Command,
    add_progress_argument,
    add_threads_argument,
    add_training_arguments,
    add_workers_argument,
    method_names,
    search_options,
    set_threads,
    set_workers,
    show_progress,
    write_json,
)
from .progress import progress

#: torch threads of the demo: one thread per process was measured 5-20x faster on a busy 2-core machine for the
#: demo CLIP's small matrices (docs/demo.md).
DEMO_THREADS = 1


def add_arguments(parser) -> None:
    from ..demo.compare import DEMO_SHOTS

    parser.add_argument("--model", help="a CLIP Hub id or local path (default: the demo CLIP, offline)")
    parser.add_argument(
        "--shots", type=int, nargs="+", default=list(DEMO_SHOTS), metavar="K", help="shot counts (1 2 4 8 16)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[*method_names(), "auto"],
        metavar="METHOD",
        help=f"default: all ({', '.join(method_names())}) and auto (the best on validation among them, from the "
        "same fits)",
    )
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (the table averages them)")
    parser.add_argument("--output", default="xmadapter-demo", help="where to write results and plots (%(default)s)")
    add_training_arguments(parser, epochs=False)
    parser.add_argument("--no-plot", action="store_true", help="no PNGs (matplotlib not needed)")
    parser.add_argument("--export-images", metavar="DIR", help="write the demo task as an image folder and exit")
    add_threads_argument(parser, default=DEMO_THREADS)
    add_workers_argument(parser)
    add_progress_argument(parser)


def _check(args) -> None:
    from ..demo import POOL_SIZES

    largest = POOL_SIZES["train"]
    bad = [k for k in args.shots if not 1 <= k <= largest]
    if bad:
        raise CLIError(
            f"--shots {bad[0]}: expected 1 to {largest} (the demo task's training images per class)", status=2
        )
    if any(seed < 0 for seed in args.seed):
        raise CLIError("--seed must be 0 or more", status=2)


def _export(args) -> int:
    from ..demo import export_images

    directory = export_images(args.export_images, shots=max(args.shots), seed=args.seed[0])
    print(
        f"wrote the demo task to {directory}: train ({max(args.shots)} per class, seed {args.seed[0]}), "
        "validation (16 per class), test (25 per class), one folder per class"
    )
    return 0


def _plots(results, output: Path) -> list[Path]:
    from ..demo.compare import summarize, summarize_affinity_ratio
    from ..methods import get_method_class
    from ..plotting import plot_affinity_ratio, plot_few_shot_curve
    from ..selection import AUTO

    curves = summarize(results)
    flat = {}
    for name in list(curves):  # a method that neither trains nor has a cache does not depend on the shots
        if name == AUTO:  # whichever method won on validation at each shot count: a curve
            continue
        method = get_method_class(name)
        if not (method.trainable or method.uses_cache):
            points = curves.pop(name)
            flat[name] = sum(mean for mean, _ in points.values()) / len(points)
    written = [plot_few_shot_curve(curves, output / "few_shot_curve.png", flat=flat, title="Demo task: few-shot")]
    ratios = summarize_affinity_ratio(results)
    if ratios:
        method = next(r.method for r in results if r.affinity_ratio is not None)
        written.append(plot_affinity_ratio(ratios, output / "affinity_ratio.png", method))
    return written


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..demo import DEMO_CLASSES, POOL_SIZES
    from ..demo.compare import accuracy_table, affinity_ratio_table, calibration_table, compare_methods, demo_methods

    _check(args)
    search = {"default": search_options(args)}
    if args.export_images:
        return _export(args)
    plot = not args.no_plot
    if plot:  # without the `plot` extra the tables are still printed and written; the end says how to get the plots
        from ..plotting import require_matplotlib

        try:
            require_matplotlib()
        except ImportError:
            plot = False
    set_threads(args.threads)
    set_workers(args.workers)
    from ..selection import AUTO

    methods = args.methods or [*demo_methods(), AUTO]  # auto: chosen on validation among the others' fits
    fitted = [name for name in methods if name != AUTO]
    output = Path(args.output)
    total = len(args.seed) * len(args.shots) * len(methods)  # results: an auto row per seed and shot count too
    fits = len(args.seed) * len(args.shots) * len(fitted)
    print(
        f"demo: {len(fitted)} methods{' and auto' if len(fitted) < len(methods) else ''} x shots {args.shots} x "
        f"seeds {args.seed} on "
        f"{args.model or 'the demo CLIP'} ({args.threads} thread{'s' if args.threads > 1 else ''})",
        flush=True,
    )
    started = time.perf_counter()
    with tqdm(total=total, desc="results", unit="result", disable=not show_progress(args)) as bar:
        done = []

        def advance(result):
            bar.set_postfix_str(f"{result.shots} shots {result.method}")
            bar.update()
            done.append(result)  # a disabled bar does not count
            progress(f"{len(done)}/{total} results, last {result.shots} shots {result.method}")

        results = compare_methods(
            args.model, seeds=args.seed, shots=args.shots, methods=methods, searches=search,
            augment_views=args.augment_views, on_result=advance,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    seeds = f"seed {args.seed[0]}" if len(args.seed) == 1 else f"mean ± std over seeds {args.seed}"
    table = accuracy_table(results)
    test_images, chance = POOL_SIZES["test"] * len(DEMO_CLASSES), 100 / len(DEMO_CLASSES)
    print(f"\ntest accuracy (%) on the demo task's test split ({test_images} images, chance {chance:.2f}), {seeds}:")
    print(table)
    ratios = affinity_ratio_table(results)
    if ratios:
        print(f"\nXMAdapter's learned cache weights (mean affinity ratio on the test split):\n{ratios}")
    calibration = calibration_table(results)
    print(f"\ntest split calibration, expected calibration error (15 bins) and NLL, T = 1 → fitted T:\n{calibration}")
    output.mkdir(parents=True, exist_ok=True)
    written = [write_json(output / "results.json", [r.to_dict() for r in results])]
    (output / "table.md").write_text(table + ("\n\n" + ratios if ratios else "") + "\n\n" + calibration + "\n")
    written.append(output / "table.md")
    if plot:
        written += _plots(results, output)
    print(f"\n{fits} fits in {seconds:.0f} s; wrote {', '.join(str(p) for p in written)}")
    if plot != (not args.no_plot):
        from ..plotting import PLOT_EXTRA

        print(f"no plots: matplotlib is not installed; for few_shot_curve.png and affinity_ratio.png: {PLOT_EXTRA}")
    return 0


COMMAND = Command(
    name="demo",
    help="every method at 1/2/4/8/16 shots on the demo task (offline): table and plots",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
