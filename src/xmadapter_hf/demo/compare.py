"""Every method on the demo task, as the library runs it: what `xmadapter demo` and `benchmarks/demo_baseline.py` run.

For each seed and shot count K: K training images per class are drawn from the demo task's train pool with the seed;
their augmented views (10, `fit`'s default) are extracted once and shared by every method; each method runs through
[`~xmadapter_hf.fit`] with its defaults, choosing its searched values on the validation split (16 images per class);
accuracy is on the test split (25 per class), which no step sees before the final evaluation. The `auto` row is
`method="auto"` from those same fits, not a ninth fit: per seed and shot count, the method with the best validation
accuracy (a tie goes to the earlier of `xmadapter_hf.methods.AUTO_CANDIDATES`), its test results under the name
`auto` and the time of all the fits it chose among. Beside accuracy, each
result carries the test split's expected calibration error and negative log-likelihood of the scores before (`T = 1`)
and after the temperature `fit` fitted on the validation split (`xmadapter_hf.calibration`), and zero-shot CLIP's.

Example (one seed, one shot count, the two training-free methods):

```python
>>> from xmadapter_hf.demo.compare import compare_methods, summarize
>>> results = compare_methods(shots=(2,), methods=("zero-shot", "tip-adapter"), augment_views=1)
>>> sorted(summarize(results))
['tip-adapter', 'zero-shot']
```
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from ..selection import AUTO

__all__ = [
    "DEMO_SHOTS",
    "DemoResult",
    "accuracy_table",
    "affinity_ratio_table",
    "auto_result",
    "calibration_table",
    "compare_methods",
    "demo_methods",
    "summarize",
    "summarize_affinity_ratio",
]

#: The shot counts of the few-shot protocol (CoOp, Tip-Adapter, XMAdapter).
DEMO_SHOTS = (1, 2, 4, 8, 16)


def demo_methods() -> list[str]:
    """Every registered method: the library's own in their documented order, then any other registered one."""
    import xmadapter_hf
    from xmadapter_hf import registered_methods

    known = list(getattr(xmadapter_hf, "METHODS", ()))
    return [m for m in known if m in registered_methods()] + [m for m in registered_methods() if m not in known]


@dataclass
class DemoResult:
    """One fit of one method on one few-shot draw (accuracies in [0, 1]).

    Attributes:
        seed (`int`), shots (`int`), method (`str`), search (`str`): the run (``search`` names the search range).
        test_accuracy (`float`): the method on the test split.
        zero_shot_accuracy (`float`): zero-shot CLIP on the test split.
        validation_accuracy (`float` or `None`): the method on the validation split (where the search chose).
        affinity_ratio (`float` or `None`): XMAdapter's mean affinity ratio (the image cache's weight) on the test
            split; `None` for other methods.
        seconds (`float`), extraction_seconds (`float`): wall time of the fit and of the shared extraction.
        searched (`dict` or `None`): the searched values and their validation accuracy (cache methods).
        temperature (`float` or `None`): the temperature `fit` fitted on the validation split.
        chosen (`str` or `None`): for the `auto` row, the method chosen on validation (whose results these are).
        ece_before (`float`), ece_after (`float`): the method's expected calibration error on the test split (15
            bins), at `T = 1` and at the fitted temperature.
        nll_before (`float`), nll_after (`float`): its mean negative log-likelihood on the test split, the same two.
        zero_shot_ece_before (`float`), zero_shot_ece_after (`float`): zero-shot CLIP's test ECE, raw and with a
            temperature fitted on its validation logits the same way.
    """

    seed: int
    shots: int
    method: str
    search: str
    test_accuracy: float
    zero_shot_accuracy: float
    validation_accuracy: float | None
    affinity_ratio: float | None
    seconds: float
    extraction_seconds: float
    searched: dict | None = None
    temperature: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    zero_shot_ece_before: float | None = None
    zero_shot_ece_after: float | None = None
    chosen: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _test_metrics(model, test: tuple, validation: tuple) -> dict:
    """The method's and zero-shot CLIP's test accuracy, ECE and NLL (before and after the temperature), and the mean
    affinity ratio if there is one; zero-shot CLIP's temperature is fitted on its validation logits."""
    from ..calibration import expected_calibration_error, fit_temperature, negative_log_likelihood

    (embeds, labels), temperature = test, model.config.temperature
    with torch.no_grad():
        out = model(image_embeds=embeds)
        zero_shot_validation = model(image_embeds=validation[0]).zero_shot_logits
    zero_shot_temperature = fit_temperature(zero_shot_validation, validation[1]).temperature
    logits, zero_shot = out.logits.float(), out.zero_shot_logits.float()
    return dict(
        test_accuracy=float((logits.argmax(-1) == labels).float().mean()),
        zero_shot_accuracy=float((zero_shot.argmax(-1) == labels).float().mean()),
        affinity_ratio=None if out.affinity_ratio is None else float(out.affinity_ratio.float().mean()),
        temperature=temperature,
        ece_before=expected_calibration_error(logits, labels),
        ece_after=expected_calibration_error(logits, labels, temperature),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
        zero_shot_ece_before=expected_calibration_error(zero_shot, labels),
        zero_shot_ece_after=expected_calibration_error(zero_shot, labels, zero_shot_temperature),
    )


