"""Prompt templates and the class text side of a model: the zero-shot classifier weights ``W`` and the text probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import backbone as bb
from .functional import template_ensemble

__all__ = ["DEFAULT_TEMPLATES", "class_text_embeddings", "encode_class_texts", "format_prompts"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)


def format_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: ``[t.format(c) for c in class_names for t in templates]``."""
    for template in templates:
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"Prompt templates must be strings containing '{{}}'; got {template!r}.")
    return [template.format(name.replace("_", " ")) for name in class_names for template in templates]


@torch.no_grad()
def class_text_embeddings(
    backbone, tokenizer, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """``W``: for each class, the text embeddings of all templates normalised, averaged and renormalised.

    Returns:
        `torch.Tensor` of shape `(N, C)`, float32, L2-normalised rows.
    """
    prompts = format_prompts(class_names, templates)
    raw = bb.encode_texts(backbone, tokenizer, prompts, batch_size=batch_size)  # (N * T, C), batched over classes
    return template_ensemble(raw.view(len(class_names), len(templates), -1))


@torch.no_grad()
def encode_class_texts(model, batch_size: int = 256) -> None:
    """Encodes a model's class prompts into ``W`` (`class_embeds`) and the probe text into `probe_text_embed` with its
    backbone, and records the backbone's architecture hash (`from_clip`, and `from_pretrained` with
    `rebuild_text_embeddings=True`)."""
    tokenizer = getattr(model.processor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "Encoding the class prompts needs the backbone's tokenizer: pass `processor=` (a CLIPProcessor)."
        )
    config = model.config
    weights = class_text_embeddings(model.clip, tokenizer, config.class_names, config.prompt_templates, batch_size)
    model.class_embeds.copy_(weights)
    model.probe_text_embed.copy_(bb.encode_probe_text(model.clip, tokenizer))
    config.backbone_fingerprint = {
        **(config.backbone_fingerprint or {}),
        "architecture_hash": bb.architecture_hash(model.clip),
    }
