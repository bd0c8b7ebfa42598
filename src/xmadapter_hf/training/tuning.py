"""The validation search on a model: chooses `sharpness`, `residual_ratio` (and `text_sharpness`) and records them.

There is deliberately no way to pass a test split here by another name: the function takes a validation split and
says so in the config (`search_result["split"] = "validation"`) together with its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import functional as Fn
from ..data.extraction import extract_embeddings
from ..methods import XMAdapter
from .search import SearchResult, search_hyperparameters

__all__ = ["check_validation_embeddings", "search_on_validation", "validation_embeddings"]


def check_validation_embeddings(model, embeds: torch.Tensor, labels) -> None:
    """Raises unless ``embeds`` are raw validation embeddings (M, C) of the model's dim and ``labels`` are given."""
    if labels is None:
        raise ValueError("Pass the validation labels with validation embeddings: (M,) integers.")
    if embeds.ndim != 2 or embeds.shape[1] != model.embed_dim:
        raise ValueError(f"Validation embeddings must have shape (M, {model.embed_dim}); got {tuple(embeds.shape)}.")


def validation_embeddings(model, validation, labels=None, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw embeddings and labels of a validation split: an image dataset (plain view) or (embeds, labels) tensors."""
    if isinstance(validation, torch.Tensor):
        check_validation_embeddings(model, validation, labels)
        return validation, torch.as_tensor(labels).long()
    if model.processor is None:
        raise ValueError("The model has no processor to read validation images with: pass embeddings and labels.")
    extracted = extract_embeddings(
        model.clip, model.processor, validation, augment_views=0, batch_size=batch_size, show_progress=False
    )
    return extracted.embeds[0], extracted.labels


@torch.no_grad()
def search_on_validation(
    model,
    validation,
    labels=None,
    *,
    search_scale: Sequence[float] | None = None,
    search_step: Sequence[int] = (200, 20),
    dataset_name: str | None = None,
    text_search_scale: float | None = None,
    text_search_step: int | None = None,
    batch_size: int = 32,
) -> SearchResult:
    """Grid-searches the cache hyperparameters on a validation split and writes the choice into `model.config`.

    Args:
        model: an [`XMAdapterForImageClassification`] with a cache method (`tip-adapter`, `tip-adapter-f`,
            `xmadapter`); its current (possibly trained) keys and text side are used.
        validation: a validation image dataset, or raw validation embeddings (M, C) with ``labels``.
        search_scale (`(float, float)`, *optional*): [sharpness max, residual-ratio max]; defaults to the dataset's
            (``dataset_name``) or Tip-Adapter's ImageNet scale (7, 3). The residual-ratio range is scaled by s / 100.
        search_step (`(int, int)`, *optional*, defaults to `(200, 20)`): grid sizes.
    """
    if not model.method.uses_cache:
        raise ValueError(
            f"Method {model.config.method!r} has no cache: there is no residual ratio or sharpness to search."
        )
    if model.config.cache_size == 0:
        raise ValueError(
            "The model has no cache yet: call `model.build_cache(few_shot_dataset)` before `search_hyperparameters` "
            "(the search scores the cache on the validation split)."
        )
    if dataset_name is not None:
        from ..data.defaults import dataset_defaults

        defaults = dataset_defaults(dataset_name)
        search_scale = search_scale or tuple(defaults["search_scale"])
        search_step = tuple(defaults.get("search_step", search_step))
    search_scale = tuple(search_scale or (7.0, 3.0))
    raw, labels = validation_embeddings(model, validation, labels, batch_size)
    device = model.class_embeds.device
    f = Fn.l2_normalize(raw.to(device).float())
    state = model.cache_state()
    method = model.method
    keys = method.keys(state).float()
    if model.config.normalize_keys and method.trainable:
        keys = Fn.l2_normalize(keys)
    zero_shot = Fn.zero_shot_logits(f, state.class_embeds, state.logit_scale)
    text = {}
    if isinstance(method, XMAdapter) and model.config.use_text_cache:  # search the text cache's sharpness too
        query = method.query_text_embeds(f)
        text = dict(
            text_cos=query @ method.text_keys(state).t(),
            affinity_ratio=method.affinity_ratio(f),
            text_sharpness=model.config.text_sharpness,
            text_search_scale=text_search_scale,
            text_search_step=text_search_step,
        )
    result = search_hyperparameters(
        zero_shot, f @ keys.t(), state.cache_labels, labels.to(device), state.num_classes, model.logit_scale,
        search_scale=search_scale, search_step=search_step, **text,
    )  # fmt: skip
    config = model.config
    config.sharpness, config.residual_ratio = float(result.sharpness), float(result.residual_ratio)
    if result.text_sharpness is not None:
        config.text_sharpness = float(result.text_sharpness)
    config.search_result = {
        "split": "validation",
        "num_validation": int(result.num_validation),
        "accuracy": float(result.accuracy),
        "sharpness": config.sharpness,
        "residual_ratio": config.residual_ratio,
        "text_sharpness": config.text_sharpness if result.text_sharpness is not None else None,
        "search_scale": list(search_scale),
        "search_step": list(search_step),
    }
    return result
