"""What a long command says off a terminal (issue 23 item 5), the demo without the `plot` extra, and the figures'
conventions (item 7): one colour per method in every figure, the affinity ratio drawn once, a band that says what it
is. The demo runs here on made-up results (its fits are `test_cli.py`'s), so each test takes a second or less."""

from __future__ import annotations

import io
import sys
import time

import pytest

from xmadapter_hf.methods import METHODS
from xmadapter_hf.methods.base import get_method_class
from xmadapter_hf.plotting import BAND_LABEL, method_colour


class _Clocked(io.StringIO):
    """A stream that records when each line was written."""

    def __init__(self):
        super().__init__()
        self.times = []

    def write(self, text):
        if text.strip():
            self.times.append(time.monotonic())
        return super().write(text)


def test_the_heartbeat_writes_at_most_one_line_per_interval_with_the_last_status():
    from xmadapter_hf.cli.progress import Heartbeat

    stream, interval = _Clocked(), 0.05
    beat = Heartbeat("xmadapter demo", interval, stream).start()
    started = time.monotonic()
    for i in range(2000):  # far more updates than lines
        beat.status = f"{i + 1}/2000 fits"
        if i % 200 == 0:
            time.sleep(0.03)
    time.sleep(0.2)
    beat.stop()
    elapsed = time.monotonic() - started
    lines = stream.getvalue().splitlines()
    assert 1 <= len(lines) <= elapsed / interval + 1
    assert all(later - earlier >= 0.9 * interval for earlier, later in zip(stream.times, stream.times[1:]))
    assert lines[-1].startswith("xmadapter demo: 2000/2000 fits (") and lines[-1].endswith(" s)")


def test_the_heartbeat_is_off_on_a_terminal_and_with_no_progress(monkeypatch):
    from argparse import Namespace

    from xmadapter_hf.cli import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, no_progress in ((Terminal(), False), (io.StringIO(), True)):
        with progress.heartbeat(Namespace(command="fit", no_progress=no_progress), 0.01, stream) as beat:
            progress.progress("fitting")
            time.sleep(0.05)
        assert beat is None and stream.getvalue() == ""


def _results():
    from xmadapter_hf.demo.compare import DemoResult

    results = []
    for shots in (1, 16):
        for index, method in enumerate(("zero-shot", "tip-adapter", "xmadapter")):
            results.append(DemoResult(
                seed=0, shots=shots, method=method, search="default", test_accuracy=0.4 + 0.01 * shots + 0.02 * index,
                zero_shot_accuracy=0.4, validation_accuracy=0.5, affinity_ratio=0.3 if method == "xmadapter" else None,
                seconds=0.1, extraction_seconds=0.1, temperature=2.0, ece_before=0.2, ece_after=0.1, nll_before=1.5,
                nll_after=1.2, zero_shot_ece_before=0.3, zero_shot_ece_after=0.1,
            ))  # fmt: skip
    return results


@pytest.fixture
def fake_demo(monkeypatch):
    """`compare_methods` giving made-up results, one every 20 ms, as the real one calls `on_result`."""

    def compare_methods(model, *, seeds, shots, methods, searches, augment_views, on_result):
        for result in _results():
            time.sleep(0.02)
            on_result(result)
        return _results()

    monkeypatch.setattr("xmadapter_hf.demo.compare.compare_methods", compare_methods)


def test_demo_without_matplotlib_prints_the_table_and_says_how_to_get_the_plots(fake_demo, monkeypatch, tmp_path,
                                                                                 capsys):  # fmt: skip
    from xmadapter_hf.cli import main, progress

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0.01)
    methods = ["--methods", "zero-shot", "tip-adapter", "xmadapter", "--shots", "1", "16"]
    assert main(["demo", *methods, "--output", str(tmp_path / "demo")]) == 0
    captured = capsys.readouterr()
    assert "test accuracy (%) on the demo task's test split" in captured.out and "| xmadapter |" in captured.out
    assert captured.out.rstrip().splitlines()[-1] == (
        "no plots: matplotlib is not installed; for few_shot_curve.png and affinity_ratio.png: "
        "pip install 'xmadapter-hf[plot]'"
    )
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["results.json", "table.md"]
    # stderr is no terminal here: progress lines, each saying how far the results are
    lines = captured.err.splitlines()
    assert lines and all(line.startswith("xmadapter demo: ") for line in lines)
    assert any("/6 results, last " in line for line in lines), lines


