"""The one boundary between the adapters and the dual-encoder backbone.

Everything that knows how a backbone returns its embeddings lives here: transformers 5 returns a
`BaseModelOutputWithPooling` from `get_image_features` / `get_text_features` (4.x returned a tensor).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from .functional import l2_normalize

__all__ = [
    "PROBE_TEXT",
    "architecture_hash",
    "backbone_config",
    "backbone_from_config",
    "check_backbone",
    "encode_images",
    "encode_images_with_states",
    "encode_probe_image",
    "encode_probe_text",
    "encode_texts",
    "freeze",
    "match_attention",
    "probe_pixels",
    "projection_dim",
]

#: A fixed string whose text embedding is stored at build time and compared on load (backbone integrity).
PROBE_TEXT = "a photo of a xmadapter probe."
# Backbone config entries that say how a checkpoint was loaded or written, not what the architecture is.
_NOT_ARCHITECTURE = ("_name_or_path", "dtype", "torch_dtype", "transformers_version", "architectures")

# Architecture fields of the text/vision sub-configs that identify a backbone; dtype, paths and versions change on
# ordinary loads and are left out on purpose.
_ARCH_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "image_size",
    "patch_size",
    "num_channels",
    "vocab_size",
    "max_position_embeddings",
    "projection_dim",
    "hidden_act",
)


def check_backbone(model) -> None:
    """Raises `TypeError` unless ``model`` is a dual encoder with `get_image_features` and `get_text_features`."""
    missing = [name for name in ("get_image_features", "get_text_features") if not hasattr(model, name)]
    if missing or not isinstance(model, torch.nn.Module) or not hasattr(model, "logit_scale"):
        raise TypeError(
            "The backbone must be a dual image-text encoder such as transformers' `CLIPModel` (with "
            f"`get_image_features`, `get_text_features` and `logit_scale`); got {type(model).__name__}"
            + (f" without {', '.join(missing)}." if missing else ".")
        )


def projection_dim(model) -> int:
    """`C`, the dimension of the backbone's joint embedding space."""
    dim = getattr(model.config, "projection_dim", None)
    if dim is None:
        raise TypeError(f"Cannot read `projection_dim` from the backbone config {type(model.config).__name__}.")
    return int(dim)


