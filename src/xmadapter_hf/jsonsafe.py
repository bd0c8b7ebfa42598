"""JSON that every parser reads: a number that is not finite (NaN, +-Infinity) is written as `null`.

Python's `json` writes `NaN` and `Infinity` by default, which are not JSON (RFC 8259): `jq`, JavaScript's
`JSON.parse` and most other readers reject the whole file. Every JSON file or output of the library (`report.json`,
`results.json`, `--json` outputs, reproduce's records) goes through [`dumps`], which replaces such a number by `null`
and then writes with `allow_nan=False`, so nothing non-finite can slip through.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["dumps", "finite"]


def finite(payload: Any) -> Any:
    """``payload`` with every float that is not finite replaced by `None`, through dicts, lists and tuples."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {key: finite(value) for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite(value) for value in payload]
    return payload


def dumps(payload: Any, **kwargs) -> str:
    """`json.dumps` of [`finite`]``(payload)`` with ``allow_nan=False`` (other keyword arguments as `json.dumps`).

    Example:

    ```python
    >>> from xmadapter_hf.jsonsafe import dumps
    >>> dumps({"score": float("nan"), "logit": [1.5, float("inf")]})
    '{"score": null, "logit": [1.5, null]}'
    ```
    """
    return json.dumps(finite(payload), allow_nan=False, **kwargs)
