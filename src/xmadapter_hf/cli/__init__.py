"""The `xmadapter` command line (also `python -m xmadapter_hf`).

Each subcommand is one module of this package holding a [`Command`]: its name, one-line help, a function that adds
its arguments and a function that runs it. `COMMANDS` lists them in the order `--help` shows; adding a subcommand is
one module plus one entry there. Heavy imports (torch models, datasets) happen inside the run functions, so
`--help` and argument errors cost only the package import.

Errors: a bad input ends the command with one line on stderr (`xmadapter <command>: error: ...`) and exit status 2
for a bad argument or 1 for anything else; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings

from ..data import WORKERS_ENV
from . import add_classes, demo, evaluate, export, fit, predict, push, reproduce, search, space
from . import serve as serve_command
from .common import CLIError, Command, one_line
from .progress import heartbeat

__all__ = ["COMMANDS", "CLIError", "Command", "build_parser", "main"]

#: Every subcommand, in the order of `xmadapter --help`.
COMMANDS: tuple[Command, ...] = (
    demo.COMMAND,
    fit.COMMAND,
    evaluate.COMMAND,
    predict.COMMAND,
    search.COMMAND,
    add_classes.COMMAND,
    push.COMMAND,
    export.COMMAND,
    reproduce.COMMAND,
    serve_command.COMMAND,
    space.COMMAND,
)

PROG = "xmadapter"
EPILOG = "Run `xmadapter COMMAND --help` for a command's options. Documentation: docs/cli.md."


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `xmadapter` parser, with one sub-parser per entry of `COMMANDS`."""
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="Few-shot adapters (XMAdapter, Tip-Adapter, ...) over a frozen Hugging Face CLIP model.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"xmadapter-hf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    # the sub-parsers' --debug must not reset a --debug given before the command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {one_line(str(message))}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_libraries():
    """Library chatter (info logs, progress bars of loading) off while a command runs, as it was after: the commands
    print what matters themselves (and `main` may run inside another program, e.g. a test)."""
    import datasets
    import huggingface_hub
    import transformers

    hub_logger = huggingface_hub.utils.logging.get_logger()  # e.g. "... thrown while requesting HEAD ..." offline
    onnx_logger = logging.getLogger("torch.onnx")  # e.g. "torchvision is not installed" while exporting
    before = (
        transformers.logging.get_verbosity(),
        transformers.utils.logging.is_progress_bar_enabled(),
        datasets.logging.get_verbosity(),
        datasets.is_progress_bar_enabled(),
        onnx_logger.level,
        hub_logger.level,
    )
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    onnx_logger.setLevel(logging.ERROR)
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        transformers.logging.set_verbosity(before[0])
        if before[1]:
            transformers.logging.enable_progress_bar()
        datasets.logging.set_verbosity(before[2])
        if before[3]:
            datasets.enable_progress_bars()
        onnx_logger.setLevel(before[4])
        hub_logger.setLevel(before[5])


@contextlib.contextmanager
def _environment_kept(name: str):
    """Restores the environment variable ``name`` (which --workers sets) when the command ends."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def main(argv: list[str] | None = None) -> int:
    """Runs `xmadapter` with `argv` (default: the process arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    debug = args.debug
    # all three restore what they change when the command ends; the heartbeat: progress lines where stderr is no tty
    with warnings.catch_warnings(), _quiet_libraries(), _environment_kept(WORKERS_ENV), heartbeat(args):
        if not debug:
            warnings.showwarning = _show_warning
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            return int(args.run(args) or 0)
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader of stdout went away (`xmadapter predict ... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except Exception as error:  # every error is one line unless --debug
            if debug:
                raise
            print(f"{PROG} {args.command}: error: {_describe(error)}", file=sys.stderr)
            return error.status if isinstance(error, CLIError) else 1


def _describe(error: Exception) -> str:
    """One line: the message, prefixed by the exception's type unless it is an expected kind of bad input."""
    expected = isinstance(error, (CLIError, ValueError))
    kind = "" if expected else f"{type(error).__name__}: "
    hint = "" if expected or isinstance(error, (TypeError, OSError)) else " (--debug shows the traceback)"
    return f"{kind}{one_line(str(error))}{hint}"
