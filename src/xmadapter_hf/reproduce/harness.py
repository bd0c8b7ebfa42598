"""`run_protocol`: a paper's protocol in one call — extract once, fit every method, evaluate, write the report.

The grid is (dataset, method, shots, seed); each point is a *cell*. Embeddings are extracted once per (backbone,
dataset, split, augmentation) into the embedding store (`data/store.py`), keyed by each image's identity
([`FeatureStore`]), so every method, shot count and seed reuses them: an image's augmented views are drawn from
``(augment_seed, index in the full split, view)`` whichever few-shot subset it is in. Each finished cell is one
JSON file, written to a temporary name and renamed into place, so a killed run continues where it stopped (a cell
that was being fitted is redone) and a run whose settings differ from those recorded in the output folder stops
instead of mixing results.

Only the public API is used: `XMAdapterForImageClassification.from_clip`, `fit` (on already extracted embeddings),
`extract_embeddings` (with ``indices=``, the positions in the full split), and for Meta-Adapter's protocol
`classes.replace_classes` and `set_cache` (what `from_pretrained(path, class_names=...)` and `build_cache` do).

This module holds `run_protocol` and its checks; the embedding store is in `features.py`, the cells (fit and score
one grid point) in `cells.py`, the summary and the report files in `report.py`. Their public names are importable
from here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..jsonsafe import dumps
from .cells import _read_cell, _Runner, _templates
from .features import FeatureStore, _digest
from .protocols import DOMAIN_GENERALISATION_TARGETS, META_ADAPTER_DATASETS, meta_adapter_task
from .readers import canonical_dataset_name, list_benchmark_datasets, read_dataset, read_image_folder
from .records import BenchmarkDataset
from .report import _FORMAT, META_ADAPTER_RULE, NOVEL_CLASS_RULE, _notes, _write_atomic, summarize, write_reports
from .report import FILES as FILES
from .report import markdown_table as markdown_table

__all__ = [
    "META_ADAPTER_RULE",
    "NOVEL_CLASS_RULE",
    "PROTOCOLS",
    "FeatureStore",
    "ReproduceError",
    "ReproduceResult",
    "backbone_label",
    "load_backbone",
    "run_protocol",
]

PROTOCOLS = ("few-shot", "base-to-novel", "domain-generalisation", "meta-adapter")
_RUN_FILE = "run.json"
_KNOWN_BACKBONES = {"clip-vit-base-patch16": "ViT-B/16", "clip-vit-base-patch32": "ViT-B/32"}
_KNOWN_BACKBONES |= {"clip-vit-large-patch14": "ViT-L/14", "clip-vit-large-patch14-336": "ViT-L/14@336px"}


class ReproduceError(ValueError):
    """A bad argument or an output folder that holds the results of another configuration."""


# ---------------------------------------------------------------- backbone


def load_backbone(spec: str):
    """``(clip, processor)`` for a Hub id or local path (transformers' CLIP), ``"demo"`` (the shipped demo CLIP), or
    ``"open_clip:ARCH/PRETRAINED"`` (the optional open_clip backend)."""
    if spec.startswith("open_clip:"):
        from .open_clip_backend import load_open_clip

        return load_open_clip(spec[len("open_clip:") :])
    from transformers import AutoModel, AutoProcessor

    if spec == "demo":
        from ..demo import load_demo_clip

        return load_demo_clip()
    return AutoModel.from_pretrained(spec).eval(), AutoProcessor.from_pretrained(spec)


def backbone_label(spec: str) -> str:
    """The backbone's name as the papers write it where known (``openai/clip-vit-base-patch16`` -> ``ViT-B/16``,
    ``open_clip:RN50/openai`` -> ``RN50``), else ``spec`` itself."""
    if spec.startswith("open_clip:"):
        return spec[len("open_clip:") :].split("/")[0]
    return _KNOWN_BACKBONES.get(Path(spec.rstrip("/")).name, spec)


@dataclass
class ReproduceResult:
    """What [`run_protocol`] did and wrote.

    Attributes:
        rows (`list[dict]`): one per (cell, evaluated set): the CSV's rows.
        summary (`list[dict]`): mean and std over seeds per (dataset, evaluated_on, method, shots), with the
            published number beside it where there is one.
        files (`dict[str, str]`): the written files (``csv``, ``json``, ``markdown``, and ``plot`` when drawn).
        cells_run (`int`), cells_skipped (`int`): cells fitted now, and cells found finished on disk.
        images_embedded (`int`): images the backbone embedded in this call.
        notes (`list[str]`): what the report states about the run.
    """

    rows: list[dict]
    summary: list[dict]
    files: dict[str, str]
    cells_run: int
    cells_skipped: int
    images_embedded: int
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- run


def _benchmark_name(spec: str) -> str | None:
    """The canonical name of the benchmark dataset ``spec`` names (any alias), else `None`."""
    try:
        name = canonical_dataset_name(spec)
    except (KeyError, ValueError):
        return None
    return name if name in list_benchmark_datasets() else None


def _read(spec: str, root: Path) -> BenchmarkDataset:
    """A benchmark dataset by name (CoOp's layout under ``root``), else a class-folder tree ``root/spec``."""
    name = _benchmark_name(spec)
    if name is not None:
        return read_dataset(name, root)
    folder = root / spec
    if folder.is_dir():
        return read_image_folder(folder)
    raise ReproduceError(
        f"dataset {spec!r} is neither a benchmark dataset ({', '.join(list_benchmark_datasets())}) nor a class-folder "
        f"tree {str(folder)!r} (<split>/<class>/<image>)"
    )


def _check_grid(datasets, methods, shots, seeds, protocol) -> None:
    from .. import registered_methods

    if protocol not in PROTOCOLS:
        raise ReproduceError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    for what, values in (("datasets", datasets), ("methods", methods), ("shots", shots), ("seeds", seeds)):
        if not values:
            raise ReproduceError(f"no {what} given")
        if len(set(values)) != len(values):
            raise ReproduceError(f"{what} repeat a value: {list(values)}")
    unknown = [m for m in methods if m not in registered_methods()]
    if unknown:
        raise ReproduceError(f"unknown methods {unknown}; registered: {', '.join(registered_methods())}")
    bad = [k for k in shots if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if bad:
        raise ReproduceError(f"shots must be positive integers; got {bad}")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ReproduceError(f"seeds must be integers; got {list(seeds)}")


_META_ADAPTER_FLAGS = {
    "meta_adapter_official": "--meta-adapter-unofficial",
    "meta_adapter_require_all_classes": "--meta-adapter-allow-missing-classes",
}


def _check_meta_adapter(protocol: str, datasets: Sequence[str], settings: dict[str, bool]) -> None:
    """The meta-adapter settings are booleans, set off the defaults only for that protocol, whose datasets must be
    Meta-Adapter's (checked on the names, before any dataset is read)."""
    for name, value in settings.items():
        if not isinstance(value, bool):
            raise ReproduceError(f"{name} must be True or False; got {value!r}")
    off = [f"{name}=False ({_META_ADAPTER_FLAGS[name]})" for name, value in settings.items() if not value]
    if off and protocol != "meta-adapter":
        raise ReproduceError(f"{' and '.join(off)}: for the meta-adapter protocol only; got protocol {protocol!r}")
    uncovered = [spec for spec in datasets if _benchmark_name(spec) not in META_ADAPTER_DATASETS]
    if protocol == "meta-adapter" and uncovered:
        raise ReproduceError(f"the meta-adapter protocol covers Meta-Adapter's datasets only "
                             f"({', '.join(META_ADAPTER_DATASETS)}); got {', '.join(uncovered)}")  # fmt: skip


def _meta_adapter_notes(datasets, shots, seed: int, *, meta_adapter_official: bool,
                        meta_adapter_require_all_classes: bool) -> list[str]:  # fmt: skip
    """The report's notes on how each dataset's tasks depart from the plain protocol (`MetaAdapterTask.notes`), from
    one task per (dataset, K): a dataset whose classes do not match Meta-Adapter's lists, or that holds none of its
    base or none of its novel classes (a partial dataset), stops the run here, before the backbone is loaded."""
    notes = [] if meta_adapter_official else [
        "meta-adapter: the official readers' per-dataset quirks are not reproduced (meta_adapter_official=False): "
        "base and novel filters on every dataset, K supports per class"
    ]  # fmt: skip
    for dataset in datasets:
        found: list[str] = []
        for k in shots:
            try:
                task = meta_adapter_task(dataset, k, seed, official=meta_adapter_official,
                                         require_all_classes=meta_adapter_require_all_classes)  # fmt: skip
            except ValueError as error:
                raise ReproduceError(
                    f"{dataset.name}: {error} (meta_adapter_require_all_classes=False, "
                    f"{_META_ADAPTER_FLAGS['meta_adapter_require_all_classes']}, accepts a dataset that lacks some "
                    "of the listed classes)"
                ) from error
            empty = [kind for kind, split in (("base", task.train), ("novel", task.test)) if not len(split)]
            if empty:
                raise ReproduceError(
                    f"{dataset.name} holds no {' and no '.join(empty)} class of Meta-Adapter's lists: the protocol "
                    "meta-trains on base classes and tests on novel ones"
                )
            found += [note for note in task.notes if note not in found]
        notes += [f"{dataset.name}: {note}" for note in found]
    return notes


def _check_run_file(output: Path, settings: dict, overwrite: bool) -> None:
    run_file = output / _RUN_FILE
    if run_file.exists() and not overwrite:
        try:
            recorded = json.loads(run_file.read_text()).get("settings", {})
        except (json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded != settings:
            changed = sorted(k for k in set(settings) | set(recorded or {}) if (recorded or {}).get(k) != settings[k]
                             ) if isinstance(recorded, dict) else ["(unreadable run.json)"]  # fmt: skip
            raise ReproduceError(
                f"{str(output)!r} holds results of another configuration (differs in: {', '.join(changed)}); use "
                "another output folder, or overwrite=True (--overwrite) to discard them"
            )
    if overwrite and (output / "cells").is_dir():
        import shutil

        shutil.rmtree(output / "cells")
    _write_atomic(run_file, dumps({"format": _FORMAT, "settings": settings}, indent=2) + "\n")


def run_protocol(
    data_root,
    datasets: Sequence[str],
    methods: Sequence[str],
    *,
    output_dir,
    model: str = "demo",
    protocol: str = "few-shot",
    shots: Sequence[int] = (1, 2, 4, 8, 16),
    seeds: Sequence[int] = (1, 2, 3),
    validation: str = "coop",
    templates: str = "tip-adapter",
    augment_views: int = 10,
    augment_seed: int = 0,
    epochs: int | None = None,
    search_grid: str | None = None,
    search_scale: tuple[float, float] | None = None,
    search_step: tuple[int, int] | None = None,
    meta_adapter_official: bool = True,
    meta_adapter_require_all_classes: bool = True,
    backbone_name: str | None = None,
    feature_dir=None,
    backbone=None,
    batch_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
    overwrite: bool = False,
    plot: bool = True,
    on_cell: Callable[[dict, list[dict], bool], None] | None = None,
    show_progress: bool = False,
    num_workers: int | None = None,
) -> ReproduceResult:
    """Runs ``protocol`` over (datasets x methods x shots x seeds) and writes CSV, JSON, Markdown and a plot.

    Args:
        data_root: the folder holding the datasets (CoOp's layouts; see docs/reproduce.md), or class-folder trees.
        datasets (`Sequence[str]`): benchmark names (any alias) or names of class-folder trees under ``data_root``.
            Domain generalisation: ``imagenet`` first, then the targets (default: every ImageNet variant).
            Meta-Adapter's protocol: its datasets only (`META_ADAPTER_DATASETS`).
        methods (`Sequence[str]`): registered method names (any method registered with `register_method` runs).
        output_dir: where the cells, the reports and (unless ``feature_dir``) the embeddings go.
        model (`str`, *optional*, defaults to `"demo"`): a CLIP Hub id or path, ``"demo"``, or
            ``"open_clip:ARCH/PRETRAINED"``. Recorded in the settings; ``backbone`` overrides what is loaded.
        protocol (`str`): ``"few-shot"``, ``"base-to-novel"``, ``"domain-generalisation"`` or ``"meta-adapter"``
            (Meta-Adapter's own, [`META_ADAPTER_RULE`]).
        shots, seeds: the grid (CoOp's seeds are 1, 2, 3).
        validation (`str`): ``"coop"`` (min(K, 4) per class) or ``"tip-adapter"`` (the whole val split).
        templates (`str`): prompt template source, ``"tip-adapter"``, ``"clip"`` or ``"coop"``.
        augment_views, augment_seed: views per training image and the seed of their draws (fixed across seeds,
            so that the views are extracted once and shared by all cells).
        epochs, search_grid, search_scale, search_step: given to `fit` (`None`: the library's defaults: the method's
            recipe; the backbone-adaptive `"auto"` search, or with a scale or step Tip-Adapter's grid over the
            dataset's range).
        meta_adapter_official, meta_adapter_require_all_classes (`bool`): `meta_adapter_task`'s ``official`` (the
            official readers' per-dataset quirks) and ``require_all_classes`` (every class of Meta-Adapter's lists
            in the dataset); the meta-adapter protocol only, where they are recorded in the settings.
        backbone_name (`str`, *optional*): the backbone's name for the report and the published comparison
            (default: [`backbone_label`] of ``model``).
        feature_dir: the embedding store's folder (default ``output_dir/features``; `data/store.py`): share it
            between output folders, and between processes running at once.
        backbone (`tuple`, *optional*): an already loaded ``(clip, processor)``.
        overwrite (`bool`): discard the cells of an output folder written with other settings.
        plot (`bool`): draw the few-shot curves when matplotlib is installed.
        on_cell (`Callable`, *optional*): called after each cell with ``(cell, rows, skipped)``.
        num_workers (`int`, *optional*): worker processes that prepare the images for the backbone
            (`extract_embeddings`' ``num_workers``; default: 0 for a small job, else one per core).

    Returns:
        [`ReproduceResult`]
    """
    datasets, methods, shots, seeds = list(datasets), list(methods), list(shots), list(seeds)
    _check_grid(datasets, methods, shots, seeds, protocol)
    from ..training.search import resolve_search_grid

    resolve_search_grid(search_grid, search_scale, search_step)  # a bad choice fails here, before any extraction
    meta_adapter = {"meta_adapter_official": meta_adapter_official,
                    "meta_adapter_require_all_classes": meta_adapter_require_all_classes}  # fmt: skip
    _check_meta_adapter(protocol, datasets, meta_adapter)
    root = Path(data_root)
    if not root.is_dir():
        raise ReproduceError(f"data root {str(root)!r} is not a folder")
    read = [_read(spec, root) for spec in datasets]
    targets = []
    if protocol == "domain-generalisation":
        if read[0].name != "imagenet":
            raise ReproduceError(f"domain generalisation adapts on imagenet: list it first; got {datasets[0]!r}")
        targets = read[1:] or [read_dataset(name, root) for name in DOMAIN_GENERALISATION_TARGETS]
        bad = [t.name for t in targets if t.name not in DOMAIN_GENERALISATION_TARGETS]
        if bad:
            raise ReproduceError(f"domain-generalisation targets must be {DOMAIN_GENERALISATION_TARGETS}; got {bad}")
        read = read[:1]
    dataset_notes = _meta_adapter_notes(read, shots, seeds[0], **meta_adapter) if protocol == "meta-adapter" else []
    clip, processor = backbone if backbone is not None else load_backbone(model)
    label = backbone_name or backbone_label(model)
    output = Path(output_dir)
    store = FeatureStore(
        feature_dir if feature_dir is not None else output / "features", clip, processor,
        augment_seed=augment_seed, batch_size=batch_size, autocast_dtype=autocast_dtype, show_progress=show_progress,
        num_workers=num_workers,
    )  # fmt: skip
    from .. import __version__

    settings = {
        "protocol": protocol, "model": model, "backbone": label, "backbone_key": store.backbone_key,
        "validation": validation, "templates": templates, "augment_views": augment_views,
        "augment_seed": augment_seed, "epochs": epochs, "search_grid": search_grid,
        "search_scale": list(search_scale) if search_scale else None,
        "search_step": list(search_step) if search_step else None, "targets": [t.name for t in targets],
        "xmadapter_hf": __version__,
    }  # fmt: skip
    if protocol == "meta-adapter":  # recorded for this protocol only: the other protocols' folders stay valid
        settings |= meta_adapter
    _check_run_file(output, settings, overwrite)
    settings_key = _digest(settings)
    runner = _Runner(clip, processor, store, settings, label)
    rows, run, skipped = [], 0, 0
    for dataset in read:
        for method in methods:
            for k in shots:
                for seed in seeds:
                    cell = {"protocol": protocol, "dataset": dataset.name, "method": method, "shots": k, "seed": seed}
                    path = output / "cells" / protocol / dataset.name / method / f"shots{k}-seed{seed}.json"
                    found = _read_cell(path, settings_key)
                    if found is not None:
                        cell_rows, skipped = found, skipped + 1
                    else:
                        cell_rows = runner.run(protocol, dataset, targets, method, k, seed)
                        payload = {"settings_key": settings_key, "cell": cell, "rows": cell_rows}
                        _write_atomic(path, dumps(payload, indent=1) + "\n")  # never NaN (jsonsafe)
                        run += 1
                    rows.extend(cell_rows)
                    if on_cell is not None:
                        on_cell(cell, cell_rows, found is not None)
    notes = _notes(protocol, settings, label) + dataset_notes
    plain = [d.name for d in [*read, *targets] if _templates(d.name, templates) == ["a photo of a {}."]]
    if plain:
        notes.append(f"{', '.join(plain)}: no shipped {templates} templates; prompt 'a photo of a {{}}.'")
    summary = summarize(rows, protocol=protocol, backbone=label)
    files = write_reports(output, rows, summary, settings, notes, plot=plot)
    return ReproduceResult(rows, summary, files, run, skipped, store.images_embedded, notes)
