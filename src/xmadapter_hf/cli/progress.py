"""Progress lines for logs: where stderr is not a terminal (CI, `nohup`, a notebook's log), the progress bars are off,
so a long command would be silent for minutes. There, `main` runs each command under a [`Heartbeat`]: a line on
stderr at most every `PROGRESS_INTERVAL` seconds (`xmadapter demo: 12/40 fits, last 4 shots xmadapter (95 s)`),
none for a command that ends sooner. A command says how far it is with [`progress`] (a no-op without a heartbeat);
`--no-progress` turns the lines off with the bars.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["PROGRESS_INTERVAL", "Heartbeat", "heartbeat", "progress"]

#: Seconds between two progress lines, at most one line per interval.
PROGRESS_INTERVAL = 10.0

_current: Heartbeat | None = None


class Heartbeat:
    """Writes ``"{prefix}: {status} ({elapsed} s)"`` to ``stream`` every ``interval`` seconds from a daemon thread
    until `stop` (never more often: one line per interval at most, whatever the number of `progress` calls); the
    status is the last one `progress` set, "working" before any. ``clock`` gives the elapsed time (a test passes a
    fake one)."""

    def __init__(
        self,
        prefix: str,
        interval: float = PROGRESS_INTERVAL,
        stream=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.prefix, self.interval, self.clock = prefix, interval, clock
        self.stream = stream if stream is not None else sys.stderr
        self.status, self.lines = "working", 0
        self._started = clock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xmadapter-progress", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def line(self) -> str:
        return f"{self.prefix}: {self.status} ({self.clock() - self._started:.0f} s)"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                print(self.line(), file=self.stream, flush=True)
            except (OSError, ValueError):  # the stream was closed under us: stay silent
                return
            self.lines += 1


def progress(status: str) -> None:
    """Sets what the running command's next progress line says (nothing happens without a heartbeat)."""
    if _current is not None:
        _current.status = status


@contextlib.contextmanager
def heartbeat(args, interval: float | None = None, stream=None):
    """A [`Heartbeat`] for the command of ``args`` while the block runs, where stderr is not a terminal and
    `--no-progress` was not given; nothing otherwise."""
    global _current
    stream = stream if stream is not None else sys.stderr
    wanted = not getattr(args, "no_progress", False) and not _is_terminal(stream)
    if not wanted or _current is not None:  # a command run inside another (a test calling `main`) has its own
        yield None
        return
    beat = Heartbeat(f"xmadapter {args.command}", PROGRESS_INTERVAL if interval is None else interval, stream)
    _current = beat.start()
    try:
        yield beat
    finally:
        _current = None
        beat.stop()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
