"""Training views of the few-shot images, drawn per epoch as a function of (seed, epoch, item index).

- [`EmbeddingViewsDataset`]: the embedding fast path. The backbone is frozen, so an image's embedding depends only on
  its pixels: V augmented views of each few-shot image are extracted once (the cache needs them anyway), and each
  epoch draws one training embedding per image from them, for a whole epoch at once (a vectorised draw: about
  420,000 items per CPU-second on one core at V = 10, C = 512, 21x the per-item draw of 0.1.0;
  704,000 items/s on two idle cores; docs/benchmarks.md).
- [`AugmentedImagesDataset`]: the pixel path: a fresh augmentation of each image every epoch, through the processor.
- [`EpochShuffleSampler`]: the order of an epoch, a permutation drawn from (seed, epoch).
- [`ViewEpochCallback`]: tells a dataset the epoch at each Trainer epoch start.

Every draw is a function of (seed, epoch, index), so shuffling, batch size, process count and resumption see the same
views. The per-item random numbers come from a counter-based generator (splitmix64 over the item's index, keyed by
``draw_seed(seed, epoch)``), which is what lets a whole epoch be drawn at once with numpy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from transformers import TrainerCallback

from ..validation import check_choice, check_int, describe
from .augment import augment_view, draw_seed
from .extraction import ExtractedEmbeddings, crop_size, read_item, resolve_columns
from .images import load_image

__all__ = [
    "VIEW_SAMPLINGS",
    "AugmentedImagesDataset",
    "EmbeddingViewsDataset",
    "EpochShuffleSampler",
    "ViewEpochCallback",
    "counter_normals",
    "counter_uniforms",
]

#: How [`EmbeddingViewsDataset`] draws an item's training embedding from its cached views.
VIEW_SAMPLINGS = ("view", "gaussian")
# A key of its own for the pixel path's augmentation draws, so that they never reuse the cache's
# draw_seed(seed, item, view) numbers.
_TRAIN_AUGMENT_KEY = 7
# Items per block of the Gaussian draw: the block's output (1024 x C float32) stays in the CPU's cache while the V
# views are added into it.
_DRAW_BLOCK = 1024
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (numpy's uint64 arithmetic wraps modulo 2**64)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def counter_uniforms(key: int, indices: torch.Tensor, count: int) -> np.ndarray:
    """``count`` 64-bit random words per index, `(M, count)` uint64: word ``j`` of index ``i`` is a function of
    (key, i, j) alone, so any subset of items, in any order or process, gets the same words."""
    items = np.asarray(indices, dtype=np.int64).astype(np.uint64)[:, None]  # (M, 1)
    slots = np.arange(count, dtype=np.uint64)[None, :]  # (1, count)
    with np.errstate(over="ignore"):
        return _splitmix64(_splitmix64(items ^ np.uint64(key)) + slots)


def counter_normals(key: int, indices: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` standard normal numbers per index, `(M, count)` float32: Box-Muller on the two 32-bit halves of each
    of [`counter_uniforms`]' words (``r cos(t)``, ``r sin(t)``: two numbers a word), in float32."""
    words = counter_uniforms(key, indices, (count + 1) // 2)  # (M, W)
    scale = np.float32(2.0**-32)
    high = ((words >> np.uint64(32)).astype(np.float32) + np.float32(0.5)) * scale  # (0, 1]
    low = ((words & np.uint64(0xFFFFFFFF)).astype(np.float32) + np.float32(0.5)) * scale
    radius, angle = np.sqrt(np.float32(-2.0) * np.log(high)), np.float32(2.0 * np.pi) * low
    pairs = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)  # (M, W, 2)
    return torch.from_numpy(pairs.reshape(len(words), -1)[:, :count].copy())


