"""`method="auto"`: fit every candidate method from one extraction of the images and keep the one with the best
validation accuracy (what [`fit`] does for a model built with `method="auto"`; docs/training.md).

1. the images go through the backbone once: the augmented views of the training images (`augment_views`, default
   the dataset's or 10, as a single-method fit) and the plain view of the validation images;
2. every candidate is built on the model's backbone, class embeddings and config (with its own `method`) and fitted
   by `fit` from those embeddings, with the same arguments and seed;
3. the rule (`SELECTION_RULE`): the highest validation accuracy, counted as validation images classified correctly;
   a tie goes to the candidate listed first (the default list, `selection.AUTO_CANDIDATES`, runs from zero-shot CLIP
   through the training-free methods to the longest training recipe). Nothing else counts: the validation NLL is
   reported, not used, and no test split is seen;
4. the model becomes the chosen candidate (its method, cache, buffers and config, `method` included), and
   `config.method_selection` records the rule and the table.

A candidate whose fit refuses the data with a `ValueError` (GDA on 1 shot without augmented views, a config value
the method does not allow, a training run that diverged) is skipped; the table gives the reason. The model is
changed only at the end, when a candidate was chosen: until then it stays the pending placeholder.
"""

from __future__ import annotations

import copy
import time

import torch
from tqdm.auto import tqdm

from ..methods import registered_methods
from ..selection import AUTO_CANDIDATES, is_pending

__all__ = ["SELECTION_RULE", "check_candidates", "fit_auto", "selection_lines"]

SELECTION_RULE = (
    "the highest validation accuracy (validation images classified correctly); a tie goes to the candidate listed "
    "first"
)


def check_candidates(candidates) -> list[str]:
    """The candidate methods, in the order of the tie rule: ``candidates`` (registered method names, no repeats), or
    `AUTO_CANDIDATES` when `None`. `TypeError`/`ValueError` naming the registered methods otherwise."""
    if candidates is None:
        return list(AUTO_CANDIDATES)
    if isinstance(candidates, str) or not all(isinstance(name, str) for name in candidates):
        raise TypeError(f"`candidates` must be a list of method names; got {candidates!r:.80}.")
    names = list(candidates)
    known = registered_methods()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        what = f"unknown: {', '.join(map(repr, unknown))}" if unknown else "got none"
        raise ValueError(f"`candidates` must name registered methods ({', '.join(known)}); {what}.")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"`candidates` names {', '.join(map(repr, repeated))} more than once.")
    return names


def fit_auto(model, train_dataset, validation_dataset, candidates, dataset_name, show_progress, extraction, options):
    """[`fit`] for a model built with `method="auto"` (see the module docstring): ``extraction`` holds `fit`'s
    extraction arguments, ``options`` every other argument, given to each candidate's `fit` as they are."""
    from ..data.extraction import ExtractedEmbeddings
    from .fit import extract_once, fit
    from .search import resolve_search_grid

    if not is_pending(model):
        raise ValueError(
            f"`candidates` chooses among methods for a model built with method='auto'; this model's method is "
            f"{model.config.method!r}. Build it with `from_clip(..., method='auto')`."
        )
    names = check_candidates(candidates)
    if validation_dataset is None:
        raise ValueError(
            "method='auto' chooses the method on a validation split: pass `validation_dataset` (images, or raw "
            "embeddings with `validation_labels`)."
        )
    if isinstance(validation_dataset, torch.Tensor) and extraction["validation_labels"] is None:
        raise ValueError("Pass the validation labels with validation embeddings: (M,) integers.")
    embeddings_only = isinstance(train_dataset, ExtractedEmbeddings) and isinstance(validation_dataset, torch.Tensor)
    if model.processor is None and not embeddings_only:
        raise ValueError("`fit` reads images with the model's processor: build the model with `from_clip`.")
    # arguments that every candidate would refuse alike: refused here, before any candidate could be skipped for them
    resolve_search_grid(options["search_grid"], options["search_scale"], options["search_step"], dataset_name)
    augment_views, seed = extraction.pop("augment_views"), extraction.pop("seed")
    if augment_views is None:  # a single-method fit's default (every shipped recipe trains on augmented views)
        from ..data.defaults import dataset_defaults

        augment_views = dataset_defaults(dataset_name).get("augment_views", 10) if dataset_name else 10

    # ---- 1. the one extraction
    started = time.perf_counter()
    labels = extraction.pop("validation_labels")
    common = dict(extraction, show_progress=show_progress)
    views, val_embeds, val_labels = extract_once(
        model, train_dataset, validation_dataset, labels, augment_views, seed, common
    )
    extraction_seconds = time.perf_counter() - started

    # ---- 2, 3. every candidate from those embeddings; only the best so far is kept in memory
    rows, best = [], None
    for name in tqdm(names, desc="auto", unit="method", disable=not show_progress):
        started = time.perf_counter()
        try:
            candidate = _candidate(model, name)
            candidate, report = fit(
                candidate, views, val_embeds, validation_labels=val_labels, seed=seed, dataset_name=dataset_name,
                show_progress=show_progress, **options,
            )  # fmt: skip
        except ValueError as error:  # the method refuses this data or these settings: skipped, with its reason
            rows.append(dict(method=name, status="skipped", reason=str(error), chosen=False,
                             seconds=time.perf_counter() - started))  # fmt: skip
            continue
        correct = _correct(candidate, val_embeds, val_labels)
        calibration = report.calibration or {}
        rows.append(dict(
            method=name, status="fitted", correct=correct, validation_accuracy=correct / val_embeds.shape[0],
            validation_nll=calibration.get("nll_after"), seconds=time.perf_counter() - started, chosen=False,
        ))  # fmt: skip
        if best is None or correct > best[0]:  # strictly better: a tie keeps the earlier candidate
            best = (correct, len(rows) - 1, candidate, report)
    if best is None:
        reasons = "; ".join(f"{row['method']}: {row['reason']}" for row in rows)
        raise ValueError(f"method='auto': no candidate could be fitted on this data ({reasons}).")

    # ---- 4. the model becomes the chosen candidate
    _, index, chosen, report = best
    rows[index]["chosen"] = True
    selection = {
        "rule": SELECTION_RULE, "candidates": names, "chosen": rows[index]["method"],
        "num_validation": int(val_embeds.shape[0]), "table": rows,
    }  # fmt: skip
    chosen.config.method_selection = copy.deepcopy(selection)
    if not isinstance(train_dataset, ExtractedEmbeddings):  # the candidates saw embeddings: record what was extracted
        chosen.config.augment_views = report.augment_views = augment_views
    _adopt(model, chosen)
    report.selection = rows
    report.extraction_seconds = extraction_seconds
    return model, report