def compare_methods(
    model: str | None = None,
    *,
    seeds: Sequence[int] = (0,),
    shots: Sequence[int] = DEMO_SHOTS,
    methods: Sequence[str] | None = None,
    searches: Mapping[str, tuple[float, float] | dict | None] | None = None,
    augment_views: int = 10,
    on_result: Callable[[DemoResult], None] | None = None,
    show_progress: bool = False,
) -> list[DemoResult]:
    """Fits every method at every shot count and seed on the demo task; returns one [`DemoResult`] per fit.

    Args:
        model (`str`, *optional*): a CLIP Hub id or local path; defaults to the demo CLIP.
        seeds (`Sequence[int]`, *optional*, defaults to `(0,)`): the draws of the few-shot images (and of the
            augmentations, view draws and shuffles).
        shots (`Sequence[int]`, *optional*, defaults to `DEMO_SHOTS`): images per class, each at most 64.
        methods (`Sequence[str]`, *optional*): registered method names, and `"auto"` for the row chosen on validation
            among the others (see the module docstring); defaults to [`demo_methods`] and `"auto"`.
        searches (`Mapping[str, tuple | dict | None]`, *optional*): name -> `search_scale` given to `fit` (`None` =
            its default), or a dict of `fit`'s search arguments (`search_grid`, `search_scale`, `search_step`);
            defaults to ``{"default": None}``. Methods without a search run once, under the first name.
        augment_views (`int`, *optional*, defaults to 10): views per training image.
        on_result (`Callable`, *optional*): called with each result as soon as it is measured.
        show_progress (`bool`, *optional*, defaults to `False`): `fit`'s progress bars.
    """
    from transformers import AutoProcessor, CLIPModel

    from xmadapter_hf import XMAdapterForImageClassification, extract_embeddings, fit

    from .checkpoint import demo_clip_path
    from .task import DEMO_CLASSES, demo_task

    methods = list(methods) if methods is not None else [*demo_methods(), AUTO]
    auto = AUTO in methods
    methods = [name for name in methods if name != AUTO]
    searches = dict(searches) if searches is not None else {"default": None}
    path = model or demo_clip_path()
    clip = CLIPModel.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)

    def plain(split):
        extracted = extract_embeddings(clip, processor, demo_task(split), augment_views=0, show_progress=False)
        return extracted.embeds[0], extracted.labels

    val_embeds, val_labels = plain("validation")
    test_embeds, test_labels = plain("test")
    results = []
    for seed in seeds:
        for k in shots:
            started = time.perf_counter()
            train = demo_task("train", shots=k, seed=seed)
            views = extract_embeddings(
                clip, processor, train, augment_views=augment_views, seed=seed, show_progress=show_progress
            )
            extraction = time.perf_counter() - started
            fits = []
            for method in methods:
                for number, (search, scale) in enumerate(searches.items()):
                    started = time.perf_counter()
                    adapter = XMAdapterForImageClassification.from_clip(
                        clip, list(DEMO_CLASSES), processor=processor, method=method
                    )
                    if number > 0 and not adapter.method.uses_cache:
                        break  # the search range means nothing to it: it ran once already
                    search_args = dict(scale) if isinstance(scale, Mapping) else {"search_scale": scale}
                    adapter, report = fit(
                        adapter, views, val_embeds, validation_labels=val_labels, seed=seed, **search_args,
                        show_progress=show_progress,
                    )  # fmt: skip
                    metrics = _test_metrics(adapter, (test_embeds, test_labels), (val_embeds, val_labels))
                    result = DemoResult(
                        seed=seed, shots=k, method=method, search=search, validation_accuracy=report.accuracy,
                        seconds=time.perf_counter() - started, extraction_seconds=extraction,
                        searched=report.search_after or report.search_before, **metrics,
                    )  # fmt: skip
                    results.append(result)
                    fits.append(result)
                    if on_result is not None:
                        on_result(result)
            if auto and fits:
                results.append(auto_result(fits))
                if on_result is not None:
                    on_result(results[-1])
    return results


