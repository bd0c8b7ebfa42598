"""`fit`: adapt a model to a few-shot task in one call, on cached embeddings, with the library's one training path.

1. extract ``augment_views`` augmented views of every training image once (the only backbone work; with
   ``cache_dir`` a rerun reuses them from disk) and the plain view of every validation image;
2. build the cache (keys: the mean of the views, normalised);
3. search the training-free values on validation (training starts from them: docs/training.md);
4. train trainable methods with [`XMAdapterTrainer`] and [`recipe_arguments`] (the method's recipe) on one draw per
   image and epoch from its cached views ([`EmbeddingViewsDataset`]);
5. search again. The chosen values end up in `model.config` (`search_result`);
6. fit the scores' temperature on the validation split (`config.temperature`, see `xmadapter_hf.calibration`): the
   logits and their argmax stay as they are, ``softmax(logits / T)`` becomes a probability worth showing.

`fit` changes the model only if it succeeds: when anything raises (an interrupt included), the model's adapter
tensors, its config and its mode are put back as they were before the call.
"""

from __future__ import annotations

import copy
import random
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from ..calibration import eval_logits, set_temperature
from ..data.extraction import ExtractedEmbeddings, extract_embeddings
from ..data.views import VIEW_SAMPLINGS, EmbeddingViewsDataset
from ..selection import is_pending
from ..validation import check_choice, check_int, check_number, check_tensor
from .trainer import XMAdapterTrainer, _accuracies, recipe_arguments, recipe_of

__all__ = ["FitReport", "fit"]


@dataclass
class FitReport:
    """What [`fit`] did and chose (accuracies are on the validation split; `None` where a step did not run).

    Attributes:
        method (`str`): `config.method`.
        num_train (`int`): few-shot images (= cache entries).
        num_validation (`int`): validation images.
        augment_views (`int`): views extracted per training image.
        view_sampling (`str`): how training embeddings were drawn from the views (`"gaussian"` or `"view"`).
        epochs (`int`), batch_size (`int`), steps (`int`): the training schedule (0 epochs for training-free methods).
        zero_shot_accuracy (`float`): zero-shot CLIP.
        training_free_accuracy (`float`): after the first search, before training (Tip-Adapter for cache methods).
        accuracy (`float`): the final model.
        search_before (`dict`), search_after (`dict`): the searched values (by config field) and their validation
            accuracy.
        final_loss (`float`): mean training loss of the last epoch.
        temperature (`float`): the fitted `config.temperature` (`None`: no validation split, or nothing to fit).
        calibration (`dict`): the fit's [`~xmadapter_hf.calibration.TemperatureFit`] on the validation split: NLL
            and expected calibration error before (`T = 1`) and after, and whether `T` stopped at a bound.
        extraction_seconds (`float`), training_seconds (`float`): wall times.
        selection (`list[dict]`, *optional*): for a model built with `method="auto"`, the validation table, one row
            per candidate in the order of the tie rule: `method`, `status` (`"fitted"`, `"skipped"`), `correct` and
            `validation_accuracy` (of the `num_validation` images), `validation_nll` (at the fitted temperature),
            `seconds`, `chosen`, and `reason` where skipped; `method` then names the chosen candidate, and the other
            fields are its fit's. `None` for a model fitted with a method of its own.
    """

    method: str
    num_train: int
    num_validation: int
    augment_views: int
    view_sampling: str = "gaussian"
    epochs: int = 0
    batch_size: int = 0
    steps: int = 0
    zero_shot_accuracy: float | None = None
    training_free_accuracy: float | None = None
    accuracy: float | None = None
    search_before: dict | None = None
    search_after: dict | None = None
    final_loss: float | None = None
    temperature: float | None = None
    calibration: dict | None = None
    extraction_seconds: float = 0.0
    training_seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    selection: list | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        """A summary that names the split of every accuracy (all of them are on the validation split)."""
        training = (
            f", {self.epochs} epochs (batch {self.batch_size}, {self.steps} steps, final loss {self.final_loss:.4f})"
            if self.epochs
            else ", no training"
        )
        lines = [f"fit {self.method}: {self.num_train} training images x {self.augment_views} views{training}"]
        if self.selection is not None:
            from .select import selection_lines

            lines = selection_lines(self.selection, self.num_validation) + lines
        if self.accuracy is None:
            lines.append("no validation split: no accuracy measured")
        else:
            free = "" if self.training_free_accuracy is None else f", training-free {self.training_free_accuracy:.4f}"
            lines.append(
                f"validation accuracy ({self.num_validation} images): {self.accuracy:.4f} "
                f"(zero-shot {self.zero_shot_accuracy:.4f}{free})"
            )
        chosen = self.search_after or self.search_before
        if chosen:
            values = [f"{name.replace('_', ' ')} {value:.4g}" for name, value in chosen.items()
                      if name != "accuracy" and value is not None]  # fmt: skip
            lines.append(f"searched on the validation split: {', '.join(values)}")
        if self.calibration is not None and self.temperature is not None:
            fitted = self.calibration
            lines.append(
                f"scores' temperature fitted on the validation split: {self.temperature:.4g} (NLL "
                f"{fitted['nll_before']:.4f} -> {fitted['nll_after']:.4f}, ECE {fitted['ece_before']:.4f} -> "
                f"{fitted['ece_after']:.4f})"
            )
        lines.append(f"extraction {self.extraction_seconds:.1f} s, training {self.training_seconds:.1f} s")
        return "\n".join(lines)