def _candidate(model, name: str):
    """A model of method ``name`` on ``model``'s backbone, processor, class embeddings and config (`ValueError` where
    the config's values do not suit the method)."""
    config = copy.deepcopy(model.config)
    config.method = name
    config.method_selection = None
    if model.config.hard_sample_strength is None:  # not given: the method's own default
        config.hard_sample_strength = config.default_hard_sample_strength()
    config.validate()
    candidate = type(model)(config, clip_model=model.clip, processor=model.processor)
    candidate.to(model.class_embeds.device)
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers(recurse=False):  # the encoded class prompts, the probes
            getattr(candidate, buffer_name).copy_(buffer)
    candidate.refresh_cache_layout()
    return candidate.eval()


@torch.no_grad()
def _correct(model, embeds: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> int:
    """Validation images the model classifies correctly (raw embeddings `(M, C)`)."""
    device, hits = model.class_embeds.device, 0
    for start in range(0, embeds.shape[0], batch_size):
        logits = model(image_embeds=embeds[start : start + batch_size].to(device)).logits
        hits += int((logits.argmax(-1) == labels[start : start + batch_size].to(device)).sum())
    return hits


def _adopt(model, chosen) -> None:
    """Makes ``model`` the ``chosen`` candidate in place: its config (values, not the object: the caller's references
    stay valid), its method (re-pointed at ``model.config``), its buffers and its mode."""
    model.config.__dict__.clear()
    model.config.__dict__.update(chosen.config.__dict__)
    for module in chosen.method.modules():  # the method and its memos read the config they were built with
        if getattr(module, "config", None) is chosen.config:
            module.config = model.config
    model.method = chosen.method
    for name, buffer in chosen.named_buffers(recurse=False):
        setattr(model, name, buffer)
    model.cache_shots = chosen.cache_shots
    model.eval()


def selection_lines(rows: list[dict], num_validation: int) -> list[str]:
    """The validation table of [`FitReport`]'s `str`: one line per candidate, the chosen one marked ``*``."""
    chosen = next((row["method"] for row in rows if row.get("chosen")), None)
    lines = [
        f"method='auto' chose {chosen} on the validation split ({num_validation} images): {SELECTION_RULE}",
        f"  {'candidate':<20} {'val. accuracy':>13} {'val. NLL':>9} {'fit s':>7}",
    ]
    for row in rows:
        mark = "*" if row.get("chosen") else " "
        if row["status"] == "skipped":
            reason = row["reason"] if len(row["reason"]) <= 100 else row["reason"][:97] + "..."
            lines.append(f"{mark} {row['method']:<20} skipped: {reason}")
            continue
        nll = "-" if row.get("validation_nll") is None else f"{row['validation_nll']:.4f}"
        lines.append(f"{mark} {row['method']:<20} {row['validation_accuracy']:>13.4f} {nll:>9} {row['seconds']:>7.1f}")
    return lines