def _pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Raw (unnormalised) image embeddings, (B, 3, H, W) -> (B, C)."""
    param = next(model.parameters())
    return _pooled(model.get_image_features(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype)))


@torch.no_grad()
def encode_images_with_states(model, pixel_values: torch.Tensor, **outputs):
    """The vision tower's output with the raw image embeddings as `pooler_output`; ``outputs`` (`output_hidden_states`,
    `output_attentions`) ask it for its hidden states and attentions, as `CLIPForImageClassification` does."""
    param = next(model.parameters())
    pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
    return model.get_image_features(pixel_values=pixel_values, return_dict=True, **outputs)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Raw text embeddings of ``texts``, batched, (T,) -> (T, C) in float32."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        chunks.append(_pooled(model.get_text_features(**tokens)).float())
    return torch.cat(chunks)


def freeze(model) -> None:
    """Freezes every backbone parameter and puts it in eval mode (dropout off)."""
    model.requires_grad_(False)
    model.eval()


def match_attention(model, requested: str | dict | None) -> None:
    """Makes ``model``'s attention implementation and its backbone's one and the same.

    ``requested`` (`config._attn_implementation` as given before construction, which `_from_config(...,
    attn_implementation=)` and `AutoModelForImageClassification.from_config` set) goes to the backbone and every
    sub-model and sub-config of it (`set_attn_implementation`, which checks that the backbone supports it); with none
    requested, the adapter's config takes the backbone's (a backbone loaded with `attn_implementation=` keeps it).
    The adapter's config is a different object from the backbone's, so nothing else would carry the request across.
    """
    own = getattr(model.clip.config, "_attn_implementation", None)  # None: not a transformers model (open_clip)
    if requested is None:
        if own is not None:
            model.config._attn_implementation_internal = own
    elif hasattr(model.clip, "set_attn_implementation"):
        model.clip.set_attn_implementation(model.config._attn_implementation)
    else:
        raise ValueError(
            f"attn_implementation={requested!r} was asked for, but the backbone ({type(model.clip).__name__}) is "
            "not a transformers model and has no attention implementation to set."
        )


def architecture_hash(model) -> str:
    """A sha256 over the backbone's architecture fields only (sizes, layers, heads, image/patch size, vocab)."""
    config = model.config
    described = {"model_type": getattr(config, "model_type", type(config).__name__)}
    for sub in ("text_config", "vision_config"):
        sub_config = getattr(config, sub, None)
        if sub_config is not None:
            described[sub] = {k: getattr(sub_config, k, None) for k in _ARCH_FIELDS if hasattr(sub_config, k)}
    described["projection_dim"] = getattr(config, "projection_dim", None)
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def probe_pixels(model) -> torch.Tensor:
    """A fixed probe image, (1, channels, S, S) at the backbone's input size: smooth waves of about unit amplitude.

    Its embedding is stored at build time and compared on load (vision-tower integrity, as `PROBE_TEXT` for the text
    tower). It is made of pixel values directly, in the normalised range a processor produces, so that the check
    needs no image processor and no random draw.
    """
    vision = getattr(model.config, "vision_config", None)
    size = getattr(vision, "image_size", None)
    if not isinstance(size, int):
        raise TypeError(f"Cannot read the input image size of the backbone config {type(model.config).__name__}.")
    channels = getattr(vision, "num_channels", 3)
    grid = torch.linspace(-1.0, 1.0, size)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")  # (S, S) each
    waves = [torch.sin(torch.pi * (c + 1) * xs + c) * torch.cos(torch.pi * (c + 2) * ys) for c in range(channels)]
    return torch.stack(waves)[None]  # (1, channels, S, S)


def encode_probe_image(model) -> torch.Tensor:
    """The normalised float32 embedding (C,) of [`probe_pixels`]."""
    embed = encode_images(model, probe_pixels(model)).float()[0]  # (C,)
    return embed / embed.norm().clamp(min=1e-12)


def encode_probe_text(model, tokenizer) -> torch.Tensor:
    """The normalised float32 embedding (C,) of [`PROBE_TEXT`] (text-tower integrity)."""
    return l2_normalize(encode_texts(model, tokenizer, [PROBE_TEXT]))[0]


def backbone_config(model) -> dict:
    """The backbone's architecture as a JSON-ready dict (its config's non-default entries and `model_type`).

    Recorded in the adapter config, so that `XMAdapterForImageClassification(config)` can build a backbone of the
    same architecture (randomly initialised, as `from_config` does for every model); loading paths and dtypes are
    left out.
    """
    described = model.config.to_diff_dict()
    described["model_type"] = model.config.model_type
    for entry in (described, *(v for v in described.values() if isinstance(v, dict))):
        for key in _NOT_ARCHITECTURE:
            entry.pop(key, None)
    return described


def backbone_from_config(described: dict):
    """A randomly initialised backbone (eval mode, frozen) of the architecture that [`backbone_config`] described.

    The `model_type` picks the class through transformers' `AutoModel` (`clip` -> `CLIPModel`), so another dual
    encoder recorded the same way builds its own class.
    """
    from transformers import AutoConfig, AutoModel

    if not isinstance(described, dict) or not isinstance(described.get("model_type"), str):
        raise ValueError(f"`backbone_config` must be a dict with a `model_type`; got {described!r:.200}.")
    fields = {k: v for k, v in described.items() if k != "model_type"}
    model = AutoModel.from_config(AutoConfig.for_model(described["model_type"], **fields))
    check_backbone(model)
    freeze(model)
    return model
