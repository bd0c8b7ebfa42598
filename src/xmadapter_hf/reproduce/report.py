"""The reproduce harness's reports: the summary over seeds with the published numbers beside it, and the files
[`~xmadapter_hf.reproduce.harness.run_protocol`] writes (CSV, JSON, Markdown, the few-shot curves), each written to a
temporary name and renamed into place."""

from __future__ import annotations

import csv
import io
import os
import statistics
import uuid
from pathlib import Path

from ..jsonsafe import dumps
from .protocols import harmonic_mean as _harmonic_mean
from .published import comparable, published_results

__all__ = ["FILES", "META_ADAPTER_RULE", "NOVEL_CLASS_RULE", "markdown_table", "summarize", "write_reports"]

#: How every method scores the novel classes of the base-to-novel protocol (the report states it).
NOVEL_CLASS_RULE = (
    "novel classes are scored by zero-shot CLIP with the same prompt templates: a cache holds base-class images "
    "only and the trained adapters never saw a novel class, so every method scores them alike"
)
#: How every method is run under Meta-Adapter's own protocol (`meta_adapter_task`; the report states it).
META_ADAPTER_RULE = (
    "each method is fitted on K images per base class of the train split (Meta-Adapter's class lists; validated on "
    "those classes by the validation rule, where Meta-Adapter's code keeps the epoch best on the test images), then "
    "given all the classes and a cache of K supports per class from the val split (ImageNet: from the train split, "
    "disjoint from the meta-training images) with no training, and scored over all the classes on K test images per "
    "novel class (ImageNet: all of them); a method without a cache term does not read the supports, and learned "
    "cache-shaped weights start again from them; the images are this library's seeded draws, not the official ones"
)
#: Output files, in the output folder.
FILES = {"csv": "results.csv", "json": "results.json", "markdown": "results.md", "plot": "few_shot_curves.png"}
_FORMAT = "xmadapter-reproduce-v1"
_CSV_FIELDS = (
    "protocol", "dataset", "evaluated_on", "method", "shots", "seed", "backbone", "accuracy", "validation_accuracy",
    "num_train", "num_test", "seconds",
)  # fmt: skip


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _published(method: str, dataset: str, shots: int, protocol: str) -> list:
    try:  # published tables: the few-shot protocol's and Meta-Adapter's (data/published.json)
        return published_results(method=method, dataset=dataset, shots=0 if method == "zero-shot" else shots,
                                 protocol=protocol)  # fmt: skip
    except (KeyError, ValueError):  # not a benchmark dataset (a class-folder tree of one's own): nothing published
        return []


def summarize(rows: list[dict], *, protocol: str, backbone: str) -> list[dict]:
    """Mean and sample std over seeds per (dataset, evaluated_on, method, shots), with published numbers beside.

    Base-to-novel's ``harmonic mean`` entry is the harmonic mean of the mean base and mean novel accuracies (as the
    papers report it); its ``std`` is that of the per-seed harmonic means.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["evaluated_on"], row["method"], row["shots"]), []).append(row)
    summary = []
    for (dataset, evaluated_on, method, shots), group in groups.items():
        mean, std = _mean_std([r["accuracy"] for r in group])
        if evaluated_on == "harmonic mean":
            base = groups[(dataset, "base", method, shots)]
            novel = groups[(dataset, "novel", method, shots)]
            mean = _harmonic_mean(_mean_std([r["accuracy"] for r in base])[0],
                                  _mean_std([r["accuracy"] for r in novel])[0])  # fmt: skip
        entry = {
            "dataset": dataset, "evaluated_on": evaluated_on, "method": method, "shots": shots,
            "mean": round(mean, 4), "std": round(std, 4), "seeds": [r["seed"] for r in group], "published": [],
        }  # fmt: skip
        for published in _published(method, dataset, shots, protocol):
            same = comparable(published, backbone=backbone, protocol=protocol)
            entry["published"].append({
                "paper": published.paper, "backbone": published.backbone, "accuracy": published.accuracy,
                "selected_on_test": published.selected_on_test, "comparable": same,
                "difference": round(mean - published.accuracy, 4) if same else None,
                "source": published.source,
            })  # fmt: skip
        summary.append(entry)
    return summary


def _search(settings: dict) -> str:
    """Which grid the cells' validation search used (as `fit` resolves `None`: `search_on_validation`)."""
    grid, scale, step = settings.get("search_grid"), settings.get("search_scale"), settings.get("search_step")
    if grid is None:
        grid = "tip-adapter-grid" if scale or step else "auto"
    if grid == "auto":
        return "auto (the library's default: backbone-adaptive log grids, docs/training.md)"
    scale = "the dataset's range, else (7, 3)" if not scale else f"range {tuple(scale)}"
    step = "the dataset's sizes, else (200, 20)" if not step else f"sizes {tuple(step)}"
    return f"{grid} (Tip-Adapter's fixed linear grid; {scale}; {step})"