def fit(
    model,
    train_dataset,
    validation_dataset,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    augment_views: int | None = None,
    seed: int = 0,
    search_grid: str | None = None,
    search_scale: tuple[float, float] | None = None,
    search_step: tuple[int, int] | None = None,
    dataset_name: str | None = None,
    learning_rate: float | None = None,
    validation_labels: torch.Tensor | None = None,
    extraction_batch_size: int = 32,
    cache_dir=None,
    autocast_dtype: torch.dtype | None = None,
    view_sampling: str = "gaussian",
    show_progress: bool = True,
    search: bool = True,
    training_arguments: dict | None = None,
    early_stopping_patience: int | None = None,
    keep_best_epoch: bool | None = None,
    extraction_workers: int | None = None,
    candidates=None,
):
    r"""Adapts ``model`` to a few-shot task in one call (see the module docstring for the steps).

    A model built with `method="auto"` fits every candidate method from one extraction of the images and becomes the
    one with the best validation accuracy (see `training/select.py` and docs/training.md); the report's `selection`
    holds the validation table.

    Args:
        model ([`XMAdapterForImageClassification`]): built with `from_clip` (its processor reads the images).
        train_dataset: the few-shot images (a `datasets.Dataset` with image and label columns, or a torch dataset of
            (image, label)), or an [`~xmadapter_hf.data.extraction.ExtractedEmbeddings`] already extracted.
        validation_dataset: validation images, or raw validation embeddings `(M, C)` with ``validation_labels``.
            Never the test split: the search chooses on it.
        epochs (`int`, *optional*): defaults to the dataset's (``dataset_name``, for the recipes that follow it:
            Tip-Adapter-F, XMAdapter), else the method's recipe. Precedence everywhere: explicit argument > dataset >
            recipe.
        batch_size (`int`, *optional*): defaults to the recipe's, capped for >= 8 steps per epoch.
        augment_views (`int`, *optional*): views per training image (0 = the plain image); defaults to 0 for a recipe
            without augmentation (the Multi-Modal Adapter's), else the dataset's or 10.
        seed (`int`, *optional*, defaults to 0): seed of the augmentations, view draws, shuffles and training.
        search_grid (`str`, *optional*): `"auto"` (the default unless a scale or step is given: backbone-adaptive,
            see `search_on_validation`) or `"tip-adapter-grid"` (Tip-Adapter's exact linear grid).
        search_scale (`(float, float)`, *optional*): [sharpness max, residual-ratio max] of `"tip-adapter-grid"`;
            defaults to the dataset's (``dataset_name``) or (7, 3).
        search_step (`(int, int)`, *optional*): the `"tip-adapter-grid"` sizes; defaults to the dataset's or (200, 20).
        dataset_name (`str`, *optional*): one of Tip-Adapter's datasets, for its search defaults.
        learning_rate (`float`, *optional*): defaults to the dataset's (as ``epochs``), else the recipe's.
        early_stopping_patience (`int`, *optional*): stop when validation accuracy has not improved for this many
            epochs; defaults to the recipe's (the Multi-Modal Adapter's: 20; `None` for the others). 0 turns it off.
        keep_best_epoch (`bool`, *optional*): restore the epoch with the best validation accuracy, the start included
            (training never ends below its start on validation); defaults to the recipe's (`True` for every shipped
            method). `False` keeps the last epoch.
        validation_labels (`torch.Tensor`, *optional*): with validation embeddings.
        extraction_batch_size (`int`, *optional*, defaults to 32): images per backbone forward.
        cache_dir (`str` or `os.PathLike`, *optional*): the embedding store (see `extract_embeddings`): a rerun, or
            another process at the same time, reuses what is stored there.
        autocast_dtype (`torch.dtype`, *optional*): mixed precision for the backbone forward.
        view_sampling (`str`, *optional*, defaults to `"gaussian"`): see [`EmbeddingViewsDataset`].
        show_progress (`bool`, *optional*, defaults to `True`): progress bars.
        search (`bool`, *optional*, defaults to `True`): run the validation searches. `False` keeps the config's
            values (residual ratio and sharpness; GDA's `gaussian_ratio`) and lets a cache method fit without a
            validation split.
        extraction_workers (`int`, *optional*): worker processes that prepare the images for the backbone
            (`extract_embeddings`' ``num_workers``; default: 0 for a small job, else one per core). The embeddings
            do not depend on it.
        training_arguments (`dict`, *optional*): any other `TrainingArguments` field, over the recipe's (the same
            arguments as [`recipe_arguments`]; e.g. `{"lr_scheduler_type": "linear", "max_grad_norm": 1.0}`).
        candidates (`list[str]`, *optional*): for a model built with `method="auto"` only: the registered methods to
            choose from, in the order that breaks ties (default: `xmadapter_hf.selection.AUTO_CANDIDATES`, every
            shipped method). Every other argument applies to each candidate.

    Returns:
        `tuple[XMAdapterForImageClassification, FitReport]`: the adapted model (in eval mode) and the report.

    Example (the tiny random CLIP needs a far sharper search range than real CLIP weights):

    ```python
    >>> from xmadapter_hf import XMAdapterForImageClassification, fit
    >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
    >>> clip, processor = tiny_clip()
    >>> names = [f"class {i}" for i in range(4)]
    >>> model = XMAdapterForImageClassification.from_clip(clip, names, processor=processor, method="tip-adapter-f")
    >>> train = tiny_image_dataset(4, shots=8, noise=0.85)
    >>> validation = tiny_image_dataset(4, shots=4, noise=0.85, start_index=1000)
    >>> model, report = fit(model, train, validation, epochs=2, augment_views=2, search_scale=(50, 50),
    ...                     search_step=(20, 10), show_progress=False)
    >>> report.steps, report.batch_size
    (16, 4)
    ```
    """
    # ---- validate everything before extracting or changing anything
    from ..modeling_xmadapter import XMAdapterForImageClassification

    if not isinstance(model, XMAdapterForImageClassification):
        raise TypeError(f"`model` must be an XMAdapterForImageClassification, got {type(model).__name__}.")
    check_int("epochs", epochs, 1, allow_none=True)
    check_int("batch_size", batch_size, 1, allow_none=True)
    check_int("augment_views", augment_views, 0, allow_none=True)
    check_int("early_stopping_patience", early_stopping_patience, 0, allow_none=True)
    if keep_best_epoch is not None and not isinstance(keep_best_epoch, bool):
        raise TypeError(f"`keep_best_epoch` must be True, False or None, got {keep_best_epoch!r}.")
    check_int("seed", seed, -(2**62))
    check_int("extraction_batch_size", extraction_batch_size, 1)
    check_int("extraction_workers", extraction_workers, 0, allow_none=True)
    check_choice("view_sampling", view_sampling, VIEW_SAMPLINGS)
    check_number("learning_rate", learning_rate, 0.0, low_open=True, allow_none=True)
    if is_pending(model) or candidates is not None:  # method="auto": fit every candidate, keep the best on validation
        from .select import fit_auto

        options = dict(epochs=epochs, batch_size=batch_size, search_grid=search_grid, search_scale=search_scale,
                       search_step=search_step, learning_rate=learning_rate, view_sampling=view_sampling,
                       search=search, training_arguments=training_arguments,
                       early_stopping_patience=early_stopping_patience, keep_best_epoch=keep_best_epoch)  # fmt: skip
        extraction = dict(augment_views=augment_views, seed=seed, validation_labels=validation_labels,
                          batch_size=extraction_batch_size, cache_dir=cache_dir, autocast_dtype=autocast_dtype,
                          num_workers=extraction_workers)  # fmt: skip
        return fit_auto(model, train_dataset, validation_dataset, candidates, dataset_name, show_progress, extraction,
                        options)  # fmt: skip
    method = model.method
    # a cache method with a search space (Meta-Adapter reads its cache, tunes nothing), unless search=False
    searches = method.searches() and search
    if searches and validation_dataset is None:
        raise ValueError(
            f"Method {model.config.method!r} chooses its searched values (a cache's residual ratio and sharpness, "
            "a term's weight) on a validation split: pass `validation_dataset` (images, or raw embeddings with "
            "`validation_labels`), or `search=False`."
        )
    if isinstance(validation_dataset, torch.Tensor):
        if validation_labels is None:
            raise ValueError("Pass the validation labels with validation embeddings: (M,) integers.")
        check_tensor("validation_dataset", validation_dataset, 2, cols=model.embed_dim)
    if not isinstance(train_dataset, ExtractedEmbeddings) or not isinstance(validation_dataset, torch.Tensor):
        if model.processor is None:
            raise ValueError("`fit` reads images with the model's processor: build the model with `from_clip`.")
    recipe = recipe_of(model) if method.trainable else None  # raises for a trainable method without one, first
    # explicit argument > dataset (for the recipes that follow data.defaults) > recipe
    dataset = {}
    if dataset_name is not None:
        from ..data.defaults import dataset_defaults

        dataset = dataset_defaults(dataset_name)
    if recipe is not None and dataset and recipe.dataset_defaults:
        epochs = dataset["epochs"] if epochs is None else epochs
        learning_rate = dataset["learning_rate"] if learning_rate is None else learning_rate
    if augment_views is None:
        augment_views = 0 if recipe is not None and not recipe.augment else dataset.get("augment_views", 10)
    if early_stopping_patience is None and recipe is not None:
        early_stopping_patience = recipe.early_stopping_patience
    if keep_best_epoch is None and recipe is not None:
        keep_best_epoch = recipe.keep_best_epoch

    # ---- 1. extraction (the only backbone work)
    started = time.perf_counter()
    common = dict(batch_size=extraction_batch_size, cache_dir=cache_dir, autocast_dtype=autocast_dtype,
                  show_progress=show_progress, num_workers=extraction_workers)  # fmt: skip
    views, val_embeds, val_labels = extract_once(
        model, train_dataset, validation_dataset, validation_labels, augment_views, seed, common
    )
    augment_views = views.embeds.shape[0] if isinstance(train_dataset, ExtractedEmbeddings) else augment_views
    report = FitReport(
        method=model.config.method, num_train=views.embeds.shape[1],
        num_validation=0 if val_embeds is None else val_embeds.shape[0], augment_views=augment_views,
        view_sampling=view_sampling, extraction_seconds=time.perf_counter() - started,
    )  # fmt: skip
    search_args = dict(
        search_grid=search_grid, search_scale=search_scale, search_step=search_step, dataset_name=dataset_name
    )
    overrides = dict(training_arguments or {})
    if epochs is not None:
        overrides["num_train_epochs"] = epochs
    if batch_size is not None:
        overrides["per_device_train_batch_size"] = batch_size
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate

    with _all_or_nothing(model):
        # ---- 2. cache: keys average the views (raw), then normalise; the method reads every view (set_cache)
        model.set_cache(views.embeds, views.labels)  # (V, M, C)
        model.config.augment_views, model.config.seed = augment_views, seed
        model.eval()
        if val_embeds is not None:
            report.training_free_accuracy, report.zero_shot_accuracy = _accuracies(
                model, val_embeds, val_labels, outputs=("logits", "zero_shot_logits")
            )
        # ---- 3. training-free search first: training starts from the searched values
        if searches:
            result = model.search_hyperparameters(val_embeds, val_labels, **search_args)
            report.search_before = _search_summary(result)
            report.training_free_accuracy = float(result.accuracy)
        # ---- 4. train on one draw per image and epoch from its cached views
        if method.trainable:
            data = EmbeddingViewsDataset(views.embeds, views.labels, seed=seed, view_sampling=view_sampling)
            selects = early_stopping_patience or keep_best_epoch
            validation = None if val_embeds is None or not selects else (val_embeds, val_labels)
            _train(model, data, seed, overrides, show_progress, report, validation, early_stopping_patience,
                   keep_best_epoch)  # fmt: skip
            _check_finite(model)
        # ---- 5. search again on the trained model
        if searches and method.trainable:
            report.search_after = _search_summary(model.search_hyperparameters(val_embeds, val_labels, **search_args))
        if val_embeds is not None:
            # ---- 6. the final accuracy and the scores' temperature from one pass (set_cache reset T to None)
            logits = eval_logits(model, val_embeds)  # (M, N)
            truth = val_labels.to(logits.device)
            report.accuracy = int((logits.argmax(-1) == truth).sum()) / truth.shape[0]
            fitted = set_temperature(model, logits, truth)
            report.temperature, report.calibration = fitted.temperature, fitted.to_dict()
    return model, report


