"""Argument checks, one copy of each, shared by the whole package.

Every check raises a `TypeError` (the wrong kind of value) or a `ValueError` (the right kind, a wrong value) whose
message names the argument, says what was expected and shows what was given. The config's fields use the same checks
as validators of `huggingface_hub.dataclasses.strict` (see `configuration_xmadapter`).
"""

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "at_least",
    "check_choice",
    "check_int",
    "check_labels",
    "check_number",
    "check_pair",
    "check_tensor",
    "describe",
    "in_interval",
    "one_of",
]


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages: dtype and shape of a tensor, else the type name."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} ({value!r:.80})"


def check_int(name: str, value: Any, minimum: int | None = None, *, allow_none: bool = False) -> int | None:
    """``value`` as an `int` (a `bool` is refused: a flag given for a count is a mistake), at least ``minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = "an int" + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {expected}, got {describe(value)}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def check_number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a finite `float` in the interval from ``low`` to ``high`` (each end open or closed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        expected = "a real number" + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be {expected}, got {describe(value)}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise ValueError(f"`{name}` must lie in {interval}, got {value!r}.")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value``, one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return value


def check_pair(name: str, value: Any, meaning: str) -> tuple[Any, Any]:
    """The two elements of a pair (a list or tuple of length 2; ``meaning`` names them in the message)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"`{name}` must be a pair ({meaning}), got {value!r}.")
    return value[0], value[1]


def check_tensor(
    name: str, value: Any, ndim: int, *, rows: int | None = None, cols: int | None = None, floating: bool = True
) -> torch.Tensor:
    """A real floating (or integer, ``floating=False``) tensor with ``ndim`` dimensions and the given sizes."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {describe(value)}.")
    if floating and (value.is_complex() or not value.is_floating_point()):
        raise TypeError(f"`{name}` must be a real floating-point tensor, got dtype {value.dtype}.")
    if not floating and (value.dtype.is_floating_point or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"`{name}` must be an integer tensor, got dtype {value.dtype}.")
    sizes = (rows, cols)[:ndim]
    if value.ndim != ndim or any(want is not None and got != want for want, got in zip(sizes, value.shape)):
        expected = ", ".join("*" if size is None else str(size) for size in sizes)
        raise ValueError(f"`{name}` must have shape ({expected}{',' if ndim == 1 else ''}), got {tuple(value.shape)}.")
    return value


def check_labels(name: str, value: Any, length: int, num_classes: int) -> torch.Tensor:
    """Integer class ids of shape ``(length,)`` in ``[0, num_classes)``, as int64."""
    value = check_tensor(name, value, 1, rows=length, floating=False)
    if length and (int(value.min()) < 0 or int(value.max()) >= num_classes):
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes}) (num_classes={num_classes}), "
            f"got values in [{int(value.min())}, {int(value.max())}]."
        )
    return value.long()


# ------------------------------------------------------------------------ validators of config fields (strict)
def in_interval(name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable:
    """A `validated_field` validator: a number (or None) in the interval; the type is checked by `strict`."""

    def validator(value: Any) -> None:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            check_number(name, value, low, high, low_open=low_open, high_open=high_open)

    return validator


def at_least(name: str, minimum: int) -> Callable:
    """A `validated_field` validator: an int (or None) of at least ``minimum``."""

    def validator(value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")

    return validator


def one_of(name: str, choices: Sequence[str]) -> Callable:
    """A `validated_field` validator: one of ``choices``."""

    def validator(value: Any) -> None:
        check_choice(name, value, choices)

    return validator
