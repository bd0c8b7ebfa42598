"""`xmadapter search`: re-run the validation search (residual ratio, sharpness, text sharpness; GDA's weight) on a
saved adapter.

The validation images are `--validation` (a folder, a saved dataset, a `datasets` name, or a split name of
`--data`); without it, with `--data`, the validation rows of the adapter's `split.json` (written by `xmadapter
fit` when it drew the validation images from the training pool), else the data's `validation` split. The chosen
values, and the scores' temperature refitted on the same split (`xmadapter_hf.calibration`), are written to a new
adapter directory, `--output DIR` (the adapter's `split.json` is copied beside it), or into the adapter itself with
`--in-place`; one of the two is required, so that a search never replaces a fitted adapter unasked. The search is
`--search-grid` (default: the library's, the backbone-adaptive `auto`); `--search-scale`/`--search-step` size
Tip-Adapter's fixed grid instead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .common import (
    CLIError,
    Command,
    add_loading_arguments,
    add_progress_argument,
    add_search_arguments,
    add_threads_argument,
    add_workers_argument,
    check_output_folder,
    load_adapter,
    loading_options,
    search_options,
    set_threads,
    set_workers,
)
from .data import open_data, pick_split, relabel, resolve_split
from .fit import SPLIT_FILE


def add_arguments(parser) -> None:
    parser.add_argument("adapter", help="the adapter directory")
    parser.add_argument("--data", help="the data the adapter was fit on (for its split.json or validation split)")
    parser.add_argument("--validation", metavar="SRC", help="the validation images (see the description)")
    add_search_arguments(parser)
    parser.add_argument("--output", metavar="DIR", help="write the searched adapter here (a new or empty folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    parser.add_argument(
        "--in-place", action="store_true", help="write the searched values into the adapter itself (replaces it)"
    )
    add_threads_argument(parser)
    add_workers_argument(parser)
    add_progress_argument(parser)
    add_loading_arguments(parser)


def _validation(args, adapter_dir: Path):
    """(validation dataset, where it comes from) for the search."""
    from ..data.splits import FewShotSplit

    data = open_data(args.data) if args.data else None
    if args.validation:
        return resolve_split(args.validation, data, "validation", "--validation")
    if data is None:
        raise CLIError("pass --validation SRC (or --data with the data the adapter was fit on)", status=2)
    split_file = adapter_dir / SPLIT_FILE
    if split_file.is_file():
        name, train = pick_split(data, None, ("train",))
        split = FewShotSplit.load(split_file, train)
        if split.val_indices:
            return split.apply(train)[1], f"the validation rows of {split_file} in {data.describe(name)}"
    if "validation" in data.splits:
        return data.splits["validation"], data.describe("validation")
    raise CLIError(f"{data.origin} has no validation split and {split_file} draws none: pass --validation SRC")


def _output(args, adapter_dir: Path) -> Path:
    """Where the searched adapter goes, checked before any work: --output DIR (new or empty, unless --overwrite), or
    the adapter itself with --in-place."""
    if args.in_place and args.output:
        raise CLIError("pass --output DIR or --in-place, not both", status=2)
    if args.in_place:
        return adapter_dir
    if not args.output:
        raise CLIError(
            f"pass --output DIR to write the searched adapter to a new folder, or --in-place to replace "
            f"{str(adapter_dir)!r} with it",
            status=2,
        )
    output = Path(args.output)
    if output.exists() and adapter_dir.exists() and output.resolve() == adapter_dir.resolve():
        raise CLIError(f"--output {args.output!r} is the adapter itself: pass --in-place to replace it", status=2)
    return check_output_folder(output, args.overwrite)


def run(args) -> int:
    adapter_dir = Path(args.adapter)
    output = _output(args, adapter_dir)
    options = search_options(args)  # before any work: a range with --search-grid auto is refused
    validation, origin = _validation(args, adapter_dir)
    set_threads(args.threads)
    set_workers(args.workers)
    model = load_adapter(args.adapter, **loading_options(args))
    if not model.method.searches():
        raise CLIError(
            f"method {model.config.method!r} has nothing to search: no residual ratio, sharpness or weight of its own"
        )
    validation = relabel(validation, model.config.class_names, origin)
    config = model.config
    before = {name: getattr(config, name) for name in model.method.searched_fields(config)}
    from ..calibration import calibrate
    from ..training.search import validation_embeddings

    # once: the search and the temperature both read them
    embeds, labels = validation_embeddings(model, validation, num_workers=args.workers)
    result = model.search_hyperparameters(embeds, labels, **options)
    fitted = calibrate(model, embeds, labels)  # the temperature was fitted for the old values: refit it
    grid = config.search_result["search_grid"]
    print(f"searched on {origin} ({result.num_validation} images, {grid} grid): validation accuracy "
          f"{result.accuracy:.4f}")  # fmt: skip
    print(", ".join(f"{name.replace('_', ' ')} {before[name]:.4g} -> {getattr(config, name):.4g}" for name in before))
    if fitted.temperature is not None:
        print(f"scores' temperature refitted on the same split: {fitted.temperature:.4g}")
    model.save_pretrained(output)
    split_file = adapter_dir / SPLIT_FILE
    if output != adapter_dir and split_file.is_file():  # the draw the adapter was fit on, for a later search
        shutil.copyfile(split_file, output / SPLIT_FILE)
    print(f"wrote {output}" + (" (in place)" if output == adapter_dir else ""))
    return 0


COMMAND = Command(
    name="search",
    help="re-run the validation search of a saved adapter's residual ratio and sharpness (GDA: its weight)",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