def extract_once(model, train_dataset, validation_dataset, validation_labels, augment_views, seed, common):
    """``(training views, validation embeddings or None, validation labels or None)``: the one extraction of a fit
    (``common``: `extract_embeddings`' other arguments); embeddings given as such are taken as they are."""
    if isinstance(train_dataset, ExtractedEmbeddings):
        views = train_dataset  # what was extracted, whatever `augment_views` says
    else:
        views = extract_embeddings(
            model.clip, model.processor, train_dataset, augment_views=augment_views, seed=seed, **common
        )
    if validation_dataset is None:
        return views, None, None
    if isinstance(validation_dataset, torch.Tensor):
        return views, validation_dataset, torch.as_tensor(validation_labels).long()
    extracted = extract_embeddings(model.clip, model.processor, validation_dataset, augment_views=0, **common)
    return views, extracted.embeds[0], extracted.labels


def _check_finite(model) -> None:
    """A run that diverged leaves non-finite weights, which no search, temperature or save can use: refuse it (the
    all-or-nothing block then gives the caller's model back as it was)."""
    broken = [name for name, p in model.method.named_parameters() if not bool(torch.isfinite(p).all())]
    if broken:
        raise ValueError(
            f"Training diverged: the adapter's {', '.join(broken)} became non-finite (NaN or Inf). Lower the "
            "learning rate, or keep the best epoch (`keep_best_epoch=True`, the default), which never ends below the "
            "start on validation."
        )


