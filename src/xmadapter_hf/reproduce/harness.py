"""`run_protocol`: a paper's protocol in one call — extract once, fit every method, evaluate, write the report.

The grid is (dataset, method, shots, seed); each point is a *cell*. Embeddings are extracted once per (backbone,
dataset, split, augmentation) and kept on disk keyed by each image's identity ([`FeatureStore`]), so every method,
shot count and seed reuses them: an image's augmented views are drawn from ``(augment_seed, index in the full
split, view)`` whichever few-shot subset it is in. Each finished cell is one JSON file, written to a temporary name
and renamed into place, so a killed run continues where it stopped (a cell that was being fitted is redone) and a
run whose settings differ from those recorded in the output folder stops instead of mixing results.

Only the public API is used: `XMAdapterForImageClassification.from_clip`, `fit` (on already extracted embeddings),
`extract_embeddings` (with ``indices=``, the positions in the full split), and for Meta-Adapter's protocol
`classes.replace_classes` and `set_cache` (what `from_pretrained(path, class_names=...)` and `build_cache` do).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .protocols import (
    DOMAIN_GENERALISATION_TARGETS,
    META_ADAPTER_DATASETS,
    base_to_novel_task,
    domain_generalisation_task,
    few_shot_task,
    meta_adapter_task,
)
from .protocols import harmonic_mean as _harmonic_mean
from .published import comparable, published_results
from .readers import canonical_dataset_name, list_benchmark_datasets, read_dataset, read_image_folder
from .records import BenchmarkDataset, ImageSplit
from .templates import prompt_templates

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
_RUN_FILE = "run.json"
_FORMAT = "xmadapter-reproduce-v1"
_CSV_FIELDS = (
    "protocol", "dataset", "evaluated_on", "method", "shots", "seed", "backbone", "accuracy", "validation_accuracy",
    "num_train", "num_test", "seconds",
)  # fmt: skip
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


def _processor_settings(processor) -> str:
    image_processor = getattr(processor, "image_processor", processor)
    to_dict = getattr(image_processor, "to_dict", None)
    settings = to_dict() if callable(to_dict) else repr(image_processor)
    return json.dumps(settings, sort_keys=True, default=str)


# ---------------------------------------------------------------- features


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """Raw image embeddings on disk, keyed by (backbone, dataset, split, views, augmentation seed) and image id.

    `embeddings(dataset, split, views)` returns the `(max(views, 1), M, C)` embeddings of ``split``'s records in
    their order (repeats included), running the backbone only on images it has never embedded under that key. An
    image's views are drawn from ``(augment_seed, its index in the full split, view)``, so they are the same in
    every few-shot subset. New embeddings are written as one safetensors shard per call (temporary name, then
    renamed), so an interrupted run keeps what finished.

    Attributes:
        images_embedded (`int`): images the backbone embedded through this store (each counted once per call).
    """

    def __init__(self, root, clip, processor, *, augment_seed: int = 0, batch_size: int = 32,
                 autocast_dtype=None, show_progress: bool = False):  # fmt: skip
        self.root = Path(root)
        self.clip, self.processor = clip, processor
        self.augment_seed, self.batch_size = augment_seed, batch_size
        self.autocast_dtype, self.show_progress = autocast_dtype, show_progress
        from ..data.extraction import backbone_weights_fingerprint

        self.backbone_key = _digest([backbone_weights_fingerprint(clip), _processor_settings(processor)])
        self.images_embedded = 0
        self._loaded: dict[Path, dict[int, torch.Tensor]] = {}
        self._images: dict[tuple[str, str], object] = {}  # (dataset, split) -> its `datasets.Dataset`, built once

    def folder(self, dataset: BenchmarkDataset, split: str, views: int) -> Path:
        full = dataset.split(split)
        data_key = _digest([dataset.name, dataset.source, split, full.image_ids])
        store = f"views{views}-seed{self.augment_seed}"
        return self.root / self.backbone_key / f"{dataset.name}-{split}-{data_key}" / store

    def _load(self, folder: Path) -> dict[int, torch.Tensor]:
        if folder not in self._loaded:
            from safetensors.torch import load_file

            table: dict[int, torch.Tensor] = {}
            for shard in sorted(folder.glob("shard-*.safetensors")) if folder.is_dir() else []:
                tensors = load_file(shard)
                for position, image_id in enumerate(tensors["image_ids"].tolist()):
                    table[image_id] = tensors["embeds"][:, position]
            self._loaded[folder] = table
        return self._loaded[folder]

    def embeddings(self, dataset: BenchmarkDataset, split: ImageSplit, views: int) -> torch.Tensor:
        from safetensors.torch import save_file

        from .. import extract_embeddings

        full = dataset.split(split.name)
        folder = self.folder(dataset, split.name, views)
        table = self._load(folder)
        missing: dict[int, int] = {}
        for record in split:
            if record.image_id not in table and record.image_id not in missing:
                if full.records[record.index].image_id != record.image_id:
                    raise ReproduceError(f"{dataset.name} {split.name}: record {record.path} is not at its index.")
                missing[record.image_id] = record.index
        if missing:
            indices = sorted(missing.values())
            images = self._images.get((dataset.name, split.name))
            if images is None:  # each seed's few-shot draw asks for new images of the same split
                images = self._images[(dataset.name, split.name)] = full.to_hf()
            extracted = extract_embeddings(
                self.clip, self.processor, images, augment_views=views, seed=self.augment_seed,
                batch_size=self.batch_size, indices=indices, autocast_dtype=self.autocast_dtype,
                show_progress=self.show_progress,
            )  # fmt: skip
            self.images_embedded += len(indices)
            ids = torch.tensor([full.records[i].image_id for i in indices], dtype=torch.int64)
            embeds = extracted.embeds.float().contiguous()
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / f".tmp-{uuid.uuid4().hex}"
            save_file({"image_ids": ids, "embeds": embeds}, str(temporary))
            os.replace(temporary, folder / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.safetensors")
            for position, image_id in enumerate(ids.tolist()):
                table[image_id] = embeds[:, position]
        return torch.stack([table[record.image_id] for record in split], dim=1)


# ---------------------------------------------------------------- cells


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


def _accuracy(logits: torch.Tensor, labels: Sequence[int]) -> float:
    return 100.0 * float((logits.argmax(-1) == torch.tensor(list(labels))).float().mean())


@torch.no_grad()
def _logits(model, embeds: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    device = model.class_embeds.device
    return torch.cat(
        [model(image_embeds=embeds[s : s + batch_size].to(device)).logits.float().cpu()
         for s in range(0, embeds.shape[0], batch_size)]
    )  # fmt: skip


def _templates(dataset: str, source: str) -> list[str]:
    try:
        return list(prompt_templates(dataset, source))
    except (KeyError, ValueError):
        return ["a photo of a {}."]


def _search_dataset(name: str) -> str | None:
    from ..data.defaults import list_datasets

    return name if name in list_datasets() else None


class _Runner:
    def __init__(self, clip, processor, store: FeatureStore, settings: dict, backbone: str):
        self.clip, self.processor, self.store = clip, processor, store
        self.settings, self.backbone = settings, backbone
        self._novel: dict[str, float] = {}  # dataset -> zero-shot accuracy on its novel classes, alike in every cell

    def fitted(self, dataset: BenchmarkDataset, task, method: str, seed: int):
        from .. import ExtractedEmbeddings, XMAdapterForImageClassification, fit

        store, settings = self.store, self.settings
        train = store.embeddings(dataset, task.train, settings["augment_views"])
        val = store.embeddings(dataset, task.val, 0)[0]
        model = XMAdapterForImageClassification.from_clip(
            self.clip, list(task.class_names), processor=self.processor,
            templates=_templates(dataset.name, settings["templates"]), method=method,
        )  # fmt: skip
        scale = settings["search_scale"]
        model, report = fit(
            model, ExtractedEmbeddings(train, torch.tensor(task.train.labels)), val,
            validation_labels=torch.tensor(task.val.labels), seed=seed, epochs=settings["epochs"],
            search_scale=tuple(scale) if scale else None, search_step=tuple(settings["search_step"]),
            dataset_name=_search_dataset(dataset.name), show_progress=False,
        )  # fmt: skip
        return model, report

    def test(self, dataset: BenchmarkDataset, split: ImageSplit) -> torch.Tensor:
        return self.store.embeddings(dataset, split, 0)[0]

    def row(self, protocol, dataset, evaluated_on, method, shots, seed, accuracy, report, num_train, num_test, t0):
        return {
            "protocol": protocol, "dataset": dataset, "evaluated_on": evaluated_on, "method": method, "shots": shots,
            "seed": seed, "backbone": self.backbone, "accuracy": round(accuracy, 4),
            "validation_accuracy": None if report is None or report.accuracy is None
            else round(100.0 * report.accuracy, 4),
            "num_train": num_train, "num_test": num_test, "seconds": round(time.perf_counter() - t0, 3),
        }  # fmt: skip

    def few_shot(self, dataset, method, shots, seed) -> list[dict]:
        t0 = time.perf_counter()
        task = few_shot_task(dataset, shots, seed, validation=self.settings["validation"])
        model, report = self.fitted(dataset, task, method, seed)
        accuracy = _accuracy(_logits(model, self.test(dataset, task.test)), task.test.labels)
        n_train, n_test = len(task.train), len(task.test)
        return [self.row("few-shot", dataset.name, "test", method, shots, seed, accuracy, report, n_train, n_test, t0)]

    def base_to_novel(self, dataset, method, shots, seed) -> list[dict]:
        from .. import XMAdapterForImageClassification

        t0 = time.perf_counter()
        task = base_to_novel_task(few_shot_task(dataset, shots, seed, validation=self.settings["validation"]))
        model, report = self.fitted(dataset, task.base, method, seed)
        base = _accuracy(_logits(model, self.test(dataset, task.base.test)), task.base.test.labels)
        novel = self._novel.get(dataset.name)
        if novel is None:  # the novel classes and their test images depend on the dataset alone
            novel_model = XMAdapterForImageClassification.from_clip(
                self.clip, list(task.novel.class_names), processor=self.processor,
                templates=_templates(dataset.name, self.settings["templates"]), method="zero-shot",
            )  # fmt: skip
            novel = _accuracy(_logits(novel_model, self.test(dataset, task.novel.test)), task.novel.test.labels)
            self._novel[dataset.name] = novel
        n_train = len(task.base.train)
        return [
            self.row("base-to-novel", dataset.name, "base", method, shots, seed, base, report, n_train,
                     len(task.base.test), t0),
            self.row("base-to-novel", dataset.name, "novel", method, shots, seed, novel, None, 0,
                     len(task.novel.test), t0),
            self.row("base-to-novel", dataset.name, "harmonic mean", method, shots, seed,
                     _harmonic_mean(base, novel), None, n_train, len(task.base.test) + len(task.novel.test), t0),
        ]  # fmt: skip

    def meta_adapter(self, dataset, method, shots, seed) -> list[dict]:
        from ..classes import replace_classes

        t0 = time.perf_counter()
        settings = self.settings
        task = meta_adapter_task(dataset, shots, seed, official=settings["meta_adapter_official"],
                                 require_all_classes=settings["meta_adapter_require_all_classes"])  # fmt: skip
        # Fit as a few-shot task on the meta-training classes (the base classes, or all where the official reader
        # trains on all): its images are Meta-Adapter's, its validation images the harness's rule on those classes.
        trained = sorted(set(task.train.labels))
        few_shot = few_shot_task(dataset, shots, seed, validation=settings["validation"]).restrict_classes(trained)
        model, report = self.fitted(dataset, replace(few_shot, train=task.train.restrict_classes(trained)), method,
                                    seed)  # fmt: skip
        # Online, no training: all the classes, and a cache of their supports (keys: the mean of the views, as `fit`)
        replace_classes(model, list(task.class_names))
        support = self.store.embeddings(dataset, task.support, settings["augment_views"]).mean(dim=0)
        model.set_cache(support, torch.tensor(task.support.labels))
        accuracy = _accuracy(_logits(model, self.test(dataset, task.test)), task.test.labels)
        novel = set(task.test.labels) <= set(task.novel_label_ids)  # official OxfordPets tests every class
        return [self.row("meta-adapter", dataset.name, "novel (all classes)" if novel else "all classes", method,
                         shots, seed, accuracy, report, len(task.train), len(task.test), t0)]  # fmt: skip

    def domain_generalisation(self, source, targets, method, shots, seed) -> list[dict]:
        t0 = time.perf_counter()
        task = few_shot_task(source, shots, seed, validation=self.settings["validation"])
        model, report = self.fitted(source, task, method, seed)
        n_train = len(task.train)
        accuracy = _accuracy(_logits(model, self.test(source, task.test)), task.test.labels)
        rows = [self.row("domain-generalisation", source.name, source.name, method, shots, seed, accuracy, report,
                         n_train, len(task.test), t0)]  # fmt: skip
        for target in targets:
            dg = domain_generalisation_task(source, target)
            logits = _logits(model, self.test(target, dg.test))[:, list(dg.source_label_ids)]
            rows.append(self.row("domain-generalisation", source.name, target.name, method, shots, seed,
                                 _accuracy(logits, dg.test.labels), report, n_train, len(dg.test), t0))  # fmt: skip
        return rows


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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


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
    _write_atomic(run_file, json.dumps({"format": _FORMAT, "settings": settings}, indent=2) + "\n")


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
    search_scale: tuple[float, float] | None = None,
    search_step: tuple[int, int] = (200, 20),
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
        epochs, search_scale, search_step: given to `fit` (defaults: the method's recipe, the dataset's range).
        meta_adapter_official, meta_adapter_require_all_classes (`bool`): `meta_adapter_task`'s ``official`` (the
            official readers' per-dataset quirks) and ``require_all_classes`` (every class of Meta-Adapter's lists
            in the dataset); the meta-adapter protocol only, where they are recorded in the settings.
        backbone_name (`str`, *optional*): the backbone's name for the report and the published comparison
            (default: [`backbone_label`] of ``model``).
        feature_dir: the embedding store (default ``output_dir/features``); share it between output folders.
        backbone (`tuple`, *optional*): an already loaded ``(clip, processor)``.
        overwrite (`bool`): discard the cells of an output folder written with other settings.
        plot (`bool`): draw the few-shot curves when matplotlib is installed.
        on_cell (`Callable`, *optional*): called after each cell with ``(cell, rows, skipped)``.

    Returns:
        [`ReproduceResult`]
    """
    datasets, methods, shots, seeds = list(datasets), list(methods), list(shots), list(seeds)
    _check_grid(datasets, methods, shots, seeds, protocol)
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
    )  # fmt: skip
    from .. import __version__

    settings = {
        "protocol": protocol, "model": model, "backbone": label, "backbone_key": store.backbone_key,
        "validation": validation, "templates": templates, "augment_views": augment_views,
        "augment_seed": augment_seed, "epochs": epochs, "search_scale": list(search_scale) if search_scale else None,
        "search_step": list(search_step), "targets": [t.name for t in targets], "xmadapter_hf": __version__,
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
                        if protocol == "few-shot":
                            cell_rows = runner.few_shot(dataset, method, k, seed)
                        elif protocol == "base-to-novel":
                            cell_rows = runner.base_to_novel(dataset, method, k, seed)
                        elif protocol == "meta-adapter":
                            cell_rows = runner.meta_adapter(dataset, method, k, seed)
                        else:
                            cell_rows = runner.domain_generalisation(dataset, targets, method, k, seed)
                        payload = {"settings_key": settings_key, "cell": cell, "rows": cell_rows}
                        _write_atomic(path, json.dumps(payload, indent=1) + "\n")
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


def _read_cell(path: Path, settings_key: str) -> list[dict] | None:
    """A finished cell's rows; `None` when absent, unreadable (half-written) or of other settings (then redone)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(payload, dict) or payload.get("settings_key") != settings_key:
        return None
    rows = payload.get("rows")
    return rows if isinstance(rows, list) and rows else None


# ---------------------------------------------------------------- reports


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


def _notes(protocol: str, settings: dict, label: str) -> list[str]:
    notes = [
        f"backbone: {label} ({settings['model']}); protocol: {protocol}; validation rule: {settings['validation']}; "
        f"prompt templates: {settings['templates']}; {settings['augment_views']} augmented views per training image "
        f"(augmentation seed {settings['augment_seed']}, shared by all seeds)",
        "accuracy: top-1 % on the test split; mean ± sample std over the seeds listed",
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
    _write_atomic(output / FILES["json"], json.dumps(payload, indent=1, default=str) + "\n")
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
