"""Per-dataset defaults of the papers' 11 few-shot benchmarks, kept as data in ``data/datasets.json``.

The values are Tip-Adapter's configs (docs/methods.md): ``search_scale`` is ``[sharpness_max,
residual_ratio_max]`` for [`~xmadapter_hf.training.search.search_hyperparameters`] (the residual ratio's range is for
``s = 100``), ``search_step`` ``[200, 20]``, ``init_residual_ratio`` Tip-Adapter's initial alpha,
``init_sharpness`` 1, ``augment_views`` 10, ``learning_rate`` 1e-3 and ``epochs`` 20 (EuroSAT 100). The prompt
templates are Tip-Adapter's / CoOp's: one per dataset, a 7-template ensemble for ImageNet.

Keeping them as JSON rather than Python constants lets a user read and diff them without running code, and lets
a command-line tool list them.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

__all__ = ["dataset_defaults", "list_datasets"]


@lru_cache(maxsize=1)
def _load() -> dict[str, dict[str, Any]]:
    # Read once; callers only ever get deep copies, so the cached dict is never mutated.
    text = resources.files("xmadapter_hf").joinpath("data", "datasets.json").read_text(encoding="utf-8")
    return json.loads(text)


def list_datasets() -> list[str]:
    """The names accepted by [`dataset_defaults`], sorted.

    Example:

    ```python
    >>> from xmadapter_hf.data.defaults import list_datasets
    >>> list_datasets()[:3]
    ['caltech101', 'dtd', 'eurosat']
    ```
    """
    return sorted(_load())


def dataset_defaults(name: str) -> dict[str, Any]:
    """The defaults of one benchmark dataset, as a fresh dict the caller may modify.

    Args:
        name (`str`):
            One of [`list_datasets`], case-insensitive (``"ImageNet"`` and ``"imagenet"`` are the same).

    Returns:
        `dict[str, Any]` with keys ``search_scale`` (`list[float]`, [sharpness_max, residual_ratio_max]),
        ``search_step`` (`list[int]`), ``init_sharpness`` (`float`), ``init_residual_ratio`` (`float`),
        ``augment_views`` (`int`), ``learning_rate`` (`float`), ``epochs`` (`int`) and ``prompt_templates``
        (`list[str]`, each containing ``{}``).

    Raises:
        `TypeError`: ``name`` is not a string.
        `ValueError`: ``name`` is not a known dataset; the message lists the known names.

    Example:

    ```python
    >>> from xmadapter_hf.data.defaults import dataset_defaults
    >>> defaults = dataset_defaults("ImageNet")
    >>> defaults["search_scale"], defaults["init_residual_ratio"], len(defaults["prompt_templates"])
    ([7.0, 3.0], 1.17, 7)
    ```
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a dataset name (str), got {type(name).__name__} ({name!r}).")
    table = _load()
    key = name.lower()
    if key not in table:
        raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(sorted(table))}.")
    return copy.deepcopy(table[key])