def _notes(protocol: str, settings: dict, label: str) -> list[str]:
    notes = [
        f"backbone: {label} ({settings['model']}); protocol: {protocol}; validation rule: {settings['validation']}; "
        f"prompt templates: {settings['templates']}; {settings['augment_views']} augmented views per training image "
        f"(augmentation seed {settings['augment_seed']}, shared by all seeds)",
        "accuracy: top-1 % on the test split; mean ± sample std over the seeds listed",
        f"validation search: {_search(settings)}",
        "published numbers: a difference is shown only where backbone and protocol match; † = selected on the "
        "test set by its source (Tip-Adapter-F's numbers: best epoch and ImageNet's search on test)",
    ]
    if protocol == "base-to-novel":
        notes.append(f"base-to-novel: base = the first ceil(N/2) label ids (CoCoOp); {NOVEL_CLASS_RULE}; the "
                     "harmonic mean is that of the mean base and mean novel accuracies")  # fmt: skip
    if protocol == "meta-adapter":
        notes.append(f"meta-adapter (Meta-Adapter's own protocol): {META_ADAPTER_RULE}")
    if protocol == "domain-generalisation":
        notes.append("domain generalisation: adapted on ImageNet; a target is scored on ImageNet's logits at the "
                     "ImageNet ids of its classes (ImageNet-A/-R: 200 classes)")  # fmt: skip
    return notes


def _format_row(entry: dict) -> list[str]:
    ours = f"{entry['mean']:.2f} ± {entry['std']:.2f} ({len(entry['seeds'])})"
    published = "; ".join(
        f"{p['accuracy']:.2f}{'†' if p['selected_on_test'] else ''} ({p['backbone']})" for p in entry["published"]
    )
    differences = [f"{p['difference']:+.2f}" for p in entry["published"] if p["difference"] is not None]
    return [entry["dataset"], entry["evaluated_on"], entry["method"], str(entry["shots"]), ours,
            published or "—", "; ".join(differences) or "—"]  # fmt: skip


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table: ours (mean ± std (seeds)), published, difference."""
    header = ["dataset", "evaluated on", "method", "shots", "ours: mean ± std (seeds)", "published", "difference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in summary:
        lines.append("| " + " | ".join(_format_row(entry)) + " |")
    return "\n".join(lines)


def write_reports(output: Path, rows, summary, settings, notes, *, plot: bool = True) -> dict[str, str]:
    files = {}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(output / FILES["csv"], buffer.getvalue())
    files["csv"] = str(output / FILES["csv"])
    payload = {"format": _FORMAT, "settings": settings, "notes": notes, "summary": summary, "rows": rows}
    _write_atomic(output / FILES["json"], dumps(payload, indent=1, default=str) + "\n")  # never NaN (jsonsafe)
    files["json"] = str(output / FILES["json"])
    notes_text = "".join(f"- {n}\n" for n in notes)
    text = f"# {settings['protocol']} results\n\n{notes_text}\n{markdown_table(summary)}"
    _write_atomic(output / FILES["markdown"], text + "\n")
    files["markdown"] = str(output / FILES["markdown"])
    if plot and settings["protocol"] == "few-shot":
        drawn = _plot(output / FILES["plot"], summary)
        if drawn:
            files["plot"] = drawn
    return files


def _plot(path: Path, summary: list[dict]) -> str | None:
    """Few-shot curves, one panel per dataset (`plotting.plot_few_shot_panels`); `None` without matplotlib (the
    `plot` extra)."""
    from ..plotting import PlotUnavailableError, plot_few_shot_panels

    panels: dict[str, dict[str, dict[int, tuple[float, float]]]] = {}
    for entry in sorted(summary, key=lambda e: (e["dataset"], e["method"], e["shots"])):
        curves = panels.setdefault(entry["dataset"], {})
        curves.setdefault(entry["method"], {})[entry["shots"]] = (entry["mean"], entry["std"])
    try:
        return str(plot_few_shot_panels(panels, path))
    except PlotUnavailableError:
        return None
