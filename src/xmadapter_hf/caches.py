"""The few-shot cache of a model: building it from images, setting it from embeddings, its storage dtype.

The cache is what every cache method queries: the frozen normalised embeddings ``E`` (`cache_embeds`, `(NK, C)`, in
`config.cache_dtype`) and their integer labels (`cache_labels`, `(NK,)`), both buffers of the model; a method's
`cache_parameters` (learned keys) are resized and initialised from it. Everything is validated before any state
changes, and, for `build_cache`, before any image goes through the backbone.
"""

import torch

from . import functional as Fn
from .data.extraction import class_label_names, extract_embeddings, read_labels
from .validation import describe

__all__ = [
    "build_cache",
    "cache_layout",
    "cast_adapter",
    "check_cache_labels",
    "half_cache",
    "normalized_keys",
    "record_cache",
    "set_cache",
]

_HALF = {torch.float16: "float16", torch.bfloat16: "bfloat16", "float16": "float16", "bfloat16": "bfloat16"}


@torch.no_grad()
def build_cache(
    model, dataset, augment_views: int, batch_size: int, seed: int, *, image_column=None, label_column=None,
    processor=None, show_progress=True, cache_dir=None, autocast_dtype=None, num_workers=None,
):  # fmt: skip
    """Implements `XMAdapterForImageClassification.build_cache` (see there)."""
    processor = processor or model.processor
    if processor is None:
        raise ValueError("`build_cache` needs an image processor: pass `processor=` or build with `from_clip`.")
    label_names = class_label_names(dataset, label_column)
    if label_names is not None and label_names != model.config.class_names:
        raise ValueError(_class_names_differ(label_names, model.config.class_names))
    check_cache_labels(model, read_labels(dataset, image_column, label_column))
    extracted = extract_embeddings(
        model.clip, processor, dataset, augment_views=augment_views, seed=seed, batch_size=batch_size,
        image_column=image_column, label_column=label_column, show_progress=show_progress, cache_dir=cache_dir,
        autocast_dtype=autocast_dtype, num_workers=num_workers,
    )  # fmt: skip
    set_cache(model, extracted.embeds, extracted.labels)  # keys: the mean of the views, normalised
    model.config.augment_views, model.config.seed = augment_views, seed
    return model


@torch.no_grad()
def set_cache(model, embeds: torch.Tensor, labels: torch.Tensor) -> None:
    """Implements `XMAdapterForImageClassification.set_cache` (see there): ``embeds`` are raw embeddings `(NK, C)`,
    or `(V, NK, C)` with every augmented view, whose mean over the views is the key (as `build_cache` and `fit`
    average them) and which the method's `prepare_support` reads (GDA's statistics)."""
    views = embeds[None] if isinstance(embeds, torch.Tensor) and embeds.ndim == 2 else embeds
    if isinstance(views, torch.Tensor) and views.ndim == 3 and len(views) and views.shape[2] == model.embed_dim:
        embeds = views[0] if views.shape[0] == 1 else views.mean(dim=0)  # (V, NK, C) -> (NK, C)
    embeds, labels = _validated(model, embeds, labels)
    prepared = model.method.prepare_support(views, labels, model.config.num_classes)  # may refuse: before any change
    device = model.class_embeds.device
    keys = normalized_keys(model, embeds, getattr(torch, model.config.cache_dtype))  # (NK, C)
    model.cache_embeds = keys
    model.cache_labels = labels.to(device)
    model.probe_image_embed.zero_()  # the keys come from the backbone in use: `vision_fingerprint` takes its own
    model.config.temperature = None  # fitted for the old cache, whose logits' scale (e.g. K entries a class) differs
    record_cache(model)
    model.method.resize_cache(keys.shape[0])
    model.method.to(device)
    model.method.init_from_cache(model.cache_state())
    model.method.apply_support(prepared)


def record_cache(model) -> None:
    """Records `cache_size`, `shots` (None unless every class has K entries) and the cache layout, from the cache
    labels: after every change of the cache (`set_cache`, `add_classes`, `replace_classes`)."""
    config = model.config
    config.cache_size = model.cache_labels.shape[0]
    counts = torch.bincount(model.cache_labels, minlength=config.num_classes)
    equal = counts.numel() > 0 and int(counts[0]) > 0 and bool((counts == counts[0]).all())
    config.shots = int(counts[0]) if equal else None
    model.refresh_cache_layout()


