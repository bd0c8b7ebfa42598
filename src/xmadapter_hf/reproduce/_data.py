"""Reads the JSON files shipped in ``reproduce/data`` (once per process; callers get deep copies)."""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def _load(name: str) -> Any:
    text = resources.files("xmadapter_hf.reproduce").joinpath("data", name).read_text(encoding="utf-8")
    return json.loads(text)


def load_data(name: str) -> Any:
    """The parsed content of ``data/<name>``, as a fresh copy the caller may modify."""
    return copy.deepcopy(_load(name))
