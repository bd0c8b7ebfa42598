"""An optional open_clip backend (``pip install 'xmadapter-hf[open_clip]'``): CLIP ResNets such as RN50.

transformers has no CLIP ResNet, and the papers' main tables use RN50. [`OpenCLIPBackbone`] wraps an open_clip model
in the dual-encoder interface the adapters use (``get_image_features``, ``get_text_features``, ``logit_scale``, a
``config`` with ``projection_dim`` and ``vision_config.image_size``), and [`OpenCLIPProcessor`] pairs open_clip's
tokenizer with a `CLIPImageProcessor` set to the model's input size and normalisation (open_clip's CLIP
preprocessing: resize the shortest side, bicubic, centre crop, normalise). Then `from_clip`, `fit`,
`extract_embeddings` and `xmadapter reproduce --model open_clip:RN50/openai` work as with transformers' CLIP.

open_clip is imported lazily, only when a backbone is loaded. The open_clip calls used are
``open_clip.create_model_and_transforms(arch, pretrained=tag)``, ``open_clip.get_tokenizer(arch)``, and the model's
``encode_image``, ``encode_text``, ``logit_scale`` and ``visual.image_size`` (``visual.image_mean`` /
``visual.image_std`` when present). The tests run it against a stand-in module implementing exactly these calls:
open_clip needs torchvision, which does not import beside the CPU torch wheel of the machines this was built on,
and its weights cannot be downloaded there.

An adapter built on it records ``base_model_name_or_path = "open_clip:ARCH/PRETRAINED"``; reload it with
``XMAdapterForImageClassification.from_pretrained(path, clip_model=backbone, processor=processor)`` where
``backbone, processor = load_open_clip("ARCH/PRETRAINED")``.
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["OPEN_CLIP_EXTRA", "OpenCLIPBackbone", "OpenCLIPProcessor", "OpenCLIPUnavailableError", "load_open_clip"]

OPEN_CLIP_EXTRA = "pip install 'xmadapter-hf[open_clip]'"
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenCLIPUnavailableError(ImportError):
    """open_clip is not importable; the message names the extra and the reason."""


class _VisionConfig:
    def __init__(self, image_size: int, num_channels: int = 3):
        self.image_size, self.num_channels = image_size, num_channels


class OpenCLIPConfig:
    """What the adapters read from a backbone config: ``model_type``, ``projection_dim``, ``vision_config``."""

    model_type = "open_clip"

    def __init__(self, name: str, projection_dim: int, image_size: int):
        self.name, self.projection_dim = name, projection_dim
        self.vision_config = _VisionConfig(image_size)
        self.text_config = None

    def to_diff_dict(self) -> dict:
        return {"open_clip_model": self.name, "projection_dim": self.projection_dim,
                "vision_config": {"image_size": self.vision_config.image_size}}  # fmt: skip


class OpenCLIPBackbone(torch.nn.Module):
    """An open_clip model behind the dual-encoder interface of transformers' `CLIPModel`."""

    def __init__(self, model, name: str):
        super().__init__()
        self.model = model
        self.name_or_path = f"open_clip:{name}"
        size = model.visual.image_size
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        with torch.no_grad():
            dim = int(model.encode_image(torch.zeros(1, 3, size, size)).shape[-1])
        self.config = OpenCLIPConfig(name, dim, size)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale  # log of the temperature, as `CLIPModel.logit_scale`

    def get_image_features(self, pixel_values: torch.Tensor, **_) -> torch.Tensor:
        return self.model.encode_image(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask=None, **_) -> torch.Tensor:
        return self.model.encode_text(input_ids)


class _Tokenizer:
    """open_clip's tokenizer (texts -> (B, context) ids) behind the call transformers' tokenizers answer."""

    def __init__(self, tokenize):
        self.tokenize = tokenize

    def __call__(self, texts, padding=True, truncation=True, return_tensors="pt", **_):
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.as_tensor(self.tokenize(texts)).long()
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class OpenCLIPProcessor:
    """open_clip's tokenizer (``tokenizer``) and a matching `CLIPImageProcessor` (``image_processor``)."""

    def __init__(self, tokenize, image_size: int, mean=_OPENAI_MEAN, std=_OPENAI_STD):
        from transformers import CLIPImageProcessor

        self.tokenizer = _Tokenizer(tokenize)
        self.image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            image_mean=list(mean), image_std=list(std), do_convert_rgb=True,
        )  # fmt: skip

    def __call__(self, images=None, text=None, **kwargs):
        out = {}
        if images is not None:
            out.update(self.image_processor(images=images, return_tensors="pt"))
        if text is not None:
            out.update(self.tokenizer(text))
        return out


def _import_open_clip():
    try:
        return importlib.import_module("open_clip")
    except Exception as error:  # ImportError, or torchvision failing inside it
        raise OpenCLIPUnavailableError(
            f"the open_clip backend needs the open_clip extra ({OPEN_CLIP_EXTRA}); importing open_clip failed: "
            f"{type(error).__name__}: {error}"
        ) from error


def load_open_clip(name: str, device: str | torch.device | None = None):
    """``(backbone, processor)`` for ``"ARCH/PRETRAINED"`` (e.g. ``"RN50/openai"``), frozen, in eval mode."""
    if not isinstance(name, str) or name.count("/") != 1 or not all(name.split("/")):
        raise ValueError(f"an open_clip model is named ARCH/PRETRAINED, e.g. open_clip:RN50/openai; got {name!r}")
    open_clip = _import_open_clip()
    arch, pretrained = name.split("/")
    created = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    model = created[0] if isinstance(created, tuple) else created
    if device is not None:
        model = model.to(device)
    model.eval().requires_grad_(False)
    backbone = OpenCLIPBackbone(model, name)
    mean = tuple(getattr(model.visual, "image_mean", None) or _OPENAI_MEAN)
    std = tuple(getattr(model.visual, "image_std", None) or _OPENAI_STD)
    size = backbone.config.vision_config.image_size
    processor = OpenCLIPProcessor(open_clip.get_tokenizer(arch), size, mean, std)
    return backbone, processor
