"""GDA (Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024; docs/methods.md):
Gaussian discriminant analysis on the few-shot images' embeddings, added to zero-shot CLIP. Training-free, closed
form.

Everything GDA is lives in this file: its config field, the estimate of its statistics from every augmented view
of the support images (the `prepare_support` / `apply_support` hooks), its forward and its search space. The official
code is `main_few_shots.py` of the mrflogs/ICLR24 repository (commit 560fe21); the line numbers below are that file's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict, validated_field

from .. import functional as Fn
from ..validation import in_interval
from .base import AdapterMethod, CacheState, LogitTerm, MethodOutput, SearchSpace, register_method

__all__ = [
    "GDA",
    "GDAFields",
    "GaussianDiscriminant",
    "GaussianStatistics",
    "MIN_SPREAD",
    "OFFICIAL_ALPHA_GRID",
    "class_means",
    "discriminant",
    "gaussian_discriminant",
    "gaussian_logits",
]

logger = logging.getLogger(__name__)

#: The official code's grid of alpha (`main_few_shots.py` line 70), for OpenAI CLIP's logit scale 100.
OFFICIAL_ALPHA_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
#: The logit scale the official code hard-codes (`main_few_shots.py` lines 71 and 80).
_REFERENCE_LOGIT_SCALE = 100.0
#: GDA's buffers, written by `save_pretrained`.
_STATISTICS = ("gaussian_weight", "gaussian_bias", "precision")
#: The least total within-class variance ``tr(cov)`` counted as spread. The views are unit vectors (a variance of at
#: most 1); below this their differences are float rounding (float32 rounds their components at about 6e-8), as when
#: every view of an image is the same.
MIN_SPREAD = 1e-10
#: Support rows per chunk of the estimate (its float64 transients stay at chunk x C).
_CHUNK = 8192


@strict
@dataclass(kw_only=True)
class GDAFields:
    r"""GDA's fields of [`XMAdapterConfig`].

    Args:
        gaussian_ratio (`float`, *optional*, defaults to 1.0):
            `alpha`, the weight of the Gaussian discriminant's logits: `logits = s f W^T + alpha (f W_g^T + b)`.
            Searched on validation by `fit` (the official code's values are on OpenAI CLIP's logit scale 100; see
            docs/methods.md).
    """

    gaussian_ratio: int | float = validated_field(
        in_interval("gaussian_ratio", 0.0, float("inf"), high_open=True), default=1.0, metadata={"symbol": "alpha"}
    )


@dataclass
class GaussianDiscriminant:
    """GDA's statistics of a support set (see [`gaussian_discriminant`]).

    Attributes:
        means (`torch.Tensor` of shape `(N, C)`): ``mu``, the class means of the normalised views.
        precision (`torch.Tensor` of shape `(C, C)`): ``Sigma^-1``, the shrunk shared precision matrix.
        weight (`torch.Tensor` of shape `(N, C)`): ``mu Sigma^-1`` (the official ``W``, transposed).
        bias (`torch.Tensor` of shape `(N,)`): ``b = log p - mu Sigma^-1 mu^T / 2`` with uniform priors ``p = 1 / N``.
        num_views (`int`): ``n``, the views the covariance was estimated from.
    """

    means: torch.Tensor
    precision: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    num_views: int


def _normalized_rows(views: torch.Tensor, dtype: torch.dtype, device) -> Iterator[tuple[torch.Tensor, slice]]:
    """``(normalised views of a chunk (n, C), the chunk's rows)`` for every view and chunk of images, in ``dtype``
    (one chunk at a time: a float64 copy of every view of a large support set would double its memory)."""
    for view in views:
        for start in range(0, view.shape[0], _CHUNK):
            rows = slice(start, start + _CHUNK)
            yield Fn.l2_normalize(view[rows].to(device=device, dtype=dtype)), rows


def class_means(views: torch.Tensor, labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``mu`` `(N, C)`: each class's mean over all the L2-normalised views of its images (lines 49 and 56), in
    ``dtype``. A class without images is refused."""
    counts = torch.bincount(labels, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise ValueError(
            f"GDA needs support images of every class to estimate its mean; none for the classes {missing[:10]} "
            f"({len(missing)} classes)."
        )
    device = labels.device
    sums = torch.zeros(num_classes, views.shape[-1], dtype=dtype, device=device)
    for normalized, rows in _normalized_rows(views, dtype, device):
        sums.index_add_(0, labels[rows], normalized)
    return sums / (counts * views.shape[0]).to(dtype)[:, None]


def _no_spread_message(views: torch.Tensor) -> str:
    per_image = f"{views.shape[0]} view{'s' if views.shape[0] > 1 else ''} each"
    return (
        "GDA estimates a covariance shared by the classes from how each class's views spread around its mean, but "
        f"these {views.shape[1]} support images ({per_image}) have no spread: every class has a single view (1 shot "
        "without augmented views) or identical ones. Its logits would be zero-shot CLIP's. Give augmented views "
        "(`build_cache(..., augment_views=10)` or `fit(..., augment_views=10)`, the official code's 10; `set_cache` "
        "takes raw embeddings (V, NK, C) with every view), more shots, or use another method."
    )


def gaussian_discriminant(
    views: torch.Tensor, labels: torch.Tensor, num_classes: int, *, dtype: torch.dtype | None = None
) -> GaussianDiscriminant:
    r"""GDA's closed form from the raw embeddings of every augmented view of the support images.

    The official computation (`main_few_shots.py`, lines 41-64), with ``x`` the L2-normalised views:

    ```
    mu_c      = mean of x over the views of class c                               # line 56
    S         = sum over all views of (x - mu_y)(x - mu_y)^T = (n - 1) cov        # lines 59-60
    Sigma^-1  = d pinv((n - 1) cov + tr(cov) I)                                   # line 60: the shrinkage
    W         = mu Sigma^-1,   b = log(1 / N) - diag(mu Sigma^-1 mu^T) / 2        # lines 62-64
    ```
    with ``d`` the embedding width, ``n`` the number of views and ``cov`` their unbiased covariance. The official
    ``cov()`` subtracts the mean of the class-centred views, which is exactly zero (each class's deviations from its
    own mean sum to zero), so it is left out. Computed over chunks of views in ``dtype`` (default: that of
    ``views``).

    Args:
        views (`torch.Tensor` of shape `(V, M, C)`): raw embeddings of V views of M images (any number per class).
        labels (`torch.LongTensor` of shape `(M,)`): each image's class in ``[0, num_classes)``.
        num_classes (`int`): N; every class must have images.
        dtype (`torch.dtype`, *optional*): the precision of the computation.

    Returns:
        [`GaussianDiscriminant`].

    Raises:
        ValueError: a class without images, or views without spread (1 shot and one view per image, or identical
            views: ``tr(cov)`` at most `MIN_SPREAD`): the covariance would be zero and GDA's logits zero-shot CLIP's.
    """
    dtype = views.dtype if dtype is None else dtype
    labels = labels.long()
    means = class_means(views, labels, num_classes, dtype)
    width = views.shape[-1]
    scatter = torch.zeros(width, width, dtype=dtype, device=labels.device)
    for normalized, rows in _normalized_rows(views, dtype, labels.device):
        centred = normalized - means[labels[rows]]
        scatter.addmm_(centred.t(), centred)  # (C, n) @ (n, C)
    num_views = views.shape[0] * views.shape[1]
    trace = scatter.trace() / (num_views - 1) if num_views > 1 else scatter.new_zeros(())
    if not bool(trace > MIN_SPREAD):
        raise ValueError(_no_spread_message(views))
    precision = width * torch.linalg.pinv(scatter + trace * torch.eye(width, dtype=dtype, device=labels.device))
    weight, bias = discriminant(means, precision, num_classes)
    return GaussianDiscriminant(means, precision, weight, bias, num_views)


def discriminant(means: torch.Tensor, precision: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b) = (mu Sigma^-1, log(1 / N) - diag(mu Sigma^-1 mu^T) / 2)`` (lines 62-64) for the means of some
    classes, with uniform priors over ``num_classes`` classes."""
    weight = means @ precision  # (n, C)
    bias = -math.log(num_classes) - 0.5 * (weight * means).sum(-1)  # (n,)
    return weight, bias


def gaussian_logits(queries: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``f W^T + b`` `(B, N)` in float32 (under autocast too) for normalised queries `(B, C)`."""
    with Fn.full_precision(queries):
        return torch.addmm(bias.float(), queries.float(), weight.float().t())


@dataclass
class _Prepared:
    """What `GaussianStatistics.prepare_support` computed: the rows of classes ``first_class..`` and, for a whole
    cache, the precision; float64 on the method's device (zeros where an optional term cannot use the support)."""

    weight: torch.Tensor
    bias: torch.Tensor
    precision: torch.Tensor | None
    first_class: int
    num_classes: int


class GaussianStatistics:
    """GDA's statistics as buffers of a method, with their life cycle: a mixin (first base) of [`GDA`] and of
    XMAdapter's Gaussian term (`use_gaussian_term`).

    `register_statistics` adds the buffers `gaussian_weight` ``W_g = mu Sigma^-1`` `(N, C)`, `gaussian_bias` ``b``
    `(N,)` and `precision` ``Sigma^-1`` `(C, C)` (float32 whatever the model's dtype); a method that did not register
    them (XMAdapter with `use_gaussian_term=False`) behaves as without the mixin. ``gaussian_required``: whether a
    support without spread (or a class without images) is refused (GDA) or leaves the term at zero with a warning (an
    optional term: the method then works as without it).

    - `prepare_support` / `apply_support` (`set_cache`, `build_cache`, `fit`: a whole cache) estimate the means and
      the covariance from every augmented view;
    - `add_classes` keeps the shared covariance and the old classes' rows; the new classes get their means from
      their support, and the uniform prior becomes ``1 / N`` for the grown N (every old logit of an image moves by
      the same ``alpha log(N_old / N)``: predictions and probabilities unchanged);
    - an emptied cache (`from_pretrained(class_names=...)`) forgets them.
    """

    gaussian_required: bool = True

    def register_statistics(self, num_classes: int, embed_dim: int) -> None:
        self.register_buffer("gaussian_weight", torch.zeros(num_classes, embed_dim))  # W_g = mu Sigma^-1, (N, C)
        self.register_buffer("gaussian_bias", torch.zeros(num_classes))  # b, (N,)
        self.register_buffer("precision", torch.zeros(embed_dim, embed_dim))  # Sigma^-1, (C, C)

    @property
    def has_gaussian_term(self) -> bool:
        """Whether the method holds the statistics (GDA always; XMAdapter with `use_gaussian_term`)."""
        return "precision" in self._buffers

    # ------------------------------------------------------------------------------------------------ statistics
    def prepare_support(self, views, labels, num_classes: int, first_class: int = 0) -> _Prepared | None:
        """The statistics of a whole cache (``first_class == 0``), or the new classes' rows with the kept covariance;
        refuses a support without spread (whole cache) and a model without statistics (new classes) when the term
        is required; an optional term is then zero (with a warning for a whole cache; `None`: new classes of a model
        without statistics)."""
        if not self.has_gaussian_term:
            return super().prepare_support(views, labels, num_classes, first_class)
        device = self.precision.device
        labels = labels.to(device).long()
        if first_class == 0:
            try:
                found = gaussian_discriminant(views, labels, num_classes, dtype=torch.float64)
            except ValueError as error:
                if self.gaussian_required:
                    raise
                logger.warning("%s's Gaussian term is left out for this support (its logits are zero): %s",
                               type(self).__name__, error)  # fmt: skip
                zeros = torch.zeros(num_classes, views.shape[-1], dtype=torch.float64, device=device)
                return _Prepared(zeros, zeros[:, 0], torch.zeros_like(self.precision), 0, num_classes)
            return _Prepared(found.weight, found.bias, found.precision, 0, num_classes)
        if not bool(self.precision.any()):
            if self.gaussian_required:
                raise ValueError("This GDA adapter has no statistics yet: build its cache before adding classes.")
            return None  # an optional term without statistics stays at zero for the new classes too
        means = class_means(views, labels - first_class, num_classes - first_class, torch.float64)
        weight, bias = discriminant(means, self.precision.double(), num_classes)
        return _Prepared(weight, bias, None, first_class, num_classes)

    def apply_support(self, prepared: _Prepared | None) -> None:
        if not self.has_gaussian_term:
            return super().apply_support(prepared)
        if prepared is None:  # new classes of an optional term without statistics: their rows stay zero
            self._resize_classes(self.config.num_classes)
            return
        first = prepared.first_class
        if first == 0:
            self.precision = prepared.precision.float()
            self.gaussian_weight = prepared.weight.float()
            self.gaussian_bias = prepared.bias.float()
            return
        self._resize_classes(prepared.num_classes)
        self.gaussian_weight[first:] = prepared.weight.float()
        self.gaussian_bias[:first] += math.log(first / prepared.num_classes)  # the uniform prior 1 / N, N grown
        self.gaussian_bias[first:] = prepared.bias.float()

    def _resize_classes(self, num_classes: int) -> None:
        """Makes the class-shaped buffers ``num_classes`` rows long, keeping the rows they have (new rows: zero)."""
        for name in _STATISTICS[:2]:
            old = getattr(self, name)
            if old.shape[0] != num_classes:
                new = old.new_zeros(num_classes, *old.shape[1:])
                keep = min(num_classes, old.shape[0])
                new[:keep] = old[:keep]
                setattr(self, name, new)

    def add_classes(self, state: CacheState, old_classes: int, old_entries: int) -> None:
        """The old classes' rows are kept; `apply_support` fills the new ones (and shifts the prior)."""
        super().add_classes(state, old_classes, old_entries)
        if self.has_gaussian_term:
            self._resize_classes(state.num_classes)

    def resize_cache(self, num_entries: int) -> None:
        """An emptied cache (`from_pretrained(class_names=...)`) forgets the statistics, at the new class count."""
        super().resize_cache(num_entries)
        if num_entries == 0 and self.has_gaussian_term:
            device = self.precision.device
            self.gaussian_weight = torch.zeros(self.config.num_classes, self.embed_dim, device=device)
            self.gaussian_bias = torch.zeros(self.config.num_classes, device=device)
            self.precision = torch.zeros_like(self.precision)

    def _apply(self, fn, recurse=True):
        # `model.to(dtype)` casts buffers: the statistics keep their float32 values (bf16 would move b by whole
        # units) and follow a move to another device.
        if not self.has_gaussian_term:
            return super()._apply(fn, recurse)
        kept = {name: getattr(self, name) for name in _STATISTICS}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                setattr(self, name, old.to(new.device))
        return self

    def gaussian_logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``f W_g^T + b`` `(B, N)` float32 for normalised embeddings `(B, C)`."""
        return gaussian_logits(image_embeds, self.gaussian_weight, self.gaussian_bias)

    def gaussian_term(self, image_embeds: torch.Tensor, state: CacheState) -> LogitTerm:
        """The search's [`LogitTerm`] of ``alpha (f W_g^T + b)`` on normalised validation embeddings: the official
        grid, scaled by ``s / 100``, is its paper grid."""
        scale = float(state.logit_scale) / _REFERENCE_LOGIT_SCALE
        return LogitTerm(
            self.gaussian_logits(image_embeds), "gaussian_ratio", tuple(a * scale for a in OFFICIAL_ALPHA_GRID)
        )


@register_method("gda")
class GDA(GaussianStatistics, AdapterMethod):
    r"""GDA: zero-shot CLIP plus a Gaussian discriminant with a shared, shrunk covariance.

    ```
    logits = s f W^T + alpha (f W_g^T + b)     # W_g = mu Sigma^-1, b = log(1 / N) - diag(mu Sigma^-1 mu^T) / 2
    ```
    ``mu`` and ``Sigma^-1`` are estimated from every augmented view of the support images ([`gaussian_discriminant`],
    the official `main_few_shots.py` lines 41-64), ``s`` is the backbone's logit scale (the official code hard-codes
    OpenAI CLIP's 100, lines 71 and 80) and ``alpha`` (`gaussian_ratio`) is searched on validation. Nothing trains:
    `fit` builds the statistics in closed form and searches ``alpha``.

    The statistics are buffers that `save_pretrained` writes (`gaussian_weight` ``W_g`` `(N, C)`, `gaussian_bias`
    ``b`` `(N,)`, `precision` ``Sigma^-1`` `(C, C)`), so a loaded adapter needs no support image. They are estimated
    in float64 and kept in float32 whatever the model's dtype (``b`` reaches hundreds and cancels against
    ``f W_g^T``: bf16 would move the logits by whole units). Their life cycle ([`GaussianStatistics`]):

    - `set_cache`, `build_cache`, `fit` (a whole cache) estimate the means and the covariance from the support.
    - `add_classes` keeps the shared covariance and the old classes' rows; the new classes get their means from their
      support (any number of shots, one view included), and the uniform prior becomes ``1 / N`` for the grown N, which
      moves every old logit of an image by the same ``alpha log(N_old / N)`` (predictions and probabilities unchanged).
    - `from_pretrained(path, class_names=...)` forgets the statistics; `build_cache` estimates them from the new
      support.

    Args:
        config ([`XMAdapterConfig`]): reads `gaussian_ratio` (``alpha``).
        embed_dim (`int`): ``C``, the backbone's projection dim.
    """

    colour = "#e377c2"  # tab10
    uses_cache = True
    config_fields = GDAFields

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        self.register_statistics(config.num_classes, embed_dim)

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)  # (B, N)
        gaussian = self.gaussian_logits(image_embeds)  # (B, N)
        logits = zs + self.config.gaussian_ratio * gaussian
        return MethodOutput(logits=logits, zero_shot_logits=zs, gaussian_logits=gaussian)

    def logit_parts(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        """Zero-shot and ``alpha (f W_g^T + b)`` (the Gaussian discriminant)."""
        alpha = self.config.gaussian_ratio
        return {"zero_shot": output.zero_shot_logits.float(), "gaussian": alpha * output.gaussian_logits.float()}

    @classmethod
    def searched_fields(cls, config) -> tuple[str, ...]:
        return ("gaussian_ratio",)

    def search_space(self, image_embeds: torch.Tensor, state: CacheState) -> SearchSpace:
        """``alpha`` alone: the Gaussian logits are computed once; the official grid, scaled by ``s / 100``, is the
        term's paper grid."""
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)
        term = self.gaussian_term(image_embeds, state)
        return SearchSpace(zs, state.cache_labels, [], shots=state.shots, logit_terms=[term])
