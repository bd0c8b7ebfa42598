"""The validation search: chooses what a method's search space tunes (its residual ratio and sharpness values).

`search_on_validation(model, validation)` asks the method for its [`~xmadapter_hf.methods.SearchSpace`] (the hook
`AdapterMethod.search_space`; `None` for a method with nothing to tune), scores a grid on the validation split and
writes the choice into the config; `search_hyperparameters` does the same on raw tensors (cosines, zero-shot logits).
Both hand the search space to the pure grid search of `grid_search.py` (its formula and search order are there), over
the grids of `grids.py`; their names are importable from here too.

There is deliberately no way to pass a test split by another name: the search records `split: validation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import functional as Fn
from ..methods import CacheTerm, SearchSpace
from ..validation import check_choice, check_int, check_labels, check_number, check_tensor
from .grid_search import AUTO_COARSE_STEPS as AUTO_COARSE_STEPS
from .grid_search import AUTO_FINE_STEPS as AUTO_FINE_STEPS
from .grid_search import SearchResult, ratio_balance, search_space_grid
from .grids import SEARCH_GRIDS, log_grid, residual_ratio_grid, sharpness_grid

__all__ = [
    "SEARCH_GRIDS",
    "SearchResult",
    "log_grid",
    "ratio_balance",
    "residual_ratio_grid",
    "search_hyperparameters",
    "search_on_validation",
    "search_space_grid",
    "sharpness_grid",
    "validation_embeddings",
]


def _weight(ratio, num_rows: int, device) -> torch.Tensor:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, torch.Tensor)):
        raise TypeError(f"`affinity_ratio` must be a float or a tensor, got {type(ratio).__name__}.")
    ratio = torch.as_tensor(ratio.detach() if isinstance(ratio, torch.Tensor) else ratio).to(device, torch.float32)
    if ratio.numel() == 1 and ratio.dim() <= 2:
        ratio = ratio.reshape(1, 1)
    elif ratio.shape != (num_rows, 1):
        raise ValueError(f"`affinity_ratio` must be a scalar or of shape ({num_rows}, 1), got {tuple(ratio.shape)}.")
    if not bool(((ratio >= 0) & (ratio <= 1)).all()):
        raise ValueError("`affinity_ratio` (gamma) must lie in [0, 1].")
    return ratio


def resolve_search_grid(search_grid, search_scale, search_step, dataset_name=None) -> tuple[str, tuple, tuple]:
    """(grid, scale, step) of a search: `None` is `"tip-adapter-grid"` when a scale or step was given, else
    `"auto"`; the `"tip-adapter-grid"`'s (or `"paper"`'s: the same search) scale and step are the given ones, else
    the dataset's (``dataset_name``), else Tip-Adapter's ImageNet (7, 3) and (200, 20). `"auto"` with a scale or step
    is refused: it has ranges of its own, and would ignore them silently."""
    if search_grid is None:
        search_grid = "tip-adapter-grid" if search_scale is not None or search_step is not None else "auto"
    check_choice("search_grid", search_grid, SEARCH_GRIDS)
    if search_grid == "auto" and (search_scale is not None or search_step is not None):
        given = " and ".join(
            n for n, v in (("search_scale", search_scale), ("search_step", search_step)) if v is not None
        )
        raise ValueError(
            f"`{given}` sizes the fixed grid of `search_grid='tip-adapter-grid'`; `search_grid='auto'` chooses its "
            "own ranges from the backbone: pass one or the other."
        )
    if dataset_name is not None and search_grid != "auto":  # explicit argument > dataset > Tip's ImageNet
        from ..data.defaults import dataset_defaults

        defaults = dataset_defaults(dataset_name)
        search_scale = search_scale or tuple(defaults["search_scale"])
        search_step = search_step or defaults.get("search_step")
    scale = (7.0, 3.0) if search_scale is None else search_scale
    return search_grid, scale, (200, 20) if search_step is None else search_step


@torch.no_grad()
def search_hyperparameters(
    zero_shot_logits: torch.Tensor,
    image_cos: torch.Tensor,
    cache_labels: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    *,
    search_grid: str | None = None,
    search_scale: Sequence[float] | None = None,
    search_step: Sequence[int] | None = None,
    start: float = 0.1,
    text_cos: torch.Tensor | None = None,
    affinity_ratio: torch.Tensor | float | None = None,
    text_sharpness: float = 1.0,
    text_search_scale: float | None = None,
    text_search_step: int | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """Chooses ``sharpness`` and ``residual_ratio`` (and ``text_sharpness``) by validation accuracy, as Tip-Adapter.

    ``logits(beta, alpha) = zero_shot_logits + alpha * A L`` with ``A = exp(-beta * (1 - image_cos))``, or, when
    ``text_cos`` is given (XMAdapter), ``A = gamma * exp(-beta * (1 - image_cos)) + (1 - gamma) *
    exp(-beta_txt * (1 - text_cos))``. The (beta, alpha) grid is searched with ``beta_txt = text_sharpness``; then
    ``beta_txt`` alone on its 1-D grid. Ties keep the first strict maximum in loop order (sharpness outer, residual
    ratio inner), as Tip-Adapter's ``if acc > best_acc`` does; unlike Tip-Adapter, whose best starts at 0 and returns
    beta = alpha = 0 when every cell scores 0, a grid value is always chosen. The text step starts afresh: it
    returns the first maximum over the text grid, even when the starting ``text_sharpness`` scored higher.

    Args:
        zero_shot_logits (`torch.Tensor` of shape `(M, N)`): ``s * f W^T`` on the validation images.
        image_cos (`torch.Tensor` of shape `(M, NK)`): ``f F^T``, cosines with the image-cache keys.
        cache_labels (`torch.LongTensor` of shape `(NK,)`): each cache entry's class.
        labels (`torch.LongTensor` of shape `(M,)`): the validation labels.
        num_classes (`int`): ``N``.
        logit_scale (`float`): ``s``; the residual-ratio grid is multiplied by ``s / 100``.
        search_grid (`str`, *optional*): `"auto"` (backbone-adaptive log grids, coarse-to-fine; see
            [`search_space_grid`]) or `"tip-adapter-grid"` (Tip-Adapter's linear grids). Defaults to
            `"tip-adapter-grid"` when ``search_scale`` or ``search_step`` is given, to `"auto"` otherwise.
        search_scale (`tuple[float, float]`, *optional*, defaults to `(7.0, 3.0)`): upper ends (excluded) of the
            (sharpness, residual ratio) ranges of the `"tip-adapter-grid"`; the residual ratio's is for ``s = 100``.
        search_step (`tuple[int, int]`, *optional*, defaults to `(200, 20)`): number of values of each.
        start (`float`, *optional*, defaults to 0.1): first value of every grid.
        text_cos (`torch.Tensor` of shape `(M, NK)`, *optional*): ``g T^T`` for XMAdapter's text cache.
        affinity_ratio (`float` or `torch.Tensor` of shape `(M, 1)`, *optional*): ``gamma`` in [0, 1]; required with
            ``text_cos``, rejected without it.
        text_sharpness (`float`, *optional*, defaults to 1.0): ``beta_txt`` during the (beta, alpha) search.
        text_search_scale (`float`, *optional*), text_search_step (`int`, *optional*): the ``beta_txt`` grid;
            default to the sharpness grid's.
        chunk_size (`int`, *optional*): at most this many validation rows at a time (working memory about
            ``chunk_size * (2 * NK + search_step[1] * N)`` floats); `None` processes all rows at once.

    Returns:
        [`SearchResult`].

    Example:

    ```python
    >>> import torch
    >>> from xmadapter_hf.training.search import search_hyperparameters
    >>> image_cos = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # each image is closest to its own class's entry
    >>> result = search_hyperparameters(
    ...     torch.zeros(2, 2), image_cos, torch.tensor([0, 1]), torch.tensor([0, 1]), 2, 100.0, search_step=(4, 3)
    ... )
    >>> result.accuracy, result.sharpness, result.num_validation
    (1.0, 0.1, 2)
    ```
    """
    check_number("logit_scale", logit_scale, 0.0, low_open=True)
    num_classes = check_int("num_classes", num_classes, 1)
    zero_shot_logits = check_tensor("zero_shot_logits", zero_shot_logits, 2, cols=num_classes)
    num_rows = zero_shot_logits.shape[0]
    if num_rows == 0:
        raise ValueError("The validation set is empty: `zero_shot_logits` has 0 rows.")
    image_cos = check_tensor("image_cos", image_cos, 2, rows=num_rows)
    if image_cos.shape[1] == 0:
        raise ValueError("The cache is empty: `image_cos` has 0 columns.")
    cache_labels = check_labels("cache_labels", cache_labels, image_cos.shape[1], num_classes)
    labels = check_labels("labels", labels, num_rows, num_classes)
    device = image_cos.device
    terms = [CacheTerm(image_cos.float(), "sharpness")]
    starting = []
    if text_cos is not None:
        text_cos = check_tensor("text_cos", text_cos, 2, rows=num_rows, cols=image_cos.shape[1])
        if affinity_ratio is None:
            raise ValueError("`affinity_ratio` (gamma) is required when `text_cos` is given.")
        gamma = _weight(affinity_ratio, num_rows, device)
        terms[0].weight = gamma
        terms.append(CacheTerm(text_cos.to(device, torch.float32), "text_sharpness", 1.0 - gamma))
        starting = [check_number("text_sharpness", text_sharpness, 0.0, low_open=True)]
        if text_search_step is not None:
            check_int("text_search_step", text_search_step, 1)
    elif affinity_ratio is not None:
        raise ValueError("`affinity_ratio` was given without `text_cos`; it only weighs the text cache.")
    space = SearchSpace(zero_shot_logits.to(device, torch.float32), cache_labels.to(device), terms)
    search_grid, search_scale, search_step = resolve_search_grid(search_grid, search_scale, search_step)
    return search_space_grid(
        space, labels.to(device), logit_scale, search_grid=search_grid, search_scale=search_scale,
        search_step=search_step, start=start,
        text_search_scale=text_search_scale, text_search_step=text_search_step, starting_sharpness=starting,
        chunk_size=chunk_size,
    )  # fmt: skip


# -------------------------------------------------------------------------------------------------- on a model
def validation_embeddings(
    model, validation, labels=None, batch_size: int = 32, num_workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw embeddings `(M, C)` and labels of a validation split: an image dataset (plain view) or (embeds, labels)."""
    if isinstance(validation, torch.Tensor):
        if labels is None:
            raise ValueError("Pass the validation labels with validation embeddings: (M,) integers.")
        check_tensor("validation embeddings", validation, 2, cols=model.embed_dim)
        return validation, torch.as_tensor(labels).long()
    if model.processor is None:
        raise ValueError("The model has no processor to read validation images with: pass embeddings and labels.")
    from ..data.extraction import extract_embeddings

    extracted = extract_embeddings(
        model.clip,
        model.processor,
        validation,
        augment_views=0,
        batch_size=batch_size,
        show_progress=False,
        num_workers=num_workers,
    )
    return extracted.embeds[0], extracted.labels


@torch.no_grad()
def search_on_validation(
    model,
    validation,
    labels=None,
    *,
    search_grid: str | None = None,
    search_scale: Sequence[float] | None = None,
    search_step: Sequence[int] | None = None,
    dataset_name: str | None = None,
    text_search_scale: float | None = None,
    text_search_step: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
) -> SearchResult:
    """Grid-searches what the model's method tunes on a validation split and writes the choice into `model.config`.

    Args:
        model: an [`XMAdapterForImageClassification`] whose method has a search space (the cache methods: residual
            ratio and sharpness values; GDA: `gaussian_ratio`); its current (possibly trained) keys and text side are
            used.
        validation: a validation image dataset, or raw validation embeddings `(M, C)` with ``labels``.
        search_grid (`str`, *optional*): `"auto"`, or `"paper"` / `"tip-adapter-grid"` (two names of one search:
            each term's paper's grid; see [`search_space_grid`]). Defaults to `"tip-adapter-grid"` when
            ``search_scale`` or ``search_step`` is given, to `"auto"` otherwise: the automatic search finds the
            optimum whatever the backbone; the papers' grids reproduce their tables.
        search_scale (`(float, float)`, *optional*): [sharpness max, residual-ratio max] of `"tip-adapter-grid"`;
            defaults to the dataset's (``dataset_name``) or Tip-Adapter's ImageNet scale (7, 3). The residual-ratio
            range is scaled by s / 100.
        search_step (`(int, int)`, *optional*): its sizes; defaults to the dataset's or `(200, 20)`. An explicit
            argument always wins over the dataset's value.
        batch_size, num_workers: how validation images are extracted (images per backbone forward; worker
            processes that prepare them, see `extract_embeddings`).
    """
    if not model.method.searches():  # the method does not say what to tune
        raise ValueError(
            f"Method {model.config.method!r} has nothing to search: it has no cache, so no residual ratio or "
            "sharpness."
        )
    if model.config.cache_size == 0:
        raise ValueError(
            "The model has no cache yet: call `model.build_cache(few_shot_dataset)` before `search_hyperparameters` "
            "(the search scores the cache on the validation split)."
        )
    search_grid, search_scale, search_step = resolve_search_grid(search_grid, search_scale, search_step, dataset_name)
    raw, labels = validation_embeddings(model, validation, labels, batch_size, num_workers)
    device = model.class_embeds.device
    space = model.method.search_space(Fn.l2_normalize(raw.to(device).float()), model.cache_state())
    labels = check_labels("labels", labels.to(device), raw.shape[0], model.config.num_classes)
    starting = [getattr(model.config, term.sharpness_field) for term in space.terms[1:]]
    weights = [getattr(model.config, term.weight_field) for term in space.logit_terms]
    result = search_space_grid(
        space, labels, model.logit_scale, search_grid=search_grid, search_scale=search_scale, search_step=search_step,
        text_search_scale=text_search_scale, text_search_step=text_search_step, starting_sharpness=starting,
        starting_weights=weights,
    )  # fmt: skip
    for name, value in result.fields.items():
        setattr(model.config, name, float(value))
    tip_grid = search_grid != "auto" and bool(space.terms)  # Tip-Adapter's ranges were searched
    model.config.search_result = {
        "split": "validation",
        "num_validation": int(result.num_validation),
        "accuracy": float(result.accuracy),
        **{name: float(value) for name, value in result.fields.items()},
        "search_grid": search_grid,
        **({"search_scale": list(search_scale), "search_step": list(search_step)} if tip_grid else {}),
    }
    return result
