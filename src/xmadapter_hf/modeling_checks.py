"""What `XMAdapterForImageClassification` checks before it builds or runs: the backbone a config is built on, the
model's own buffers, and the inputs of `forward` (each refused with a clear message before any state changes)."""

import torch

from . import backbone as bb
from .configuration_xmadapter import XMAdapterConfig
from .methods import get_method_class, registered_methods
from .selection import is_pending, method_class, pending_message
from .validation import describe

__all__ = [
    "backbone_seed",
    "check_inputs",
    "check_trainable",
    "checked_backbone",
    "expected_adapter_shapes",
    "own_buffers",
]


def own_buffers(config: XMAdapterConfig, dim: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The model's own buffers (name -> (shape, dtype)); the method's tensors come on top."""
    n, entries = config.num_classes, config.cache_size
    return {
        "class_embeds": ((n, dim), torch.float32),  # W, (N, C)
        "cache_embeds": ((entries, dim), getattr(torch, config.cache_dtype)),  # E, (NK, C)
        "cache_labels": ((entries,), torch.long),  # (NK,)
        "probe_text_embed": ((dim,), torch.float32),  # backbone integrity: the text tower
        "probe_image_embed": ((dim,), torch.float32),  # backbone integrity: the vision tower
    }


def expected_adapter_shapes(config: XMAdapterConfig, dim: int) -> dict[str, tuple[int, ...]]:
    """The shape of every adapter tensor `config` describes (see `XMAdapterForImageClassification.
    expected_adapter_shapes`), computed on the meta device: nothing is allocated."""
    shapes = {name: shape for name, (shape, _) in own_buffers(config, dim).items()}
    with torch.device("meta"):
        method = method_class(config.method)(config, dim)
    shapes.update({f"method.{k}": tuple(v.shape) for k, v in method.state_dict().items()})
    return shapes


def checked_backbone(config: XMAdapterConfig, clip_model=None) -> tuple[object, int]:
    """``(backbone, projection dim)`` for the model's constructor: ``clip_model`` (or, when `None`, a randomly
    initialised backbone of the architecture the config records), checked against the config before anything is
    built."""
    if not config.class_names:
        raise ValueError("`config.class_names` is empty: an adapter needs at least one class.")
    if clip_model is None:
        clip_model = _backbone_of(config)
    bb.check_backbone(clip_model)
    dim = bb.projection_dim(clip_model)
    if config.projection_dim is not None and config.projection_dim != dim:
        raise ValueError(
            f"The adapter was built for a backbone of projection dim {config.projection_dim}, but the given "
            f"backbone has projection dim {dim}."
        )
    return clip_model, dim


def _backbone_of(config: XMAdapterConfig):
    """A randomly initialised backbone of the architecture `config.backbone_config` records (for `cls(config)`)."""
    if config.backbone_config is None:
        raise ValueError(
            "This config records no backbone architecture (`backbone_config`; configs written by xmadapter-hf 0.1.0 "
            "have none), so `XMAdapterForImageClassification(config)` cannot build one. Load the adapter with "
            "`XMAdapterForImageClassification.from_pretrained(path)`, build one with `from_clip(...)`, or pass "
            "`clip_model=`."
        )
    # seeded, so that the backbone is a function of the config alone: `from_pretrained` rebuilds the same one
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(backbone_seed(config))
        return bb.backbone_from_config(config.backbone_config)


def backbone_seed(config: XMAdapterConfig) -> int:
    """The seed of a backbone built from `config.backbone_config`: `backbone_init_seed`, else the adapter's seed."""
    if config.backbone_init_seed is not None:
        return config.backbone_init_seed
    return config.seed if config.seed is not None else 0


def check_inputs(model, pixel_values, image_embeds, labels, cache_index) -> None:
    """The inputs of `model.forward`: exactly one of pixels and embeddings, labels and cache positions that fit."""
    if is_pending(model):
        raise ValueError(pending_message("classify"))
    batch = _batch_size(model, pixel_values, image_embeds)
    if model.method.uses_cache and model.config.cache_size == 0:
        raise ValueError(f"Method {model.config.method!r} needs a cache: call `model.build_cache(dataset)` first.")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (batch,):
            raise ValueError(f"`labels` must be an integer tensor of shape ({batch},); got {describe(labels)}.")
        valid = labels[labels != -100]
        if valid.numel() and (valid.min() < 0 or valid.max() >= model.config.num_classes):
            raise ValueError(
                f"`labels` must lie in [0, {model.config.num_classes - 1}] (or be -100); "
                f"got values in [{int(valid.min())}, {int(valid.max())}]."
            )
    if cache_index is not None:
        if not isinstance(cache_index, torch.Tensor) or cache_index.shape != (batch,):
            raise ValueError(
                f"`cache_index` must be an integer tensor of shape ({batch},); got {describe(cache_index)}."
            )
        if cache_index.numel() and cache_index.max() >= model.config.cache_size:
            raise ValueError(f"`cache_index` must be < cache_size ({model.config.cache_size}), or -1 for none.")
    if model.training and labels is not None and torch.is_grad_enabled():
        check_trainable(model)


def _batch_size(model, pixel_values, image_embeds) -> int:
    if (pixel_values is None) == (image_embeds is None):
        raise ValueError("Pass exactly one of `pixel_values` (B, 3, H, W) and `image_embeds` (B, C).")
    if pixel_values is not None:
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
            raise TypeError(f"`pixel_values` must be a floating-point tensor; got {describe(pixel_values)}.")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"`pixel_values` must have shape (B, 3, H, W); got {tuple(pixel_values.shape)}.")
        return pixel_values.shape[0]
    if not isinstance(image_embeds, torch.Tensor) or not image_embeds.is_floating_point():
        raise TypeError(f"`image_embeds` must be a floating-point tensor; got {describe(image_embeds)}.")
    if image_embeds.ndim != 2 or image_embeds.shape[1] != model.embed_dim:
        raise ValueError(f"`image_embeds` must have shape (B, {model.embed_dim}); got {tuple(image_embeds.shape)}.")
    return image_embeds.shape[0]


def check_trainable(model) -> None:
    """Refuses to train a training-free method, or learned cache keys frozen in half precision (`half_cache()`)."""
    if is_pending(model):
        raise ValueError(pending_message("be trained (the Trainer trains one method; `fit` chooses one)"))
    if not model.method.trainable:
        trainable = [name for name in registered_methods() if get_method_class(name).trainable]
        raise ValueError(
            f"Method {model.config.method!r} is training-free: it has no trainable parameters. Train one of "
            f"{', '.join(map(repr, trainable))}, or evaluate without training."
        )
    # `half_cache()` freezes the learned keys; `model.to(torch.bfloat16)` keeps them trainable in bf16
    for name in model.method.cache_parameters:
        learned = getattr(model.method, name)
        if not learned.requires_grad:
            raise ValueError(
                f"The learned cache keys are stored in {learned.dtype} for inference (`half_cache()`); call "
                "`model.float_cache()` before training."
            )
