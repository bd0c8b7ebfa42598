"""Plots (matplotlib, the `plot` extra): few-shot curves, XMAdapter's affinity ratio per shot count, confusions.

matplotlib is imported here only, and only when a plot is drawn (`import xmadapter_hf` does not need it). Every
function writes a PNG with the non-interactive Agg backend and returns its path. Without matplotlib, they raise
[`PlotUnavailableError`] (an `ImportError`) whose message names the extra to install.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "BAND_LABEL",
    "PLOT_EXTRA",
    "PlotUnavailableError",
    "plot_affinity_ratio",
    "plot_confusion_matrix",
    "plot_few_shot_curve",
    "plot_few_shot_panels",
    "method_colour",
    "require_matplotlib",
]

#: What to install for plots.
PLOT_EXTRA = "pip install 'xmadapter-hf[plot]'"

_OTHER_COLOURS = ("#bcbd22", "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")

#: What the shaded band around a curve is.
BAND_LABEL = "shaded: ± 1 std over the seeds"


def method_colour(name: str) -> str:
    """The colour of method ``name`` in every figure, whichever methods a figure holds and in whichever order: the
    registered method's `colour` (the shipped methods: matplotlib's tab10 colours, zero-shot grey), else one of the
    other colours chosen from the name alone (the same in every figure and process)."""
    import zlib

    from .methods import get_method_class, registered_methods

    colour = get_method_class(name).colour if name in registered_methods() else None
    if colour is not None:
        return colour
    return _OTHER_COLOURS[zlib.crc32(name.encode()) % len(_OTHER_COLOURS)]


class PlotUnavailableError(ImportError):
    """matplotlib is not installed; the message says how to install the `plot` extra."""


def require_matplotlib():
    """`matplotlib.pyplot` with the Agg backend, or a [`PlotUnavailableError`] naming the `plot` extra."""
    try:
        import matplotlib
    except ImportError as error:
        raise PlotUnavailableError(f"plotting needs matplotlib, which is not installed: {PLOT_EXTRA}") from error
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike) -> Path:
    """Writes the PNG atomically (a temporary file renamed over `path`: an interrupted run leaves no half PNG)."""
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.png")
    figure.savefig(temporary, dpi=120)
    figure.clf()
    import matplotlib.pyplot as plt

    plt.close(figure)
    os.replace(temporary, path)
    return path


def _draw_curves(axes, curves: Mapping[str, Mapping[int, tuple[float, float]]], flat: Mapping[str, float]) -> None:
    """One line per method of accuracy against shots (log2 axis, ticks at the shot counts), in the method's colour
    (`method_colour`); the std as a band, which the legend names (`BAND_LABEL`)."""
    for name, value in flat.items():
        axes.axhline(value, linestyle="--", color=method_colour(name), label=name)
    shots_seen: set[int] = set()
    banded = False
    for name, points in curves.items():
        shots = sorted(points)
        shots_seen.update(shots)
        means = [points[k][0] for k in shots]
        stds = [points[k][1] for k in shots]
        axes.plot(shots, means, marker="o", label=name, color=method_colour(name))
        if any(s > 0 for s in stds):
            low = [m - s for m, s in zip(means, stds)]
            high = [m + s for m, s in zip(means, stds)]
            axes.fill_between(shots, low, high, alpha=0.15, color=method_colour(name))
            banded = True
    axes.set_xscale("log", base=2)
    axes.set_xticks(sorted(shots_seen), [str(k) for k in sorted(shots_seen)])
    axes.set_xlabel("shots per class")
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if banded:
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="gray", alpha=0.3, label=BAND_LABEL))
        labels.append(BAND_LABEL)
    axes.legend(handles, labels, fontsize="small")


def plot_few_shot_curve(
    curves: Mapping[str, Mapping[int, tuple[float, float]]],
    path: str | os.PathLike,
    *,
    flat: Mapping[str, float] | None = None,
    title: str = "Few-shot accuracy",
    ylabel: str = "test accuracy (%)",
) -> Path:
    """Accuracy against shots per class, one line per method (as the few-shot figures of the papers).

    Args:
        curves: method -> {shots: (mean, std)}; the std is drawn as a band where it is > 0.
        path: the PNG to write.
        flat: method -> value, drawn as a dashed horizontal line (zero-shot does not depend on the shots).
        title, ylabel: the labels.
    """
    plt = require_matplotlib()
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    _draw_curves(axes, curves, flat or {})
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    return _save(figure, path)


def plot_few_shot_panels(
    panels: Mapping[str, Mapping[str, Mapping[int, tuple[float, float]]]],
    path: str | os.PathLike,
    *,
    ylabel: str = "top-1 accuracy (%)",
) -> Path:
    """Few-shot curves of several datasets, one panel each (up to three a row), as `plot_few_shot_curve` draws one.

    Args:
        panels: title (a dataset) -> method -> {shots: (mean, std)}.
        path: the PNG to write.
        ylabel: the accuracy axis' label.
    """
    import math

    plt = require_matplotlib()
    columns = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.5 * rows), squeeze=False)
    for axis, (title, curves) in zip(axes.flat, panels.items()):
        _draw_curves(axis, curves, {})
        axis.set_title(title)
        axis.set_ylabel(ylabel)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    return _save(figure, path)


def plot_affinity_ratio(points: Mapping[int, tuple[float, float]], path: str | os.PathLike, method: str) -> Path:
    """XMAdapter's affinity ratio r (the image cache's weight; the text cache's is 1 - r, which the axis label says
    rather than a second, mirror-image line) against shots per class, in XMAdapter's colour; error bars (± 1 std
    over the seeds) only where a std is > 0.

    Args:
        points: {shots: (mean, std)} of the learned ratio.
        path: the PNG to write.
        method: the name of the method whose ratio it is (its colour and label).
    """
    plt = require_matplotlib()
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    shots = sorted(points)
    means = [points[k][0] for k in shots]
    stds = [points[k][1] for k in shots]
    colour, label = method_colour(method), f"{method}: affinity ratio r"
    if any(s > 0 for s in stds):
        axes.errorbar(shots, means, yerr=stds, marker="o", capsize=3, color=colour, label=f"{label} (± 1 std)")
    else:
        axes.plot(shots, means, marker="o", color=colour, label=label)
    axes.set_xscale("log", base=2)
    axes.set_xticks(shots, [str(k) for k in shots])
    axes.set_ylim(0, 1)
    axes.set_xlabel("shots per class")
    axes.set_ylabel("r: the image cache's weight (text cache: 1 - r)")
    axes.set_title("XMAdapter: image vs text cache")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike
) -> Path:
    """A confusion matrix (rows: true class, columns: predicted class), counts written in the cells.

    Args:
        matrix: (N, N) counts.
        class_names: the N names, in label order.
        path: the PNG to write.
    """
    plt = require_matplotlib()
    count = len(class_names)
    side = min(4 + 0.45 * count, 40)
    figure, axes = plt.subplots(figsize=(side, side))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(count), class_names, rotation=90, fontsize="small")
    axes.set_yticks(range(count), class_names, fontsize="small")
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if count <= 30:
        peak = max((max(row) for row in matrix), default=0)
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                if value:
                    colour = "white" if value > peak / 2 else "black"
                    axes.text(j, i, str(value), ha="center", va="center", fontsize="x-small", color=colour)
    axes.set_title("Confusion matrix")
    return _save(figure, path)