class EmbeddingViewsDataset(Dataset):
    r"""Cached augmented views of a few-shot set as a torch `Dataset`: one training embedding per item and epoch.

    Item ``i`` in epoch ``e`` is a function of (seed, e, i), drawn in one of two ways (``view_sampling``):

    - ``"gaussian"`` (the default, as in `fit`): a new point with the mean and covariance of image ``i``'s V views,
      ``mean_i + sum_v g_v (view_v,i - mean_i) / sqrt(V - 1)`` with ``g ~ N(0, I_V)``. Each epoch then sees a view no
      earlier epoch saw, as the reference procedure's fresh augmentations are, instead of re-using each of the V views
      ``epochs / V`` times (docs/benchmarks.md measures the difference). With one view it is that view;
    - ``"view"``: one of image ``i``'s V cached views as it is.

    The whole epoch is drawn at once, the first time one of its items is asked for (`embeddings_for_epoch`). Each item
    is ``{"image_embeds": (C,) float32, "labels": () int64, "cache_index": () int64}``, what
    [`XMAdapterForImageClassification.forward`] takes.

    The epoch must reach the dataset: `XMAdapterTrainer` and `fit` see to it; with the stock `Trainer`, pass
    ``callbacks=[ViewEpochCallback(dataset)]`` (accelerate does not forward the epoch to a dataset whose sampler has a
    `set_epoch` of its own). Keep `dataloader_persistent_workers=False` (the default) with worker processes.

    Args:
        embeds (`torch.Tensor` of shape `(V, M, C)`): raw view embeddings, e.g. `extract_embeddings(...).embeds`.
        labels (`torch.Tensor` of shape `(M,)`): integer class ids.
        seed (`int`, *optional*, defaults to 0): seed of the draws.
        cache_index (`bool` or `torch.Tensor` of shape `(M,)`, *optional*, defaults to `True`): each item's position
            in the model's cache (so that XMAdapter's hard-sample criterion leaves the item's own entry out). `True`:
            item ``i`` is cache entry ``i``; `False`: no `cache_index` key.
        view_sampling (`str`, *optional*, defaults to `"gaussian"`): `"gaussian"` or `"view"`, see above.

    Example (the Trainer path on the tiny random CLIP):

    ```python
    >>> import tempfile
    >>> from xmadapter_hf import EmbeddingViewsDataset, XMAdapterForImageClassification, XMAdapterTrainer
    >>> from xmadapter_hf import recipe_arguments
    >>> from xmadapter_hf.data.extraction import extract_embeddings
    >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
    >>> clip, processor = tiny_clip()
    >>> model = XMAdapterForImageClassification.from_clip(
    ...     clip, ["a", "b"], processor=processor, method="tip-adapter-f"
    ... )
    >>> views = extract_embeddings(clip, processor, tiny_image_dataset(2, 4), augment_views=3, show_progress=False)
    >>> model.set_cache(views.embeds.mean(0), views.labels)  # keys: the mean of the views
    >>> args = recipe_arguments(model, tempfile.mkdtemp(), num_train_epochs=2, use_cpu=True, disable_tqdm=True)
    >>> trainer = XMAdapterTrainer(model, args, train_dataset=EmbeddingViewsDataset(views.embeds, views.labels))
    >>> trainer.train().global_step  # 8 images, batch 1 (at least 8 steps an epoch), 2 epochs  # doctest: +ELLIPSIS
    {...}
    16
    ```
    """

    def __init__(
        self,
        embeds: torch.Tensor,
        labels: torch.Tensor,
        seed: int = 0,
        cache_index: bool | torch.Tensor = True,
        view_sampling: str = "gaussian",
    ):
        if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point() or embeds.ndim != 3:
            raise ValueError(f"`embeds` must be a float tensor of shape (V, M, C); got {describe(embeds)}.")
        if embeds.shape[0] < 1 or embeds.shape[1] < 1:
            raise ValueError(f"`embeds` needs at least one view and one item; got shape {tuple(embeds.shape)}.")
        count = embeds.shape[1]
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (count,):
            raise ValueError(f"`labels` must be an integer tensor of shape ({count},); got {describe(labels)}.")
        check_int("seed", seed, -(2**62))
        if isinstance(cache_index, bool):
            index = torch.arange(count) if cache_index else None
        elif isinstance(cache_index, torch.Tensor) and not cache_index.dtype.is_floating_point:
            if cache_index.shape != (count,):
                raise ValueError(f"`cache_index` must have shape ({count},); got {tuple(cache_index.shape)}.")
            index = cache_index.long()
        else:
            raise TypeError(f"`cache_index` must be a bool or an integer tensor (M,); got {describe(cache_index)}.")
        check_choice("view_sampling", view_sampling, VIEW_SAMPLINGS)
        self.embeds, self.labels, self.seed, self.cache_index = embeds, labels.long(), int(seed), index
        self.view_sampling = view_sampling
        self.epoch = 0
        self._drawn: tuple[int, torch.Tensor] | None = None  # (epoch, its (M, C) embeddings)

    @classmethod
    def from_extracted(cls, extracted: ExtractedEmbeddings, seed: int = 0, **kwargs) -> EmbeddingViewsDataset:
        """The dataset of an [`~xmadapter_hf.data.extraction.ExtractedEmbeddings`]."""
        return cls(extracted.embeds, extracted.labels, seed=seed, **kwargs)

    @property
    def num_views(self) -> int:
        return self.embeds.shape[0]

    def __len__(self) -> int:
        return self.embeds.shape[1]

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose draws `__getitem__` returns (called by the Trainer, `fit` or the callback)."""
        self.epoch = check_int("epoch", epoch, 0)

    @property
    def _uses_views_as_they_are(self) -> bool:
        return self.view_sampling == "view" or self.num_views == 1  # one view: the Gaussian draw is that view

    def views_for_epoch(self, epoch: int | None = None, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The cached view each item (or each of ``indices``) uses in ``epoch`` with `view_sampling="view"`, int64."""
        epoch = self.epoch if epoch is None else epoch
        indices = torch.arange(len(self)) if indices is None else indices
        words = counter_uniforms(draw_seed(self.seed, epoch), indices, 1)[:, 0]
        return torch.from_numpy((words % np.uint64(self.num_views)).astype(np.int64))

    def view_of(self, index: int, epoch: int | None = None) -> int:
        """The view item ``index`` uses in ``epoch`` (default: the current epoch) with `view_sampling="view"`."""
        return int(self.views_for_epoch(epoch, torch.tensor([int(index)]))[0])

    def embeddings_for_epoch(self, epoch: int | None = None, indices: torch.Tensor | None = None) -> torch.Tensor:
        """The training embedding of every item (or of ``indices``) in ``epoch``, `(M, C)`, as `__getitem__` gives."""
        epoch = self.epoch if epoch is None else epoch
        indices = torch.arange(len(self)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        if self._uses_views_as_they_are:
            return self.embeds[self.views_for_epoch(epoch, indices), indices]
        return gaussian_draws(
            self.embeds, indices, counter_normals(draw_seed(self.seed, epoch), indices, self.num_views)
        )

    def embedding_of(self, index: int, epoch: int | None = None) -> torch.Tensor:
        """The raw embedding `(C,)` item ``index`` is trained on in ``epoch`` (default: the current epoch)."""
        return self.embeddings_for_epoch(epoch, torch.tensor([int(index)]))[0]

    def _epoch_table(self) -> torch.Tensor:
        if self._drawn is None or self._drawn[0] != self.epoch:
            self._drawn = (self.epoch, self.embeddings_for_epoch(self.epoch))
        return self._drawn[1]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch of items at once (the DataLoader's batched fetch)."""
        rows = torch.as_tensor(indices, dtype=torch.long) % len(self)
        embeds, labels = self._epoch_table()[rows], self.labels[rows]
        positions = self.cache_index[rows] if self.cache_index is not None else None
        items = []
        for i in range(len(rows)):
            item = {"image_embeds": embeds[i], "labels": labels[i]}
            if positions is not None:
                item["cache_index"] = positions[i]
            items.append(item)
        return items


def gaussian_draws(views: torch.Tensor, indices: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """``mean_i + sum_v g_iv (x_vi - mean_i) / sqrt(V - 1)`` for each item ``i`` of ``indices``, float32 `(M, C)`.

    Written as one weighted sum of the views, ``sum_v a_iv x_vi`` with ``a_iv = 1 / V + (g_iv - mean_v g_i) / sqrt(V -
    1)``, accumulated block by block of items so that each block's output stays in the CPU's cache.
    """
    count = views.shape[0]
    coefficients = 1.0 / count + (normals - normals.mean(dim=1, keepdim=True)) / math.sqrt(count - 1)  # (M, V)
    out = torch.empty(len(indices), views.shape[2], dtype=torch.float32)
    first = int(indices[0]) if len(indices) else 0
    in_order = bool(torch.equal(indices, torch.arange(first, first + len(indices))))  # a slice: no gather copy
    for start in range(0, len(indices), _DRAW_BLOCK):
        block, weights = out[start : start + _DRAW_BLOCK], coefficients[start : start + _DRAW_BLOCK]  # (b, C), (b, V)
        rows = slice(first + start, first + start + len(block)) if in_order else indices[start : start + len(block)]
        torch.mul(views[0, rows].float(), weights[:, :1], out=block)
        for view in range(1, count):
            block.addcmul_(views[view, rows].float(), weights[:, view : view + 1])
    return out


class EpochShuffleSampler(Sampler[int]):
    """The items of a dataset in an order drawn from (seed, epoch): ``randperm(n)`` of a generator seeded with
    ``draw_seed(seed, epoch)``. `set_epoch` selects the epoch (Trainer and accelerate call it on a sampler that has
    one); every process draws the same order, and accelerate shards its batches."""

    def __init__(self, num_items: int, seed: int = 0):
        self.num_items, self.seed, self.epoch = check_int("num_items", num_items, 0), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The permutation of ``epoch`` (default: the current one), int64 `(n,)`."""
        epoch = self.epoch if epoch is None else epoch
        # a 2-key draw never equals a (seed, epoch, index) draw of the views
        return torch.randperm(self.num_items, generator=torch.Generator().manual_seed(draw_seed(self.seed, epoch)))

    def __iter__(self):
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.num_items


class ViewEpochCallback(TrainerCallback):
    """Sets a dataset's epoch (its `set_epoch`) at the start of every Trainer epoch, resumed runs included.

    At `on_epoch_begin` of epoch ``e`` Trainer's `state.epoch` is ``e`` (``e + fraction`` when resuming mid-epoch),
    so its integer part is the epoch about to run; this fires before the epoch's dataloader iterator is created.
    `XMAdapterTrainer` adds it for a training dataset with `set_epoch`; pass it to a stock `Trainer` yourself.
    """

    def __init__(self, dataset):
        if not hasattr(dataset, "set_epoch"):
            raise TypeError(f"`dataset` must have a `set_epoch` method; got {type(dataset).__name__}.")
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # the small epsilon guards against float sums like 0.999999 for the end of epoch 0
        self.dataset.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))
        return control


class AugmentedImagesDataset(Dataset):
    """The pixel path's items: each image through the processor at every step (`pixel_values`, `labels`, and its
    `cache_index`), with a fresh augmentation every epoch.

    With ``augment``, the view of item ``i`` in epoch ``e`` is the cache recipe's RandomResizedCrop + flip drawn from
    ``draw_seed(seed, 7, e, i)`` (a key of its own, so never one of the cache's views), a function of the item and the
    epoch only, so that any number of processes sees the same pictures.

    Args:
        dataset: a `datasets.Dataset` with image and label columns, or a torch dataset of (image, label) pairs.
        image_processor: the backbone's image processor (or its `CLIPProcessor`).
        seed (`int`, *optional*, defaults to 0), augment (`bool`, *optional*, defaults to `True`),
        with_cache_index (`bool`, *optional*, defaults to `True`): item ``i`` is cache entry ``i``.
    """

    def __init__(self, dataset, image_processor, seed: int = 0, augment: bool = True, with_cache_index: bool = True):
        self.dataset, self.seed, self.augment = dataset, check_int("seed", seed, -(2**62)), augment
        self.image_processor = getattr(image_processor, "image_processor", image_processor)
        self.size = crop_size(self.image_processor)
        self.columns = resolve_columns(dataset, None, None)
        self.with_cache_index = with_cache_index
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int("epoch", epoch, 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, label = read_item(self.dataset, index, *self.columns)
        image = load_image(image)
        if self.augment:
            image = augment_view(image, self.size, draw_seed(self.seed, _TRAIN_AUGMENT_KEY, self.epoch, index))
        pixels = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
        item = {"pixel_values": pixels, "labels": torch.tensor(int(label))}
        if self.with_cache_index:
            item["cache_index"] = torch.tensor(index)
        return item
