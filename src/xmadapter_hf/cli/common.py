"""What every subcommand shares: the `Command` record, one-line errors, argument types, threads, loading adapters."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import WORKERS_ENV
from ..jsonsafe import dumps

__all__ = [
    "SEARCH_GRID_CHOICES",
    "CLIError",
    "Command",
    "add_loading_arguments",
    "add_progress_argument",
    "add_search_arguments",
    "add_support_argument",
    "add_threads_argument",
    "add_training_arguments",
    "add_workers_argument",
    "default_method",
    "load_adapter",
    "loading_options",
    "method_names",
    "nonnegative_int",
    "one_line",
    "positive_int",
    "search_options",
    "search_scale",
    "set_threads",
    "set_workers",
    "show_progress",
    "write_json",
]


class CLIError(Exception):
    """A bad input, reported as one line; `status` is the exit status (2 for a bad argument, else 1)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Command:
    """A subcommand: `add_arguments(parser)` declares its options, `run(args)` runs it and returns the exit
    status (`None` = 0)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    description: str | None = None


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


def positive_int(text: str) -> int:
    """An argument type: a positive integer (argparse's own message would be "invalid positive_int value")."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An argument type: an integer 0 or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer 0 or more, got {text!r}")
    return value


#: `--search-grid`'s choices: `xmadapter_hf.training.grids.SEARCH_GRIDS` (written out so that `--help` imports no
#: training code; tests/test_cli.py checks that they are the same).
SEARCH_GRID_CHOICES = ("auto", "paper", "tip-adapter-grid")


def add_search_arguments(parser: argparse.ArgumentParser, *, step: bool = True) -> None:
    """The validation search's options (`fit`, `search`, `demo`, `reproduce`): --search-grid, --search-scale and
    --search-step. None has a default of its own: the library's (`search_on_validation`) decides."""
    parser.add_argument(
        "--search-grid", choices=SEARCH_GRID_CHOICES, help="auto: the backbone-adaptive search; tip-adapter-grid "
        "(also named paper): the papers' fixed linear grids, sized by --search-scale and --search-step (default: "
        "the library's: auto, or tip-adapter-grid when --search-scale or --search-step is given)",
    )  # fmt: skip
    parser.add_argument(
        "--search-scale", type=float, nargs=2, metavar=("SHARPNESS_MAX", "RATIO_MAX"),
        help="the tip-adapter-grid's range (default: the library's: a Tip-Adapter dataset's own, else (7, 3); the "
        "ratio is scaled by the backbone's logit scale / 100)",
    )  # fmt: skip
    if step:
        parser.add_argument(
            "--search-step", type=positive_int, nargs=2, metavar=("SHARPNESS_STEPS", "RATIO_STEPS"),
            help="the tip-adapter-grid's sizes (default: the library's: a Tip-Adapter dataset's own, else 200 20)",
        )  # fmt: skip


def add_training_arguments(parser: argparse.ArgumentParser, *, epochs: bool = True, step: bool = False) -> None:
    """What `fit` takes beside the data, shared by `fit`, `demo` and `reproduce`: --augment-views, --epochs (where
    the command trains with one setting) and the search's options."""
    parser.add_argument("--augment-views", type=nonnegative_int, default=10, help="augmented views per image (10)")
    if epochs:
        parser.add_argument("--epochs", type=positive_int, help="training epochs (default: the method's recipe)")
    add_search_arguments(parser, step=step)


def search_scale(args: argparse.Namespace) -> tuple[float, float] | None:
    """--search-scale as `fit`'s `search_scale` (`None`: the library's default)."""
    return tuple(args.search_scale) if args.search_scale else None


def check_output_folder(output: str | Path, overwrite: bool, label: str = "--output") -> Path:
    """``output`` as a `Path` where a command may write: new, empty, or non-empty with ``overwrite``; a `CLIError`
    naming it (as ``label``) otherwise, before any work."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise CLIError(f"{label} {str(output)!r} is a file")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise CLIError(f"{label} {str(output)!r} is not empty: pass --overwrite to write into it")
    return output


def require_gradio(needs: str) -> None:
    """Refuses, naming the `app` extra, where gradio is not installed (``needs``: who needs it, and why)."""
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise CLIError(f'{needs}: pip install "xmadapter-hf[app]"') from error


def search_options(args: argparse.Namespace) -> dict:
    """--search-grid, --search-scale and --search-step as the library's `search_grid`, `search_scale` and
    `search_step` (each `None` where not given: the library decides); a range with "auto" is a `CLIError`."""
    from ..training.search import resolve_search_grid

    step = getattr(args, "search_step", None)
    options = {
        "search_grid": getattr(args, "search_grid", None),
        "search_scale": search_scale(args),
        "search_step": tuple(step) if step else None,
    }
    try:  # the library's rule, checked before any work
        resolve_search_grid(**options)
    except ValueError as error:
        given = " and ".join(f"--{k.replace('_', '-')}" for k in ("search_scale", "search_step") if options[k])
        raise CLIError(
            f"{given} sizes the tip-adapter-grid; --search-grid auto chooses its own ranges: pass one or the other", 2
        ) from error
    return options


def method_names() -> list[str]:
    """The registered methods, in the order of the demo table."""
    from ..demo.compare import demo_methods

    return demo_methods()


def default_method() -> str:
    """The config's default method."""
    from .. import XMAdapterConfig

    return XMAdapterConfig().method


def add_threads_argument(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    what = f"default {default}" if default else "default: torch's choice"
    parser.add_argument("--threads", type=positive_int, default=default, help=f"torch CPU threads ({what})")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers", type=nonnegative_int, metavar="N", help="processes that decode, augment and preprocess the "
        "images while the backbone embeds (0: none; default: 0 for under 256 views, else one per core; the "
        "embeddings do not depend on it)",
    )  # fmt: skip


def set_workers(workers: int | None) -> None:
    """--workers as the default of every extraction the command runs (`XMADAPTER_NUM_WORKERS`, which
    `data.loader.resolve_num_workers` reads where no `num_workers` is given; `main` restores it after the command)."""
    if workers is not None:
        os.environ[WORKERS_ENV] = str(workers)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they are shown when stderr is a terminal)"
    )