def _train(
    model, data, seed: int, overrides: dict, show_progress: bool, report, validation=None, patience=None, keep=None
):
    """Trains with `XMAdapterTrainer` on the recipe's arguments; fills the report's schedule, loss and time."""
    started = time.perf_counter()
    device = model.class_embeds.device
    with tempfile.TemporaryDirectory(prefix="xmadapter-fit-") as output, _preserved_global_rng():
        arguments = dict(
            seed=seed, data_seed=seed, save_strategy="no", logging_strategy="epoch", disable_tqdm=True,
            use_cpu=device.type == "cpu", dataloader_num_workers=0, dataloader_pin_memory=False, report_to="none",
        )  # fmt: skip
        args = recipe_arguments(model, output, num_items=len(data), **{**arguments, **overrides})
        trainer = XMAdapterTrainer(
            model, args, train_dataset=data, validation=validation,
            early_stopping_patience=(patience or 0) if validation is not None else 0,
            keep_best_epoch=bool(keep) if validation is not None else False,
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # quiet: fit reports what it did in its FitReport
        trainer.remove_callback(ProgressCallback)
        if show_progress:
            trainer.add_callback(_EpochBar(args.num_train_epochs))
        trainer.train()
    model.eval()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    report.epochs, report.batch_size = int(args.num_train_epochs), args.per_device_train_batch_size
    report.steps, report.final_loss = trainer.state.global_step, (losses[-1] if losses else None)
    report.training_seconds = time.perf_counter() - started
    if trainer.early_stopping is not None:
        stopper = trainer.early_stopping
        report.extra["early_stopping"] = {"best_epoch": stopper.best_epoch, "epochs_run": len(stopper.history),
                                          "best_validation_accuracy": stopper.best_accuracy,
                                          "start_validation_accuracy": stopper.start_accuracy}  # fmt: skip


class _EpochBar(TrainerCallback):
    """A tqdm bar of epochs for `fit`."""

    def __init__(self, epochs):
        self.bar = tqdm(total=int(epochs), desc="train", unit="epoch")

    def on_epoch_end(self, args, state, control, **kwargs):
        self.bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


@contextmanager
def _all_or_nothing(model):
    """Puts the adapter (the method, the model's buffers), the config and the mode back if the block raises."""
    method, config = copy.deepcopy(model.method), copy.deepcopy(model.config.__dict__)
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers(recurse=False)}
    training, layout = model.training, model.cache_shots
    try:
        yield
    except BaseException:
        model.method = method
        for name, buffer in buffers.items():
            setattr(model, name, buffer)
        model.config.__dict__.clear()
        model.config.__dict__.update(config)
        model.cache_shots = layout
        model.train(training)
        raise


@contextmanager
def _preserved_global_rng():
    """Trainer seeds Python's, numpy's and torch's global generators; `fit` leaves the caller's as they were."""
    python, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)


def _search_summary(result) -> dict:
    """The validation accuracy and the searched values: a cache's sharpness, residual ratio and text sharpness (`None`
    without a text cache) where the space has cache terms, then any other field it searched (a logit term's weight)."""
    summary = {"accuracy": float(result.accuracy)}
    if result.sharpness is not None:
        summary.update(
            sharpness=float(result.sharpness), residual_ratio=float(result.residual_ratio),
            text_sharpness=None if result.text_sharpness is None else float(result.text_sharpness),
        )  # fmt: skip
    summary.update({name: float(value) for name, value in (result.fields or {}).items() if name not in summary})
    return summary
