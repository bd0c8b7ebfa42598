"""The embedding fast path (docs/design.md, decision 2): extract augmented views once, train the adapter on them.

The backbone is frozen, so an image's embedding depends only on its pixels: extracting V augmented views of every
few-shot image once (the cache recipe needs them anyway) and drawing one of them per image and epoch replaces a
backbone forward per image and step by a table look-up (docs/training.md). Two ways to use it:

- with the HF `Trainer` and the very same model: [`EmbeddingViewsDataset`] yields ``{"image_embeds", "labels",
  "cache_index"}`` items whose view is a function of (seed, epoch, index), plus [`ViewEpochCallback`] so that the
  epoch reaches the dataset however the dataloader is wrapped;
- in one call, [`fit`]: extraction, cache, validation search, training, search again.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import TrainerCallback

from .augment import draw_seed
from .extraction import ExtractedEmbeddings, extract_embeddings
from .training import build_optimizer, recipe_for
from .tuning import check_validation_embeddings

__all__ = ["EmbeddingViewsDataset", "FitReport", "ViewEpochCallback", "fit", "steps_batch_size"]

#: Optimiser steps an epoch should have at least (docs/training.md: with NK <= 512 and batch 256 an epoch is one step).
MIN_STEPS_PER_EPOCH = 8

#: How [`EmbeddingViewsDataset`] draws an item's training embedding from its cached views.
VIEW_SAMPLINGS = ("view", "gaussian")


def _check_int(name: str, value, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int{' or None' if allow_none else ''}, got {type(value).__name__}.")
    if value < low:
        raise ValueError(f"`{name}` must be >= {low}, got {value}.")


def _check_view_sampling(value) -> None:
    if value not in VIEW_SAMPLINGS:
        raise ValueError(f"`view_sampling` must be one of {VIEW_SAMPLINGS}, got {value!r}.")


class EmbeddingViewsDataset(Dataset):
    r"""Cached augmented views of a few-shot set as a torch `Dataset`: one training embedding per item and epoch.

    Item ``i`` in epoch ``e`` is drawn as a function of (seed, epoch, index) (docs/design.md, decision 6: any
    shuffling, batch size, process count or resumption sees the same views), in one of two ways (``view_sampling``):

    - ``"gaussian"`` (the default, as in `fit`): a new point with the mean and covariance of image ``i``'s V views,
      ``mean_i + sum_v g_v (view_v,i - mean_i) / sqrt(V - 1)`` with ``g ~ N(0, I_V)`` drawn from
      ``draw_seed(seed, e, i)``. Each epoch then sees a view no earlier epoch saw, as the reference procedure's fresh
      augmentations are, instead of re-using each of the V views ``epochs / V`` times (docs/benchmarks.md measures the
      difference). With one view it is that view;
    - ``"view"``: view ``draw_seed(seed, e, i) % V`` of image ``i``, one of its V cached views as it is.

    Each item is ``{"image_embeds": (C,) float32, "labels": () int64, "cache_index": () int64}``, what
    [`XMAdapterForImageClassification.forward`] takes; the default collator stacks them into a batch.

    The epoch must reach the dataset. Trainer calls `set_epoch` on its dataloader each epoch and accelerate's
    `DataLoaderShard.set_epoch` forwards it to `dataset.set_epoch` in a single process; but it skips the dataset when
    its sampler has a `set_epoch` of its own (accelerate's seedable sampler, some distributed set-ups). Pass
    ``callbacks=[ViewEpochCallback(dataset)]`` to the Trainer to be safe: it sets the epoch at every epoch start.
    Keep `dataloader_persistent_workers=False` (the default) with worker processes, so that each epoch's workers get
    a copy of the dataset with the current epoch (with the embeddings in memory, `dataloader_num_workers=0` is best).

    Args:
        embeds (`torch.Tensor` of shape `(V, M, C)`): raw view embeddings, e.g. `extract_embeddings(...).embeds`.
        labels (`torch.Tensor` of shape `(M,)`): integer class ids.
        seed (`int`, *optional*, defaults to 0): seed of the view draws.
        cache_index (`bool` or `torch.Tensor` of shape `(M,)`, *optional*, defaults to `True`): each item's position
            in the model's cache (so that XMAdapter's hard-sample criterion leaves the item's own entry out). `True`:
            item ``i`` is cache entry ``i`` (the cache was built from these views, in this order); `False`: no
            `cache_index` key.
        view_sampling (`str`, *optional*, defaults to `"gaussian"`): `"gaussian"` (a draw with the mean and
            covariance of the image's views) or `"view"` (one cached view as it is), see above.

    Example (the Trainer path on the tiny random CLIP):

    ```python
    >>> import tempfile
    >>> from transformers import Trainer, TrainingArguments
    >>> from xmadapter_hf import EmbeddingViewsDataset, ViewEpochCallback, XMAdapterForImageClassification
    >>> from xmadapter_hf.extraction import extract_embeddings
    >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
    >>> from xmadapter_hf.training import build_optimizer
    >>> clip, processor = tiny_clip()
    >>> model = XMAdapterForImageClassification.from_clip(
    ...     clip, ["a", "b"], processor=processor, method="tip-adapter-f"
    ... )
    >>> views = extract_embeddings(clip, processor, tiny_image_dataset(2, 4), augment_views=3, show_progress=False)
    >>> model.set_cache(views.embeds.mean(0), views.labels)  # keys: the mean of the views
    >>> data = EmbeddingViewsDataset(views.embeds, views.labels, seed=0)
    >>> args = TrainingArguments(tempfile.mkdtemp(), num_train_epochs=2, per_device_train_batch_size=2,
    ...                          report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[ViewEpochCallback(data)],
    ...                   optimizers=build_optimizer(model, num_training_steps=8))
    >>> trainer.train().global_step  # Trainer prints its final metrics first  # doctest: +ELLIPSIS
    {...}
    8
    ```
    """

    def __init__(
        self,
        embeds: torch.Tensor,
        labels: torch.Tensor,
        seed: int = 0,
        cache_index: bool | torch.Tensor = True,
        view_sampling: str = "gaussian",
    ):
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.ndim != 3:
            raise ValueError(f"`embeds` must be a float tensor of shape (V, M, C); got {_describe(embeds)}.")
        if embeds.shape[0] < 1 or embeds.shape[1] < 1:
            raise ValueError(f"`embeds` needs at least one view and one item; got shape {tuple(embeds.shape)}.")
        count = embeds.shape[1]
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (count,):
            raise ValueError(f"`labels` must be an integer tensor of shape ({count},); got {_describe(labels)}.")
        _check_int("seed", seed, -(2**62))
        if isinstance(cache_index, bool):
            index = torch.arange(count) if cache_index else None
        elif isinstance(cache_index, torch.Tensor) and not cache_index.dtype.is_floating_point:
            if cache_index.shape != (count,):
                raise ValueError(f"`cache_index` must have shape ({count},); got {tuple(cache_index.shape)}.")
            index = cache_index.long()
        else:
            raise TypeError(f"`cache_index` must be a bool or an integer tensor (M,); got {_describe(cache_index)}.")
        _check_view_sampling(view_sampling)
        self.embeds, self.labels, self.seed, self.cache_index = embeds, labels.long(), int(seed), index
        self.view_sampling = view_sampling
        self.epoch = 0
        self._mean = self._deviations = None  # (M, C) and (V, M, C) / sqrt(V - 1), built on first Gaussian draw

    @classmethod
    def from_extracted(cls, extracted: ExtractedEmbeddings, seed: int = 0, **kwargs) -> EmbeddingViewsDataset:
        """The dataset of an [`~xmadapter_hf.extraction.ExtractedEmbeddings`]."""
        return cls(extracted.embeds, extracted.labels, seed=seed, **kwargs)

    @property
    def num_views(self) -> int:
        return self.embeds.shape[0]

    def __len__(self) -> int:
        return self.embeds.shape[1]

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose views `__getitem__` returns (called by Trainer/accelerate or the callback)."""
        _check_int("epoch", epoch, 0)
        self.epoch = int(epoch)

    def view_of(self, index: int, epoch: int | None = None) -> int:
        """The view item ``index`` uses in ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else epoch
        return draw_seed(self.seed, epoch, int(index)) % self.num_views

    def views_for_epoch(self, epoch: int | None = None) -> torch.Tensor:
        """The view of every item in ``epoch``, `(M,)` int64 (what `__getitem__` draws, vectorised for loops)."""
        return torch.tensor([self.view_of(i, epoch) for i in range(len(self))], dtype=torch.long)

    @property
    def _uses_views_as_they_are(self) -> bool:
        return self.view_sampling == "view" or self.num_views == 1  # one view: the Gaussian draw is that view

    def embedding_of(self, index: int, epoch: int | None = None) -> torch.Tensor:
        """The raw embedding `(C,)` item ``index`` is trained on in ``epoch`` (default: the current epoch)."""
        if self._uses_views_as_they_are:
            return self.embeds[self.view_of(index, epoch), index]
        epoch = self.epoch if epoch is None else epoch
        if self._mean is None:
            views = self.embeds.float()  # the draw is made in fp32 whatever the storage
            self._mean = views.mean(dim=0)  # (M, C)
            self._deviations = (views - self._mean) / math.sqrt(self.num_views - 1)  # (V, M, C)
        generator = torch.Generator().manual_seed(draw_seed(self.seed, epoch, int(index)))
        weights = torch.randn(self.num_views, generator=generator)  # (V,)
        return (self._mean[index] + weights @ self._deviations[:, index]).to(self.embeds.dtype)  # (C,)

    def embeddings_for_epoch(self, epoch: int | None = None) -> torch.Tensor:
        """Every item's training embedding in ``epoch``, `(M, C)`: what `__getitem__` gives, stacked (for loops)."""
        if self._uses_views_as_they_are:
            return self.embeds[self.views_for_epoch(epoch), torch.arange(len(self))]
        return torch.stack([self.embedding_of(i, epoch) for i in range(len(self))])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index = index % len(self)
        item = {"image_embeds": self.embedding_of(index), "labels": self.labels[index]}  # (C,), ()
        if self.cache_index is not None:
            item["cache_index"] = self.cache_index[index]
        return item


class ViewEpochCallback(TrainerCallback):
    """Sets an [`EmbeddingViewsDataset`]'s epoch at the start of every Trainer epoch, resumed runs included.

    At `on_epoch_begin` of epoch ``e`` Trainer's `state.epoch` is ``e`` (``e + fraction`` when resuming mid-epoch),
    so its integer part is the epoch about to run; this fires before the epoch's dataloader iterator is created.
    """

    def __init__(self, dataset: EmbeddingViewsDataset):
        if not hasattr(dataset, "set_epoch"):
            raise TypeError(f"`dataset` must have a `set_epoch` method; got {type(dataset).__name__}.")
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # the small epsilon guards against float sums like 0.999999 for the end of epoch 0
        self.dataset.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))
        return control


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
        search_before (`dict`), search_after (`dict`): the searched values and their validation accuracy.
        final_loss (`float`): mean training loss of the last epoch.
        extraction_seconds (`float`), training_seconds (`float`): wall times.
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
    extraction_seconds: float = 0.0
    training_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

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
            text = "" if chosen["text_sharpness"] is None else f", text sharpness {chosen['text_sharpness']:.4g}"
            lines.append(
                f"searched on the validation split: sharpness {chosen['sharpness']:.4g}, residual ratio "
                f"{chosen['residual_ratio']:.4g}{text}"
            )
        lines.append(f"extraction {self.extraction_seconds:.1f} s, training {self.training_seconds:.1f} s")
        return "\n".join(lines)