def normalized_keys(model, embeds: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Raw embeddings `(M, C)` normalised into cache keys of ``dtype`` on the model's device.

    Chunk by chunk (`cache_chunk_size` rows) straight into the storage dtype: float32 copies of a whole 1.6M x 512
    cache (and of its normalised version) would add 6 GiB of transients to the 1.6 GiB fp16 cache itself.
    """
    device, step = model.class_embeds.device, model.config.cache_chunk_size
    keys = torch.empty(embeds.shape, dtype=dtype, device=device)
    for start in range(0, embeds.shape[0], step):
        keys[start : start + step] = Fn.l2_normalize(embeds[start : start + step].to(device).float())
    return keys


def cache_layout(labels: torch.Tensor, num_classes: int) -> int | None:
    """`K` when ``labels`` are K entries per class sorted by class (``[0]*K + [1]*K + ...``), else `None`."""
    if num_classes == 0 or labels.numel() % num_classes:
        return None
    shots = labels.numel() // num_classes
    expected = torch.arange(num_classes, device=labels.device).repeat_interleave(shots)
    return shots if shots > 0 and torch.equal(labels, expected) else None


def check_cache_labels(model, labels: torch.Tensor) -> None:
    """Every label is a class id and every class has at least one cache image."""
    n = model.config.num_classes
    if labels.numel() == 0:
        raise ValueError("The cache would be empty: the few-shot set has no images.")
    if labels.min() < 0 or labels.max() >= n:
        raise ValueError(
            f"Cache labels must lie in [0, {n - 1}]; got values in [{int(labels.min())}, {int(labels.max())}]."
        )
    counts = torch.bincount(labels, minlength=n)
    missing = [model.config.class_names[i] for i in (counts == 0).nonzero().flatten().tolist()]
    if missing:
        raise ValueError(
            f"Every class needs at least one cache image; none for {missing[:10]} ({len(missing)} classes)."
        )


def _validated(model, embeds, labels) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(embeds, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"Cache embeddings and labels must be torch tensors; got {describe(embeds)}, {describe(labels)}."
        )
    if embeds.ndim != 2 or embeds.shape[1] != model.embed_dim:
        raise ValueError(
            f"Cache embeddings must have shape (NK, {model.embed_dim}), or (V, NK, {model.embed_dim}) with V >= 1 "
            f"augmented views; got {tuple(embeds.shape)}."
        )
    if embeds.shape[0] == 0:
        raise ValueError("The cache would be empty: the few-shot set has no images.")
    if labels.shape != (embeds.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(f"Cache labels must be integers of shape ({embeds.shape[0]},); got {tuple(labels.shape)}.")
    # per row, chunk by chunk: a (NK, C) boolean mask of a 100k-class cache would be 0.8 GiB
    finite = torch.cat([torch.isfinite(part).all(dim=1) for part in embeds.split(model.config.cache_chunk_size)])
    if not finite.all():
        bad = (~finite).nonzero().flatten().tolist()[:10]
        raise ValueError(f"Cache embeddings contain NaN or Inf (rows {bad}); check the images or the backbone.")
    labels = labels.long()
    check_cache_labels(model, labels)
    return embeds, labels


@torch.no_grad()
def half_cache(model, dtype) -> None:
    """Implements `XMAdapterForImageClassification.half_cache` (see there)."""
    if dtype is None:
        dtype = model.config.cache_dtype if model.config.cache_dtype != "float32" else "float16"
    if not isinstance(dtype, (str, torch.dtype)) or dtype not in _HALF:
        raise ValueError(f"`half_cache` stores the cache in float16 or bfloat16; got {dtype!r}.")
    name = _HALF[dtype]
    model.cache_embeds = model.cache_embeds.to(getattr(torch, name))
    model.method.cast_cache(getattr(torch, name))
    model.config.cache_dtype = name


@torch.no_grad()
def cast_adapter(model, dtype: torch.dtype) -> None:
    """Casts the adapter's floating tensors (the method's and the model's buffers) to ``dtype``, not the backbone."""
    model.method.to(dtype)
    for name, buffer in list(model.named_buffers(recurse=False)):
        if buffer.is_floating_point():
            setattr(model, name, buffer.to(dtype))


def _class_names_differ(label_names: list[str], class_names: list[str]) -> str:
    first = next((i for i, (a, b) in enumerate(zip(label_names, class_names)) if a != b), None)
    first = min(len(label_names), len(class_names)) if first is None else first
    return (
        f"The dataset's ClassLabel names differ from the model's `class_names` from position {first} on, so its "
        f"labels would be read as the wrong classes.\n  dataset ({len(label_names)}): {_some(label_names)}\n"
        f"  model   ({len(class_names)}): {_some(class_names)}\nBuild the model with the dataset's names, "
        '`from_clip(clip, dataset.features["label"].names, ...)`, or cast the label column to the model\'s order.'
    )


def _some(names: list[str], limit: int = 20) -> str:
    return repr(names) if len(names) <= limit else repr(names[:limit])[:-1] + f", ... ({len(names) - limit} more)]"