def show_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def write_json(path: str | os.PathLike, payload) -> Path:
    """Writes ``payload`` as JSON (a number that is not finite becomes `null`: `xmadapter_hf.jsonsafe`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~", "/"))


def check_adapter(source: str) -> None:
    """Raises a `CLIError` unless `source` is an adapter directory (or could be a Hub repo id)."""
    path = Path(source).expanduser()
    if not path.exists():
        if _looks_like_repo_id(source):
            return  # a Hub repo id: from_pretrained says whether it exists
        raise CLIError(f"adapter {source!r}: no such directory")
    if not path.is_dir():
        raise CLIError(f"adapter {source!r} is a file; expected an adapter directory (config.json, model.safetensors)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CLIError(
            f"{source!r} is not an adapter directory: it has no config.json (write one with `xmadapter fit`)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError) as error:
        raise CLIError(f"{source!r}: config.json is not a JSON object ({error})") from error
    from .. import XMAdapterConfig

    if model_type != XMAdapterConfig.model_type:
        raise CLIError(
            f"{source!r} is not an xmadapter adapter directory: its config.json has model_type {model_type!r}"
        )
    if not (path / "model.safetensors").is_file():
        raise CLIError(f"{source!r} is not a complete adapter directory: model.safetensors is missing")


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """What `from_pretrained` takes besides the adapter, for the commands that load one: --no-check-backbone
    (`check_backbone=False`) and --rebuild-text-embeddings (`rebuild_text_embeddings=True`), which the loading
    errors recommend."""
    parser.add_argument(
        "--rebuild-text-embeddings", action="store_true", help="re-encode the class prompts with the backbone "
        "loaded, instead of refusing a text encoder that differs from the one the adapter was built on",
    )  # fmt: skip
    parser.add_argument(
        "--no-check-backbone", action="store_true", help="skip the checks that the backbone loaded is the one the "
        "adapter was built on (its architecture and probe embeddings)",
    )  # fmt: skip


def loading_options(args: argparse.Namespace) -> dict:
    """--no-check-backbone and --rebuild-text-embeddings as `from_pretrained`'s arguments."""
    return {
        "check_backbone": not getattr(args, "no_check_backbone", False),
        "rebuild_text_embeddings": getattr(args, "rebuild_text_embeddings", False),
    }


#: The library's loading messages name `from_pretrained`'s arguments; the command line's are its options.
_LOADING_OPTIONS = {
    "`check_backbone=False`": "--no-check-backbone",
    "`rebuild_text_embeddings=True`": "--rebuild-text-embeddings",
}


def load_adapter(source: str, support: tuple | None = None, show_progress: bool = False, **kwargs):
    """See `_load_adapter`; a loading error names the command line's options instead of `from_pretrained`'s."""
    try:
        return _load_adapter(source, support, show_progress, **kwargs)
    except ValueError as error:
        message = str(error)
        if not any(name in message for name in _LOADING_OPTIONS):
            raise
        for name, option in _LOADING_OPTIONS.items():
            message = message.replace(name, option)
        raise CLIError(message) from error


def _load_adapter(source: str, support: tuple | None = None, show_progress: bool = False, **kwargs):
    """The adapter at `source` (a directory or Hub id), checked first; its backbone is loaded by the name its config
    records. With `support` (`data.open_support`'s (dataset, class names, origin)), it gets the support's classes
    instead of its own (`from_pretrained(class_names=...)`) and its cache is built from their images (`build_cache`,
    with the adapter's augmented views and seed): a meta-trained adapter applied online, with no training."""
    from .. import XMAdapterForImageClassification

    check_adapter(source)
    if support is None:
        return XMAdapterForImageClassification.from_pretrained(source, **kwargs)
    dataset, names, _ = support
    model = XMAdapterForImageClassification.from_pretrained(source, class_names=names, **kwargs)
    config = model.config
    return model.build_cache(dataset, config.augment_views, seed=config.seed or 0, show_progress=show_progress)


def add_support_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--support", metavar="DIR", help="an image folder of other classes (DIR/<class>/<images>): the adapter gets "
        "its classes instead of its own and a cache of its images, with no training (Meta-Adapter's online use)",
    )  # fmt: skip
