"""`Memo`: a tensor that a method computes from its weights and the cache alone, remembered at inference while none of
them changes. XMAdapter remembers its text keys with it, Meta-Adapter its adapted classifier ``W^``.

A method holds one `Memo` per remembered tensor, as a submodule, and gets the tensor through it:
``self.key_memo(self.compute_keys, state, weights)``, where ``compute_keys(state)`` is the computation itself and
``weights`` the tensors besides the cache that it reads. Its `resize_cache` gives the memo the shapes of a resized
cache ([`Memo.resize`]), so that a compiled forward finds buffers of its shapes; `AdapterMethod.reset_memo` forgets
them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .base import CacheState

__all__ = ["Memo"]

#: The projections ``W v`` and ``E v`` count as unchanged within this relative difference: eager and compiled code
#: round these sums differently.
PROJECTION_TOLERANCE = 1e-5


class Memo(nn.Module):
    r"""A float32 tensor ``compute(state)`` that depends on ``weights`` and on the cache (``W``, ``E`` and the labels,
    which also decide the layout `state.shots`) only: computed in the forward under autograd, remembered without it.

    The remembered value is reused while a fingerprint of its inputs is unchanged: the weights and the cache labels
    value for value, and ``W v`` (N,) and ``E v`` (NK,) for a fixed vector ``v`` to within float rounding
    (`PROJECTION_TOLERANCE`, relative), so a change to ``W`` or ``E`` is seen unless it is orthogonal to ``v`` or below
    rounding. Writes through `.data` (an EMA update), in-place ops, `load_state_dict` and new tensors are all seen,
    because values are compared, not version counters. The check costs about P + N C + NK C multiply-adds (P: the
    weights' size), one pass over the cache. The decision is a tensor: eagerly it is one host synchronisation on an
    accelerator; inside `torch.compile` it is a `torch.cond`, so a compiled forward recomputes only when an input
    changed and never breaks the graph. Under `torch.export` (ONNX) the value is computed in the graph.

    A cache of another size (another N or NK) is seen by the fingerprint's shapes: eagerly the buffers are reallocated;
    a compiled graph, whose shapes are static, computes without the memo until `resize` (called by the method's
    `resize_cache`, eagerly, where the cache changes size) or an eager call gives the buffers its shapes.

    The buffers are never saved (`persistent=False`) and stay float32 whatever the model's dtype; casting or moving
    the module forgets the value. `computations` counts the computations in eager mode (a Python counter would be a
    recompiling guard under `torch.compile`).

    Args:
        config ([`XMAdapterConfig`]): reads `cache_chunk_size` (the entries projected at a time).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.computations = 0
        self.register_buffer("value", torch.zeros(0), persistent=False)
        # the fingerprint: what is compared exactly (weights, labels), what to within rounding (W v, E v)
        self.register_buffer("exact", torch.zeros(0), persistent=False)
        self.register_buffer("projections", torch.zeros(0), persistent=False)

    def forward(
        self, compute: Callable[[CacheState], torch.Tensor], state: CacheState, weights: Iterable[torch.Tensor]
    ) -> torch.Tensor:
        """``compute(state)``, or the remembered value when autograd is off and the inputs are those it was computed
        from. ``compute`` reads the cache through ``state`` (not the logit scale) and ``weights`` besides it."""
        if torch.is_grad_enabled() or torch.compiler.is_exporting():
            return self._compute(compute, state)
        exact, projections = self.fingerprint(state, weights)
        fits = exact.shape == self.exact.shape and projections.shape == self.projections.shape
        if torch.compiler.is_compiling():
            return self._compiled(compute, state, exact, projections) if fits else compute(state)
        if fits and not bool(self._changed(exact, projections)):
            return self.value
        value = self._compute(compute, state)
        made_in_inference_mode = self.value.is_inference() and not torch.is_inference_mode_enabled()
        if fits and value.shape == self.value.shape and not made_in_inference_mode:
            self.value.copy_(value)
            self.exact.copy_(exact)
            self.projections.copy_(projections)
        else:  # a cache of another size, or buffers made in inference mode (not writable outside it): replaced
            self.value, self.exact, self.projections = value, exact, projections
        return self.value

    def _compute(self, compute, state: CacheState) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            self.computations += 1
        return compute(state)

    def _compiled(self, compute, state: CacheState, exact: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
        """Inside `torch.compile`: a `torch.cond` between computing and the remembered value, then remembering."""

        def recompute(class_embeds, cache_embeds, cache_labels, value):
            cache = {"class_embeds": class_embeds, "cache_embeds": cache_embeds, "cache_labels": cache_labels}
            return compute(dataclasses.replace(state, **cache, logit_scale=1.0))

        def remembered(class_embeds, cache_embeds, cache_labels, value):
            return value.clone()  # a branch's output may not alias its inputs

        operands = (state.class_embeds, state.cache_embeds, state.cache_labels, self.value)
        value = torch.cond(self._changed(exact, projections), recompute, remembered, operands)
        self.value.copy_(value)
        self.exact.copy_(exact)
        self.projections.copy_(projections)
        return value

    def _changed(self, exact: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
        """Whether ``(exact, projections)`` differ from the remembered fingerprint: a 0-dim bool tensor (a forgotten
        fingerprint is NaN, which differs from everything)."""
        remembered = self.projections
        moved = (projections - remembered).abs() > PROJECTION_TOLERANCE * (1.0 + remembered.abs())
        return (exact != self.exact).any() | moved.any()

    def fingerprint(self, state: CacheState, weights: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """What the value is computed from, condensed: ``(weights, labels)`` `(P + NK,)` and ``(W v, E v)``
        `(N + NK,)`, float32, for the fixed direction ``v`` (see the class docstring)."""
        direction = torch.cos(  # no special structure: cosines of multiples of the golden angle
            torch.arange(state.class_embeds.shape[1], device=state.class_embeds.device, dtype=torch.float32)
            * 2.399963229728653
        )  # (C,)
        exact = torch.cat([*(w.detach().reshape(-1).float() for w in weights), state.cache_labels.float()])
        chunk = self.config.cache_chunk_size  # float32 copies chunk by chunk: a 1.6M-entry fp16 cache is 1.6 GiB
        parts = [*state.class_embeds.split(chunk), *state.cache_embeds.split(chunk)]
        return exact, torch.cat([part.float() @ direction for part in parts])

    def resize(
        self, value_shape: tuple[int, ...], weights: Iterable[torch.Tensor], num_classes: int, num_entries: int
    ) -> None:
        """Gives the buffers the shapes of a cache of ``num_classes`` classes and ``num_entries`` entries (the value's:
        ``value_shape``) and forgets the value."""
        shapes = (value_shape, (sum(w.numel() for w in weights) + num_entries,), (num_classes + num_entries,))
        if (self.value.shape, self.exact.shape, self.projections.shape) != tuple(map(torch.Size, shapes)):
            device = self.value.device
            self.value, self.exact, self.projections = (torch.zeros(shape, device=device) for shape in shapes)
        self.reset()

    def reset(self) -> None:
        """Forgets the value (the next forward without autograd computes it)."""
        self.exact = torch.full_like(self.exact, float("nan"))  # a new tensor: the old one may be an inference tensor

    def _apply(self, fn, recurse=True):
        # `model.to(dtype)` casts buffers: the memo stays float32 (its methods compute in float32) and is forgotten.
        super()._apply(fn, recurse)
        self.value, self.projections, self.exact = self.value.float(), self.projections.float(), self.exact.float()
        self.reset()
        return self
