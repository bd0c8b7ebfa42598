"""The model's cache and class editing API: `build_cache`, `set_cache`, `add_classes`, `half_cache`, `float_cache`
and `cast_adapter`, the methods of `XMAdapterForImageClassification` (a base class of it) that edit what the adapter
holds. Each is a documented entry point; the work is done in `caches.py` and `classes.py`.
"""

import os
from typing import TYPE_CHECKING

import torch

from . import caches, classes

if TYPE_CHECKING:
    from .modeling_xmadapter import XMAdapterForImageClassification

__all__ = ["AdapterCacheMixin"]


class AdapterCacheMixin:
    """The cache and class editing methods of [`XMAdapterForImageClassification`] (see the module docstring)."""

    def build_cache(
        self,
        dataset,
        augment_views: int = 10,
        batch_size: int = 32,
        seed: int = 0,
        *,
        image_column: str | None = None,
        label_column: str | None = None,
        processor=None,
        show_progress: bool = True,
        cache_dir: str | os.PathLike | None = None,
        autocast_dtype: torch.dtype | None = None,
        num_workers: int | None = None,
    ) -> "XMAdapterForImageClassification":
        """Fills the cache from a labelled few-shot image set (`datasets.Dataset` or a torch `Dataset`).

        Keys average the raw embeddings of ``augment_views`` augmented views (RandomResizedCrop scale 0.5-1 +
        horizontal flip; 0 = the plain view), then normalise; labels are stored as integers. Creates (or resizes)
        the method's cache-shaped parameters and sets `config.cache_size`: build optimisers after this call.
        ``cache_dir``, ``autocast_dtype`` and ``num_workers`` go to
        [`~xmadapter_hf.data.extraction.extract_embeddings`] (the embedding store, which a rerun reads without a
        backbone forward; mixed precision for the backbone; worker processes that prepare the images).

        Before any image goes through the backbone, the labels are read and checked: a `ClassLabel` column must
        name the model's `class_names` in the same order (build the model with
        ``from_clip(clip, dataset.features["label"].names, ...)``), every label must be a class id and every class
        must have an image.
        """
        return caches.build_cache(
            self, dataset, augment_views, batch_size, seed, image_column=image_column, label_column=label_column,
            processor=processor, show_progress=show_progress, cache_dir=cache_dir, autocast_dtype=autocast_dtype,
            num_workers=num_workers,
        )  # fmt: skip

    def set_cache(self, embeds: torch.Tensor, labels: torch.Tensor) -> None:
        """Sets the cache from raw embeddings (NK, C) (normalised here) and integer labels (NK,).

        ``embeds`` may also be `(V, NK, C)`, every augmented view of each image (what `extract_embeddings` returns):
        the keys are then the mean of the views (as `build_cache` and `fit` compute them) and the method reads every
        view (GDA estimates its class means and covariance from them; with `(NK, C)` it sees one view per image).
        Validates everything before changing any state (the method's check of the views included); then resizes and
        initialises the method's cache parameters.
        """
        caches.set_cache(self, embeds, labels)

    def add_classes(
        self,
        class_names: list[str],
        dataset=None,
        *,
        embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        augment_views: int | None = None,
        batch_size: int = 32,
        image_column: str | None = None,
        label_column: str | None = None,
        processor=None,
        show_progress: bool = True,
        num_workers: int | None = None,
    ) -> "XMAdapterForImageClassification":
        """Adds classes to a built (or trained) adapter without retraining it (docs/add-classes.md).

        The new names are encoded with the adapter's templates and appended to ``W``, `class_names`, `id2label` and
        `label2id`; their few-shot support images (``dataset``, whose labels 0..M-1 index ``class_names``, extracted
        with the cache's `augment_views` and seed) or raw embeddings (``embeds`` `(M, C)`, or `(V, M, C)` with every
        view, and ``labels`` `(M,)`) are appended to the cache (their views reach the method's `prepare_support`),
        and every cache-shaped parameter of the method grows through the method's `add_classes` hook: old rows are
        kept bit for bit, new learned keys start from their embeddings, class-agnostic weights and the searched
        hyperparameters are kept, a half-precision cache stays half precision. `config.shots` becomes `None` when
        the classes no longer have equal K; `config.classes_added` counts the classes added. A model without a cache
        takes names only.

        Old classes' logits do not change for every method but the Multi-Modal Adapter (its attention runs over all
        class tokens) and GDA (its uniform prior ``log(1 / N)`` moves every old logit of an image alike; its
        covariance is kept). Everything is checked before any state changes: a name the model has, a repeated or empty
        name, an empty list, a new class without support images, support of the wrong shape. Parameters are
        replaced: an optimiser or Trainer built before refuses its next step (build a new one). ``num_workers`` goes
        to [`~xmadapter_hf.data.extraction.extract_embeddings`] (worker processes that prepare the support images).
        """
        return classes.add_classes(
            self, class_names, dataset, embeds=embeds, labels=labels, augment_views=augment_views,
            batch_size=batch_size, image_column=image_column, label_column=label_column, processor=processor,
            show_progress=show_progress, num_workers=num_workers,
        )  # fmt: skip

    def half_cache(self, dtype: torch.dtype | str | None = None) -> "XMAdapterForImageClassification":
        """Stores the whole cache in half precision for inference, learned keys included.

        `config.cache_dtype` already stores the frozen cache ``E`` in fp16/bf16; a method's learned keys stay float32
        parameters for training. This call casts both to ``dtype`` (default: `config.cache_dtype` if it is a half
        type, else `float16`) and records it in `config.cache_dtype`: a 100k-class, 16-shot cache at C = 512 then takes
        1.6 GiB per tensor instead of 3.1 GiB. The affinity maths stays float32 and chunked, so logits move by the
        rounding of the keys only. The learned keys become frozen: training refuses to run until [`float_cache`]
        makes them float32 parameters again (the rounding stays). `save_pretrained` then writes half-precision keys
        and `from_pretrained` gives them back in half precision. Called before `set_cache`, the learned keys are
        created in half precision directly, which is how an inference-only model of a very large cache is built.

        Example:

        ```python
        >>> from xmadapter_hf import XMAdapterForImageClassification
        >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
        >>> clip, processor = tiny_clip()
        >>> model = XMAdapterForImageClassification.from_clip(clip, ["cat", "dog"], processor=processor)
        >>> _ = model.build_cache(tiny_image_dataset(num_classes=2, shots=2), augment_views=1, show_progress=False)
        >>> model.half_cache().cache_embeds.dtype, model.method.cache_keys.dtype
        (torch.float16, torch.float16)
        ```
        """
        caches.half_cache(self, dtype)
        return self

    def float_cache(self) -> "XMAdapterForImageClassification":
        """Undoes [`half_cache`] for the learned keys: float32 trainable parameters again (the rounding stays).

        The frozen cache ``E`` keeps `config.cache_dtype`, which is a storage choice that training accepts.
        """
        with torch.no_grad():
            self.method.cast_cache(torch.float32)
        return self

    def cast_adapter(self, dtype: torch.dtype) -> "XMAdapterForImageClassification":
        """Casts the adapter's floating tensors (the method's weights and the model's buffers) to ``dtype``, leaving
        the backbone as it is (`from_pretrained(dtype=...)` with a `clip_model=` the caller owns)."""
        caches.cast_adapter(self, dtype)
        return self
