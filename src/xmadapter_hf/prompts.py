"""Prompt templates and the zero-shot classifier weights ``W``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .backbone import encode_texts
from .functional import template_ensemble

__all__ = ["DEFAULT_TEMPLATES", "class_text_embeddings", "format_prompts"]

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
    raw = encode_texts(backbone, tokenizer, prompts, batch_size=batch_size)  # (N * T, C), batched over classes
    return template_ensemble(raw.view(len(class_names), len(templates), -1))