def steps_batch_size(num_items: int, recipe_batch_size: int = 256, min_steps: int = MIN_STEPS_PER_EPOCH) -> int:
    """The batch size for an epoch of at least ``min_steps`` optimiser steps, capped at the recipe's batch size.

    Example:

    ```python
    >>> from xmadapter_hf.fastpath import steps_batch_size
    >>> steps_batch_size(160), steps_batch_size(16_000)
    (20, 256)
    ```
    """
    return max(1, min(recipe_batch_size, num_items // min_steps))


def _accuracy(model, embeds: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(final, zero-shot) top-1 accuracy of raw embeddings (M, C)."""
    device = model.class_embeds.device
    hits = zero_shot_hits = 0
    with torch.no_grad():
        for start in range(0, embeds.shape[0], batch_size):
            out = model(image_embeds=embeds[start : start + batch_size].to(device))
            truth = labels[start : start + batch_size].to(device)
            hits += int((out.logits.argmax(-1) == truth).sum())
            zero_shot_hits += int((out.zero_shot_logits.argmax(-1) == truth).sum())
    return hits / embeds.shape[0], zero_shot_hits / embeds.shape[0]


def _search_summary(result) -> dict:
    return {
        "accuracy": float(result.accuracy),
        "sharpness": float(result.sharpness),
        "residual_ratio": float(result.residual_ratio),
        "text_sharpness": None if result.text_sharpness is None else float(result.text_sharpness),
    }


def fit(
    model,
    train_dataset,
    validation_dataset,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    augment_views: int = 10,
    seed: int = 0,
    search_scale: tuple[float, float] | None = None,
    search_step: tuple[int, int] = (200, 20),
    dataset_name: str | None = None,
    learning_rate: float | None = None,
    validation_labels: torch.Tensor | None = None,
    extraction_batch_size: int = 32,
    cache_dir=None,
    autocast_dtype: torch.dtype | None = None,
    view_sampling: str = "gaussian",
    show_progress: bool = True,
    search: bool = True,
):
    r"""Adapts ``model`` to a few-shot task in one call, on cached embeddings (no Trainer needed).

    1. Extracts ``augment_views`` augmented views of every training image once (with ``cache_dir``, a rerun reuses
       them from disk) and the plain view of every validation image;
    2. builds the cache (keys: the mean of the views, normalised);
    3. runs the training-free validation search (alpha, beta, and XMAdapter's text sharpness), so that training
       starts from the searched values (docs/training.md);
    4. for trainable methods, trains with the method's recipe ([`~xmadapter_hf.training.build_optimizer`]), drawing
       one embedding per image and epoch drawn from its cached views ([`EmbeddingViewsDataset`]; by default a
       Gaussian draw with the mean and covariance of the image's views), with `cache_index` passed, a batch size
       giving >= 8 steps per epoch unless ``batch_size`` is set, and shuffles drawn from (seed, epoch);
    5. searches again on the validation split. The chosen values end up in `model.config` (`search_result`).

    Args:
        model ([`XMAdapterForImageClassification`]): built with `from_clip` (its processor reads the images).
        train_dataset: the few-shot images (a `datasets.Dataset` with image and label columns, or a torch dataset of
            (image, label)), or an [`~xmadapter_hf.extraction.ExtractedEmbeddings`] whose views are already
            extracted.
        validation_dataset: validation images, or raw validation embeddings `(M, C)` with ``validation_labels``.
            Never the test split: the search chooses on it.
        epochs (`int`, *optional*): defaults to the method's recipe (20).
        batch_size (`int`, *optional*): defaults to [`steps_batch_size`] (>= 8 steps per epoch, at most 256).
        augment_views (`int`, *optional*, defaults to 10): views per training image (0 = the plain image).
        seed (`int`, *optional*, defaults to 0): seed of the augmentations, view draws and shuffles.
        search_scale (`(float, float)`, *optional*): [sharpness max, residual-ratio max] of the search; defaults to
            the dataset's (``dataset_name``) or (7, 3). A random tiny CLIP needs about (50, 50).
        search_step (`(int, int)`, *optional*, defaults to `(200, 20)`): the search grid sizes.
        dataset_name (`str`, *optional*): one of Tip-Adapter's datasets, for its search defaults.
        learning_rate (`float`, *optional*): overrides the recipe's.
        validation_labels (`torch.Tensor`, *optional*): with validation embeddings.
        extraction_batch_size (`int`, *optional*, defaults to 32): images per backbone forward.
        cache_dir (`str` or `os.PathLike`, *optional*): on-disk extraction cache (see `extract_embeddings`).
        autocast_dtype (`torch.dtype`, *optional*): mixed precision for the backbone forward.
        view_sampling (`str`, *optional*, defaults to `"gaussian"`): how an image's training embedding is drawn
            from its views each epoch: `"gaussian"` (a new point with the mean and covariance of its views) or
            `"view"` (one of the cached views as it is); see [`EmbeddingViewsDataset`].
        show_progress (`bool`, *optional*, defaults to `True`): progress bars.
        search (`bool`, *optional*, defaults to `True`): run the validation searches. `False` keeps the config's
            residual ratio and sharpness (and lets a cache method fit without a validation split).

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
    from .modeling import XMAdapterForImageClassification

    if not isinstance(model, XMAdapterForImageClassification):
        raise TypeError(f"`model` must be an XMAdapterForImageClassification, got {type(model).__name__}.")
    _check_int("epochs", epochs, 1, allow_none=True)
    _check_int("batch_size", batch_size, 1, allow_none=True)
    _check_int("augment_views", augment_views, 0)
    _check_int("seed", seed, -(2**62))
    _check_int("extraction_batch_size", extraction_batch_size, 1)
    _check_view_sampling(view_sampling)
    if learning_rate is not None and (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))):
        raise TypeError(f"`learning_rate` must be a number or None, got {type(learning_rate).__name__}.")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"`learning_rate` must be finite and > 0, got {learning_rate}.")
    method = model.method
    if method.uses_cache and search and validation_dataset is None:
        raise ValueError(
            f"Method {model.config.method!r} searches its residual ratio and sharpness on a validation split: pass "
            "`validation_dataset` (images, or raw embeddings with `validation_labels`), or `search=False`."
        )
    if isinstance(validation_dataset, torch.Tensor):
        check_validation_embeddings(model, validation_dataset, validation_labels)
    if not isinstance(train_dataset, ExtractedEmbeddings) or not isinstance(validation_dataset, torch.Tensor):
        if model.processor is None:
            raise ValueError("`fit` reads images with the model's processor: build the model with `from_clip`.")
    if method.trainable:
        recipe = recipe_for(model.config.method)  # raises for unknown recipes before any work

    # ---- 1. extraction (the only backbone work)
    started = time.perf_counter()
    common = dict(
        batch_size=extraction_batch_size, cache_dir=cache_dir, autocast_dtype=autocast_dtype,
        show_progress=show_progress,
    )  # fmt: skip
    if isinstance(train_dataset, ExtractedEmbeddings):
        views = train_dataset
        augment_views = views.embeds.shape[0]  # what was extracted, whatever `augment_views` says
    else:
        views = extract_embeddings(
            model.clip, model.processor, train_dataset, augment_views=augment_views, seed=seed, **common
        )
    if validation_dataset is None:
        val_embeds, val_labels = None, None
    elif isinstance(validation_dataset, torch.Tensor):
        val_embeds, val_labels = validation_dataset, torch.as_tensor(validation_labels).long()
    else:
        extracted = extract_embeddings(model.clip, model.processor, validation_dataset, augment_views=0, **common)
        val_embeds, val_labels = extracted.embeds[0], extracted.labels
    extraction_seconds = time.perf_counter() - started

    # ---- 2. cache: keys average the views (raw), then normalise (in set_cache)
    model.set_cache(views.embeds.mean(dim=0), views.labels)  # (V, M, C) -> (M, C)
    model.config.augment_views, model.config.seed = augment_views, seed
    report = FitReport(
        method=model.config.method,
        num_train=views.embeds.shape[1],
        num_validation=0 if val_embeds is None else val_embeds.shape[0],
        augment_views=augment_views,
        view_sampling=view_sampling,
        extraction_seconds=extraction_seconds,
    )
    model.eval()
    if val_embeds is not None:
        report.training_free_accuracy, report.zero_shot_accuracy = _accuracy(model, val_embeds, val_labels)
    search_args = dict(search_scale=search_scale, search_step=search_step, dataset_name=dataset_name)

    # ---- 3. training-free search first: training starts from the searched alpha/beta
    if method.uses_cache and search:
        result = model.search_hyperparameters(val_embeds, val_labels, **search_args)
        report.search_before = _search_summary(result)
        report.training_free_accuracy = float(result.accuracy)

    # ---- 4. train on one cached view per image and epoch
    if method.trainable:
        started = time.perf_counter()
        data = EmbeddingViewsDataset(views.embeds, views.labels, seed=seed, view_sampling=view_sampling)
        count = len(data)
        epochs = epochs or recipe.epochs
        batch = batch_size or steps_batch_size(count, recipe.batch_size)
        steps_per_epoch = math.ceil(count / batch)
        total = epochs * steps_per_epoch
        optimizer, scheduler = build_optimizer(model, num_training_steps=total, learning_rate=learning_rate)
        device = model.class_embeds.device
        model.train()
        last_losses: list[float] = []
        for epoch in tqdm(range(epochs), disable=not show_progress, desc="train", unit="epoch"):
            embeds = data.embeddings_for_epoch(epoch)  # (M, C): one draw per image
            # the shuffle is a function of (seed, epoch) too: a 2-key draw never equals a (seed, epoch, index) draw
            order = torch.randperm(count, generator=torch.Generator().manual_seed(draw_seed(seed, epoch)))
            last_losses = []
            for start in range(0, count, batch):
                index = order[start : start + batch]
                out = model(
                    image_embeds=embeds[index].to(device),
                    labels=data.labels[index].to(device),
                    cache_index=data.cache_index[index].to(device),
                )
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                scheduler.step()
                last_losses.append(float(out.loss.detach()))
        model.eval()
        report.epochs, report.batch_size, report.steps = epochs, batch, total
        report.final_loss = sum(last_losses) / max(1, len(last_losses))
        report.training_seconds = time.perf_counter() - started

    # ---- 5. search again on the trained model
    if method.uses_cache and method.trainable and search:
        result = model.search_hyperparameters(val_embeds, val_labels, **search_args)
        report.search_after = _search_summary(result)
    if val_embeds is not None:
        report.accuracy = _accuracy(model, val_embeds, val_labels)[0]
    return model, report


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
