"""`xmadapter fit`: a folder of labelled images (or a dataset) -> a few-shot adapter directory and its report.

K images per class are drawn from the training split with the seed; the searched values (residual ratio,
sharpness) are chosen on a validation split: `--validation`, else the data's own `validation` split, else images
drawn from the training pool beside the K shots (min(K, 4) per class as CoOp, fewer where a class has fewer to
spare). The draw is written to `split.json` beside the adapter, with `report.json`. Every accuracy printed says
which split it is on.
"""

from __future__ import annotations

import time
from collections import Counter

from .common import (
    CLIError,
    Command,
    add_progress_argument,
    add_threads_argument,
    add_training_arguments,
    add_workers_argument,
    check_output_folder,
    default_method,
    method_names,
    positive_int,
    search_options,
    set_threads,
    set_workers,
    show_progress,
    write_json,
)
from .data import class_names_of, open_data, pick_split, relabel, resolve_split
from .evaluate import scores
from .progress import progress

SPLIT_FILE = "split.json"
REPORT_FILE = "report.json"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--data", required=True, help="an image folder (DIR/<class>/<images>, or DIR/<split>/<class>/...), a "
        "`save_to_disk` directory, or a `datasets` name (needs the Hub)",
    )  # fmt: skip
    parser.add_argument("--split", help="the split of --data to train on (default: train, or its only split)")
    parser.add_argument("--model", help="the CLIP backbone: a Hub id or a local path (default: the demo CLIP)")
    parser.add_argument(
        "--method", default=default_method(), choices=[*method_names(), "auto"], help="default: %(default)s; "
        "auto: fit every candidate from one extraction, keep the best validation accuracy (ties: the first listed)",
    )  # fmt: skip
    parser.add_argument(
        "--candidates", nargs="+", choices=method_names(), metavar="METHOD", help="with --method auto: the methods "
        "to choose from, in the order that breaks ties (default: every shipped method, cheapest first)",
    )  # fmt: skip
    parser.add_argument("--shots", type=positive_int, default=16, help="training images per class (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="the draw of the images, augmentations and weights")
    parser.add_argument("--output", required=True, help="the adapter directory to write")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    parser.add_argument(
        "--validation", metavar="SRC", help="validation images: a folder, a saved dataset, a `datasets` name, or a "
        "split name of --data (default: the data's validation split, else drawn from the training pool)",
    )  # fmt: skip
    parser.add_argument(
        "--val-shots", type=positive_int, help="validation images per class drawn from the training pool "
        "(default: min(shots, 4), fewer where a class has fewer images to spare)",
    )  # fmt: skip
    parser.add_argument("--test", metavar="SRC", help="test images (as --validation): report their accuracy too")
    parser.add_argument(
        "--no-search", action="store_true", help="no validation search: keep the config's residual ratio and "
        "sharpness (a warning says so); with no validation split, nothing is drawn for one",
    )  # fmt: skip
    add_training_arguments(parser)
    parser.add_argument(
        "--template", action="append", dest="templates", metavar="TEXT",
        help='a prompt template with {} (repeatable; default "a photo of a {}.")',
    )  # fmt: skip
    add_threads_argument(parser)
    add_workers_argument(parser)
    add_progress_argument(parser)


def _class_counts(dataset, names: list[str], origin: str) -> list[int]:
    from ..data.extraction import read_labels

    counts = Counter(read_labels(dataset).tolist())
    missing = [names[i] for i in range(len(names)) if counts[i] == 0]
    if missing:
        raise CLIError(f"class {missing[0]!r} has no images in {origin} ({len(missing)} such classes): add some")
    return [counts[i] for i in range(len(names))]


def _validation_shots(args, counts: list[int], names: list[str]) -> int:
    """How many validation images per class the training pool can give (at least one), or a `CLIError`."""
    spare = [count - args.shots for count in counts]
    poorest = min(range(len(names)), key=lambda i: spare[i])
    if spare[poorest] < 1 or (args.val_shots and spare[poorest] < args.val_shots):
        needed = args.shots + (args.val_shots or 1)
        raise CLIError(
            f"class {names[poorest]!r} has {counts[poorest]} images, too few for {args.shots} shots plus "
            f"{args.val_shots or 1} validation image(s) ({needed}): pass --validation DIR with validation images, "
            "lower --shots, or pass --no-search to fit without a validation search"
        )
    return args.val_shots or min(args.shots, 4, spare[poorest])


def _draw(args, train, names, origin, counts, draw_validation: bool):
    """(split, few-shot train, validation or None, where the validation images come from); validation images are
    drawn from the training pool only with `draw_validation`."""
    from ..data.splits import sample_few_shot

    short = [i for i, count in enumerate(counts) if count < args.shots]
    if short:
        i = short[0]
        raise CLIError(
            f"class {names[i]!r} has {counts[i]} images in {origin}, fewer than --shots {args.shots} "
            f"({len(short)} such classes): lower --shots or add images"
        )
    val_shots = _validation_shots(args, counts, names) if draw_validation else 0
    split = sample_few_shot(train, args.shots, seed=args.seed, val_shots=val_shots)
    few_shot, validation = split.apply(train)
    if not val_shots:
        return split, few_shot, None, None
    return split, few_shot, validation, f"{val_shots} per class drawn from the training pool of {origin}"


def run(args) -> int:
    import warnings

    from .. import XMAdapterForImageClassification, fit
    from ..demo import demo_clip_path

    output = check_output_folder(args.output, args.overwrite)
    from ..selection import is_pending

    auto = is_pending(args)  # --method auto
    if args.candidates and not auto:
        raise CLIError(f"--candidates chooses among methods with --method auto; got --method {args.method}")
    search = search_options(args)
    data = open_data(args.data)
    split_name, train = pick_split(data, args.split, ("train",))
    origin = data.describe(split_name)
    names = class_names_of(train, origin)
    counts = _class_counts(train, names, origin)
    validation, val_origin = None, None
    if args.validation:
        validation, val_origin = resolve_split(args.validation, data, "validation", "--validation")
        validation = relabel(validation, names, val_origin)
    elif "validation" in data.splits and split_name != "validation":
        val_origin = data.describe("validation")
        validation = relabel(data.splits["validation"], names, val_origin)
    draw_validation = validation is None and (auto or not args.no_search)  # auto chooses on validation images
    split, few_shot, drawn, drawn_origin = _draw(args, train, names, origin, counts, draw_validation)
    if drawn is not None:
        validation, val_origin = drawn, drawn_origin
    test, test_origin = (None, None)
    if args.test:
        test, test_origin = resolve_split(args.test, data, "test", "--test")
        test = relabel(test, names, test_origin)

    set_threads(args.threads)
    set_workers(args.workers)
    backbone = args.model or demo_clip_path()
    print(
        f"data: {origin}: {len(names)} classes, {sum(counts)} images; {args.shots} shots per class, seed {args.seed}"
    )
    print(f"validation: {val_origin} ({len(validation)} images)" if validation is not None else "validation: none")
    model = XMAdapterForImageClassification.from_clip(
        backbone, names, method=args.method, templates=args.templates, seed=args.seed
    )
    kept = [f"{name.replace('_', ' ')} {getattr(model.config, name)}" for name in model.method.searched_fields(
        model.config)]  # fmt: skip
    if args.no_search and kept:
        kept = kept[0] if len(kept) == 1 else ", ".join(kept[:-1]) + " and " + kept[-1]
        warnings.warn(
            f"--no-search: {args.method} keeps {kept} (the config's defaults), not values chosen on validation images",
            stacklevel=1,
        )
    started = time.perf_counter()
    progress(f"fitting {args.method} on {len(few_shot)} images (extraction, search, training)")
    model, report = fit(
        model, few_shot, validation, augment_views=args.augment_views, seed=args.seed, epochs=args.epochs,
        **search, show_progress=show_progress(args),
        search=not args.no_search, extraction_workers=args.workers, candidates=args.candidates if auto else None,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if auto:
        from ..training.select import selection_lines

        print("\n".join(selection_lines(report.selection, report.num_validation)))
    method = model.config.method  # the chosen one with --method auto
    result = {
        "method": method,
        "method_selection": model.config.method_selection,
        "base_model": backbone,
        "data": origin,
        "shots": args.shots,
        "seed": args.seed,
        "num_classes": len(names),
        "validation": None,
        "test": None,
        "fit": report.to_dict(),
        "seconds": seconds,
    }
    if validation is not None:
        result["validation"] = {
            "source": val_origin,
            "images": report.num_validation,
            "accuracy": report.accuracy,
            "zero_shot_accuracy": report.zero_shot_accuracy,
            "used_for_search": not args.no_search and model.method.searches(),
            "used_for_method_selection": auto,
        }
        print(
            f"validation accuracy ({val_origin}, {report.num_validation} images): {method} {report.accuracy:.4f}"
            f", zero-shot {report.zero_shot_accuracy:.4f}"
        )
    if test is not None:
        progress(f"scoring {len(test)} test images")
        scored = scores(model, test)
        result["test"] = {
            "source": test_origin,
            **{k: scored[k] for k in ("images", "accuracy", "zero_shot_accuracy")},
        }
        print(
            f"test accuracy ({test_origin}, {scored['images']} images): {method} {scored['accuracy']:.4f}, "
            f"zero-shot {scored['zero_shot_accuracy']:.4f}"
        )
    model.save_pretrained(output)
    split.save(output / SPLIT_FILE, overwrite=True)
    write_json(output / REPORT_FILE, result)
    files = sorted(p.name for p in output.iterdir())
    print(f"wrote {output} ({', '.join(files)}) in {seconds:.1f} s")
    return 0


COMMAND = Command(
    name="fit",
    help="fit an adapter on a folder of labelled images (or a dataset)",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