def _curve_colours(axes) -> dict[str, str]:
    from matplotlib.colors import to_hex

    return {line.get_label(): to_hex(line.get_color()) for line in axes.get_lines()}


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting functions draw, kept instead of written."""
    from xmadapter_hf import plotting

    drawn = []
    monkeypatch.setattr(plotting, "_save", lambda figure, path: drawn.append(figure) or path)
    yield drawn
    import matplotlib.pyplot as plt

    plt.close("all")


def test_a_method_has_one_colour_in_every_figure(figures):
    """Before, a curve took the colour cycle's next colour: zero-shot was grey and dashed in the demo's figure and
    blue in the reproduce panels, and a method's colour changed with the methods drawn before it."""
    from xmadapter_hf.plotting import plot_affinity_ratio, plot_few_shot_curve, plot_few_shot_panels

    curve = {1: (40.0, 1.0), 16: (50.0, 2.0)}
    plot_few_shot_curve({"xmadapter": curve, "tip-adapter": curve}, "a.png", flat={"zero-shot": 44.0})
    plot_few_shot_panels({"dtd": {"clip-adapter": curve, "tip-adapter": curve, "xmadapter": curve},
                          "eurosat": {"zero-shot": curve, "xmadapter": curve}}, "b.png")  # fmt: skip
    plot_affinity_ratio({1: (0.4, 0.0), 16: (0.3, 0.0)}, "c.png", "xmadapter")
    seen: dict[str, set[str]] = {}
    for figure in figures:
        for axes in figure.axes:
            for label, colour in _curve_colours(axes).items():
                name = label.split(":")[0]
                seen.setdefault(name, set()).add(colour)
    assert set(seen) == {"zero-shot", "tip-adapter", "clip-adapter", "xmadapter"}
    assert all(colours == {get_method_class(name).colour} for name, colours in seen.items()), seen
    shipped = {get_method_class(name).colour for name in METHODS}
    assert None not in shipped and len(shipped) == len(METHODS)  # each shipped method has its own
    assert method_colour("my-method") == method_colour("my-method") not in shipped


def test_the_affinity_ratio_is_drawn_once_and_error_bars_only_with_a_spread(figures):
    from xmadapter_hf.plotting import plot_affinity_ratio

    plot_affinity_ratio({1: (0.4, 0.0), 16: (0.3, 0.0)}, "one-seed.png", "xmadapter")
    plot_affinity_ratio({1: (0.4, 0.05), 16: (0.3, 0.02)}, "seeds.png", "xmadapter")
    (one_seed,), (seeds,) = (figure.axes for figure in figures)
    for axes in (one_seed, seeds):
        data = [line for line in axes.get_lines() if len(line.get_xdata()) == 2 and line.get_marker() == "o"]
        assert len(data) == 1 and list(data[0].get_ydata()) == [0.4, 0.3]  # r, and no mirror-image 1 - r line
        assert "1 - r" in axes.get_ylabel()
    assert one_seed.containers == [] and len(seeds.containers) == 1  # an error bar only where there is a spread


def test_the_band_says_what_it_is(figures):
    from xmadapter_hf.plotting import plot_few_shot_curve, plot_few_shot_panels

    plot_few_shot_panels({"dtd": {"tip-adapter": {1: (40.0, 1.5), 16: (50.0, 2.0)}}}, "panels.png")
    plot_few_shot_curve({"tip-adapter": {1: (40.0, 0.0), 16: (50.0, 0.0)}}, "one-seed.png")
    banded, plain = ([text.get_text() for text in figure.axes[0].get_legend().get_texts()] for figure in figures)
    assert BAND_LABEL in banded and BAND_LABEL not in plain and "std" in BAND_LABEL
