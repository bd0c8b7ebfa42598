"""Per-dataset prompt templates of CLIP, Tip-Adapter and CoOp, shipped as data (``data/templates.json``).

- ``"clip"``: CLIP's own templates (``data/prompts.md`` of openai/CLIP; ImageNet and its variants: the 80 templates
  of its ImageNet prompt-engineering notebook).
- ``"tip-adapter"``: Tip-Adapter's (one template per dataset, ImageNet a 7-template ensemble); Meta-Adapter uses
  the same ones. These are also the ``prompt_templates`` of [`xmadapter_hf.data.defaults.dataset_defaults`].
- ``"coop"``: the single template per dataset of CoOp's zero-shot CLIP baseline.
"""

from __future__ import annotations

from typing import Any

from ._data import load_data
from .readers import canonical_dataset_name

__all__ = ["list_template_sources", "prompt_templates", "template_source"]


def list_template_sources() -> list[str]:
    """The template sets [`prompt_templates`] accepts: ``['clip', 'coop', 'tip-adapter']``."""
    return sorted(load_data("templates.json")["templates"])


def template_source(source: str) -> dict[str, Any]:
    """Where a template set comes from: repository, commit, path and a note."""
    sources = load_data("templates.json")["sources"]
    if source not in sources:
        raise ValueError(f"Unknown template source {source!r}; known: {', '.join(list_template_sources())}.")
    return sources[source]


def prompt_templates(dataset: str, source: str = "clip") -> list[str]:
    """The prompt templates of one dataset in one template set; each contains ``{}`` for the class name.

    Args:
        dataset (`str`): a benchmark dataset (any name [`canonical_dataset_name`] accepts).
        source (`str`, *optional*, defaults to `"clip"`): ``"clip"``, ``"tip-adapter"`` or ``"coop"``.

    Returns:
        `list[str]`: the templates, in the source's order.

    Raises:
        ValueError: unknown source or dataset, or a set without templates for the dataset (Tip-Adapter has none
            for the ImageNet variants).

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import prompt_templates
    >>> prompt_templates("dtd", "tip-adapter"), len(prompt_templates("ImageNet", "clip"))
    (['{} texture.'], 80)
    ```
    """
    table = load_data("templates.json")["templates"]
    if source not in table:
        raise ValueError(f"Unknown template source {source!r}; known: {', '.join(list_template_sources())}.")
    canonical = canonical_dataset_name(dataset)
    if canonical not in table[source]:
        having = [name for name in list_template_sources() if canonical in table[name]]
        raise ValueError(
            f"The {source!r} templates do not cover {canonical!r} (its code has no reader for it); "
            f"sources that do: {', '.join(having)}."
        )
    return table[source][canonical]