def auto_result(fits: Sequence[DemoResult]) -> DemoResult:
    """The `auto` row of one seed and shot count from the fits of every method (under the first search range):
    the one with the best validation accuracy, a tie going to the earlier of `AUTO_CANDIDATES` (methods outside it
    after, in the order given), its results renamed `auto`, with the seconds of all the fits."""
    from ..methods import AUTO_CANDIDATES

    first = fits[0].search
    fits = [r for r in fits if r.search == first and r.validation_accuracy is not None]
    order: dict[str, int] = {}
    for name in [*AUTO_CANDIDATES, *(r.method for r in fits)]:
        order.setdefault(name, len(order))
    ranked = sorted(fits, key=lambda r: order[r.method])
    best = max(ranked, key=lambda r: r.validation_accuracy)  # max keeps the first of equal values
    # the affinity ratio stays XMAdapter's own row's (its summary would count a chosen XMAdapter twice)
    return replace(best, method=AUTO, chosen=best.method, seconds=sum(r.seconds for r in fits), affinity_ratio=None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: Sequence[DemoResult], by_search: bool = False) -> dict[str, dict[int, tuple[float, float]]]:
    """Mean and std over seeds of the test accuracy (%), per method and shot count: ``{method: {shots: (mean,
    std)}}`` in the order the results came; with ``by_search``, keyed ``"method (search)"`` for cache methods run
    under several search ranges."""
    cells: dict[str, dict[int, list[float]]] = {}
    searches = {r.search for r in results}
    for r in results:
        several = by_search and len(searches) > 1 and r.searched is not None
        name = f"{r.method} ({r.search})" if several else r.method
        cells.setdefault(name, {}).setdefault(r.shots, []).append(100 * r.test_accuracy)
    return {name: {k: _mean_std(v) for k, v in row.items()} for name, row in cells.items()}


def summarize_affinity_ratio(results: Sequence[DemoResult]) -> dict[int, tuple[float, float]]:
    """XMAdapter's mean affinity ratio on the test split, mean and std over seeds, per shot count."""
    cells: dict[int, list[float]] = {}
    for r in results:
        if r.affinity_ratio is not None:
            cells.setdefault(r.shots, []).append(r.affinity_ratio)
    return {k: _mean_std(v) for k, v in sorted(cells.items())}


def _shots_header(shots: Sequence[int]) -> str:
    return " | ".join(f"{k} shot{'s' if k > 1 else ''}" for k in shots)


def accuracy_table(results: Sequence[DemoResult], by_search: bool = False) -> str:
    """Markdown: mean test accuracy (%) per method (rows) and shot count (columns), ``± std`` over several seeds."""
    summary = summarize(results, by_search)
    shots = sorted({r.shots for r in results})
    several = len({r.seed for r in results}) > 1
    lines = [f"| method | {_shots_header(shots)} |", "|---|" + "---:|" * len(shots)]
    for name, row in summary.items():
        cells = [
            "-" if k not in row else f"{row[k][0]:.1f}" + (f" ± {row[k][1]:.1f}" if several else "") for k in shots
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def affinity_ratio_table(results: Sequence[DemoResult]) -> str:
    """Markdown: XMAdapter's affinity ratio (image cache weight) and 1 - it (text cache weight) per shot count."""
    summary = summarize_affinity_ratio(results)
    if not summary:
        return ""
    shots = list(summary)
    lines = [f"| XMAdapter cache weight | {_shots_header(shots)} |", "|---|" + "---:|" * len(shots)]
    lines.append("| image cache (affinity ratio) | " + " | ".join(f"{summary[k][0]:.3f}" for k in shots) + " |")
    lines.append("| text cache (1 - ratio) | " + " | ".join(f"{1 - summary[k][0]:.3f}" for k in shots) + " |")
    return "\n".join(lines)


def calibration_table(results: Sequence[DemoResult]) -> str:
    """Markdown: the test split's ECE and NLL per method (rows) and shot count (columns), ``before → after`` the
    fitted temperature (means over seeds), then a line with zero-shot CLIP's raw and temperature-scaled ECE."""
    shots = sorted({r.shots for r in results})
    cells: dict[str, dict[int, list[DemoResult]]] = {}
    for r in results:
        cells.setdefault(r.method, {}).setdefault(r.shots, []).append(r)

    def mean(row: list[DemoResult], name: str) -> float:
        return statistics.fmean(getattr(r, name) for r in row)

    lines = [f"| method | metric | {_shots_header(shots)} |", "|---|---|" + "---:|" * len(shots)]
    for name, row in cells.items():
        for metric in ("ece", "nll"):
            values = [
                f"{mean(row[k], metric + '_before'):.3f} → {mean(row[k], metric + '_after'):.3f}" if k in row else "-"
                for k in shots
            ]
            lines.append(f"| {name} | {metric.upper()} | " + " | ".join(values) + " |")
    raw, scaled = mean(list(results), "zero_shot_ece_before"), mean(list(results), "zero_shot_ece_after")
    lines.append(
        f"\nzero-shot CLIP's test ECE: raw {raw:.3f}, with a temperature fitted on its validation logits {scaled:.3f}"
    )
    return "\n".join(lines)
