"""The cells of the reproduce harness: one (dataset, method, shots, seed) point of a protocol, fitted and scored.

`_Runner` fits each method on the embeddings of a [`~xmadapter_hf.reproduce.features.FeatureStore`] with the public
API (`from_clip`, `fit`, and for Meta-Adapter's protocol `classes.replace_classes` and `set_cache`), scores it on the
test split and returns the cell's rows; `_read_cell` reads a finished cell back. `harness.run_protocol` drives them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from .features import FeatureStore
from .protocols import base_to_novel_task, domain_generalisation_task, few_shot_task, meta_adapter_task
from .protocols import harmonic_mean as _harmonic_mean
from .records import BenchmarkDataset, ImageSplit
from .templates import prompt_templates

__all__: list[str] = []  # the harness's internals: `run_protocol` is the public entry point


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

    def run(self, protocol: str, dataset, targets, method: str, shots: int, seed: int) -> list[dict]:
        """The rows of one cell of ``protocol`` (``targets``: domain generalisation's target datasets)."""
        if protocol == "few-shot":
            return self.few_shot(dataset, method, shots, seed)
        if protocol == "base-to-novel":
            return self.base_to_novel(dataset, method, shots, seed)
        if protocol == "meta-adapter":
            return self.meta_adapter(dataset, method, shots, seed)
        return self.domain_generalisation(dataset, targets, method, shots, seed)

    def fitted(self, dataset: BenchmarkDataset, task, method: str, seed: int):
        from .. import ExtractedEmbeddings, XMAdapterForImageClassification, fit

        store, settings = self.store, self.settings
        train = store.embeddings(dataset, task.train, settings["augment_views"])
        val = store.embeddings(dataset, task.val, 0)[0]
        model = XMAdapterForImageClassification.from_clip(
            self.clip, list(task.class_names), processor=self.processor,
            templates=_templates(dataset.name, settings["templates"]), method=method,
        )  # fmt: skip
        scale, step = settings["search_scale"], settings["search_step"]
        model, report = fit(
            model, ExtractedEmbeddings(train, torch.tensor(task.train.labels)), val,
            validation_labels=torch.tensor(task.val.labels), seed=seed, epochs=settings["epochs"],
            search_grid=settings.get("search_grid"), search_scale=tuple(scale) if scale else None,
            search_step=tuple(step) if step else None,
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
