"""The classes of a model after it was built: adding classes to a (trained) adapter, or giving a saved adapter other
classes. One mechanism serves both (docs/add-classes.md):

- [`add_classes`] (`model.add_classes`): new class names, and few-shot images (or embeddings) for them, extend the
  class text embeddings ``W``, the cache, the label maps and every cache-shaped parameter of the method (through its
  `add_classes` hook). The old rows are kept bit for bit.
- [`replace_classes`] (`from_pretrained(path, class_names=...)`): the class-agnostic weights of a saved adapter are
  kept, the class side is re-encoded for the given names and the cache is emptied, to be filled by `build_cache` with
  the new task's support images. This is how a meta-trained Meta-Adapter is applied online, without training.

Both validate everything (names, support shapes and labels, the tokenizer) before any state changes or any image
goes through the backbone. Both replace parameters: an optimiser, Trainer, DDP wrapper or compiled graph built before
holds the old tensors, and an optimiser step through one raises (see `methods.base.retire_parameter`).
"""

from collections import Counter
from collections.abc import Sequence

import torch

from . import caches, prompts
from .data.extraction import class_label_names, extract_embeddings, read_labels
from .validation import describe

__all__ = ["add_classes", "replace_classes"]


def _checked_names(model, class_names, *, existing: Sequence[str] = ()) -> list[str]:
    """The new names as a list: non-empty distinct strings, none of them in ``existing``."""
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError(f"`class_names` must be a list of strings; got {describe(class_names)}.")
    names = list(class_names)
    if not names:
        raise ValueError("`class_names` is empty: give at least one class name.")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"`class_names` must hold non-empty strings; got {name!r}.")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)  # not list.count: 100k names
    if repeated:
        raise ValueError(f"`class_names` must be unique; duplicated: {repeated}.")
    taken = set(existing)
    clash = [name for name in names if name in taken]
    if clash:
        raise ValueError(
            f"The model already has the classes {clash[:10]}: `add_classes` adds new classes only (a class's cache "
            "entries are set with `set_cache`/`build_cache`)."
        )
    if getattr(model.processor, "tokenizer", None) is None:
        raise ValueError("Encoding the new class prompts needs the backbone's tokenizer: give the model a processor.")
    return names


