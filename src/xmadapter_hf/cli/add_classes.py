"""`xmadapter add-classes`: a saved adapter plus an image folder of new classes -> a grown adapter, no training.

The folder's class folders name the new classes (sorted; its labels index them). `model.add_classes(names,
dataset)` encodes the names with the adapter's templates and appends their images to the cache, extracted as the
cache was built (docs/add-classes.md); the grown adapter is written to `--output`, which must be a new or empty
directory other than the adapter's: nothing already saved is overwritten. An adapter without a cache (zero-shot,
CLIP-Adapter, the Multi-Modal Adapter) takes the names only.
"""

from __future__ import annotations

from pathlib import Path

from .common import (
    CLIError,
    Command,
    add_loading_arguments,
    add_progress_argument,
    add_threads_argument,
    add_workers_argument,
    load_adapter,
    loading_options,
    set_threads,
    set_workers,
)
from .common import show_progress as progress_wanted
from .data import open_support


def add_arguments(parser) -> None:
    parser.add_argument("adapter", help="the adapter directory (or Hub repo id)")
    parser.add_argument(
        "--support", required=True, metavar="DIR", help="an image folder of the new classes (DIR/<class>/<images>)"
    )
    parser.add_argument("--output", required=True, help="the directory to write the grown adapter to (new or empty)")
    add_threads_argument(parser)
    add_workers_argument(parser)
    add_progress_argument(parser)
    add_loading_arguments(parser)


def _check_output(output: Path, adapter: str) -> None:
    source = Path(adapter).expanduser()
    if source.exists() and output.resolve() == source.resolve():
        raise CLIError(f"--output {str(output)!r} is the adapter itself: write the grown adapter to a new directory")
    if output.exists() and not output.is_dir():
        raise CLIError(f"--output {str(output)!r} is a file")
    if output.is_dir() and any(output.iterdir()):
        raise CLIError(f"--output {str(output)!r} is not empty: give a new or empty directory")


def run(args) -> int:
    output = Path(args.output).expanduser()
    _check_output(output, args.adapter)
    dataset, names, _ = open_support(args.support)
    set_threads(args.threads)
    set_workers(args.workers)
    model = load_adapter(args.adapter, **loading_options(args))
    config = model.config
    before, entries = config.num_classes, config.cache_size
    if entries:
        model.add_classes(names, dataset, show_progress=progress_wanted(args))
    else:
        model.add_classes(names)  # no cache: the support images reach no logit
    model.save_pretrained(output)
    print(
        f"added {len(names)} classes to {config.method} adapter {args.adapter}: {before} -> {config.num_classes} "
        f"classes, cache {entries} -> {config.cache_size} entries; wrote {output}"
    )
    return 0


COMMAND = Command(
    name="add-classes",
    help="add classes to a saved adapter from an image folder of them, without training",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