def _checked_support(model, num_new: int, embeds, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Support embeddings `(V, M, C)` (every view; `(M, C)` is one view) and labels `(M,)` in ``[0, num_new)`` with
    every new class present."""
    if not isinstance(embeds, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"Support embeddings and labels must be torch tensors; got {describe(embeds)}, {describe(labels)}."
        )
    views = embeds[None] if embeds.ndim == 2 else embeds
    if not embeds.is_floating_point() or views.ndim != 3 or views.shape[0] == 0 or views.shape[2] != model.embed_dim:
        raise ValueError(
            f"Support embeddings must be floats of shape (M, {model.embed_dim}), or (V, M, {model.embed_dim}) with "
            f"V >= 1 augmented views; got {describe(embeds)}."
        )
    if labels.dtype.is_floating_point or labels.shape != (views.shape[1],):
        raise ValueError(f"Support labels must be integers of shape ({views.shape[1]},); got {describe(labels)}.")
    if not torch.isfinite(views).all():
        raise ValueError("Support embeddings contain NaN or Inf; check the images or the backbone.")
    _check_support_labels(labels.long(), num_new)
    return views, labels.long()


def _check_support_labels(labels: torch.Tensor, num_new: int) -> None:
    if labels.numel() == 0:
        raise ValueError("The support set is empty: each new class needs at least one image.")
    if labels.min() < 0 or labels.max() >= num_new:
        raise ValueError(
            f"Support labels index the new classes: they must lie in [0, {num_new - 1}]; got values in "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    counts = torch.bincount(labels, minlength=num_new)
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"Every new class needs at least one support image; none for the new classes {missing}.")


@torch.no_grad()
def add_classes(
    model, class_names, dataset=None, *, embeds=None, labels=None, augment_views=None, batch_size=32,
    image_column=None, label_column=None, processor=None, show_progress=True, text_batch_size=256, num_workers=None,
):  # fmt: skip
    """Implements `XMAdapterForImageClassification.add_classes` (see there)."""
    config = model.config
    names = _checked_names(model, class_names, existing=config.class_names)
    has_cache = config.cache_size > 0
    given = dataset is not None, embeds is not None or labels is not None
    if all(given):
        raise ValueError("Pass the new classes' support images as `dataset` or as `embeds` and `labels`, not both.")
    if has_cache and not any(given):
        raise ValueError(
            f"The model has a cache ({config.cache_size} entries), so each new class needs few-shot support images: "
            "pass `dataset` (labels 0..M-1 index the new classes) or `embeds=` and `labels=`."
        )
    if not has_cache and any(given):
        raise ValueError("The model has no cache yet: add the classes without support, then call `build_cache`.")
    if given[0]:
        label_names = class_label_names(dataset, label_column)
        if label_names is not None and label_names != names:
            raise ValueError(
                f"The support dataset's ClassLabel names {label_names[:10]} differ from the new `class_names` "
                f"{names[:10]}: its labels must index the new classes, in order."
            )
        _check_support_labels(read_labels(dataset, image_column, label_column), len(names))
        views = config.augment_views if augment_views is None else augment_views
        extracted = extract_embeddings(
            model.clip, processor or model.processor, dataset, augment_views=views, seed=config.seed or 0,
            batch_size=batch_size, image_column=image_column, label_column=label_column, show_progress=show_progress,
            num_workers=num_workers,
        )  # fmt: skip
        embeds, labels = extracted.embeds, extracted.labels  # every view: the keys average them as `build_cache`'s
    if has_cache:
        views, labels = _checked_support(model, len(names), embeds, labels)
        embeds = views[0] if views.shape[0] == 1 else views.mean(dim=0)  # (V, M, C) -> (M, C)
        total = config.num_classes + len(names)
        prepared = model.method.prepare_support(views, labels + config.num_classes, total, config.num_classes)
    weights = prompts.class_text_embeddings(
        model.clip, model.processor.tokenizer, names, config.prompt_templates, text_batch_size
    )  # (M, C)

    # Nothing below can fail on the user's input: the state changes.
    old_classes, old_entries = config.num_classes, config.cache_size
    device = model.class_embeds.device
    model.class_embeds = torch.cat([model.class_embeds, weights.to(model.class_embeds)])
    if has_cache:
        keys = caches.normalized_keys(model, embeds, model.cache_embeds.dtype)  # (M, C), as `set_cache` stores them
        model.cache_embeds = torch.cat([model.cache_embeds, keys])
        model.cache_labels = torch.cat([model.cache_labels, labels.to(device) + old_classes])
    config.class_names = [*config.class_names, *names]  # the labels follow (XMAdapterConfig.__setattr__)
    caches.record_cache(model)
    config.classes_added += len(names)
    model.method.add_classes(model.cache_state(), old_classes, old_entries)
    if has_cache:
        model.method.apply_support(prepared)
    return model


@torch.no_grad()
def replace_classes(model, class_names, text_batch_size: int = 256):
    """Gives ``model`` the classes ``class_names`` instead of its own: re-encodes ``W`` for them and empties the cache
    (fill it with `build_cache`); the method's class-agnostic weights stay. `from_pretrained(class_names=...)`."""
    names = _checked_names(model, class_names)
    weights = prompts.class_text_embeddings(
        model.clip, model.processor.tokenizer, names, model.config.prompt_templates, text_batch_size
    )
    config = model.config
    model.class_embeds = weights.to(model.class_embeds)
    model.cache_embeds = model.cache_embeds.new_zeros(0, model.embed_dim)
    model.cache_labels = model.cache_labels.new_zeros(0)
    config.class_names = names  # the labels follow (XMAdapterConfig.__setattr__)
    caches.record_cache(model)
    config.classes_added = 0
    config.evaluation = None  # the metrics were of the other classes
    config.temperature = None  # and so was the temperature's fit (a cache of the new classes will replace the old)
    model.method.resize_cache(0)
    return model
