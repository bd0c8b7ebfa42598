"""The parallel input pipeline: decoding, augmentation and preprocessing in `DataLoader` worker processes.

An extraction costs, per item, one decode (about 2.5 ms of CPU for a 500x375 JPEG) and per view one augmentation
(about 3 ms) and one pass through the image processor (about 3.3 ms on the PIL path): a single core supplies 170-310
views per second (docs/benchmarks.md, "Input pipeline"), far below what a GPU embeds (docs/large_caches.md). So the
views are prepared by `torch.utils.data.DataLoader` worker processes while the main process runs the backbone on the
batch before (the DataLoader prefetches two batches per worker; on CUDA the batches are pinned and copied
asynchronously).

Nothing here depends on which process prepares a batch, or when: a view is drawn from ``draw_seed(seed, item index,
view)`` (`augment.py`), the batches a backbone forward sees are fixed by the items and ``batch_size`` alone
([`items_per_forward`]) and the DataLoader hands them back in order, so the embeddings are bit for bit the same for
any number of workers.
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..backbone import encode_images
from . import WORKERS_ENV
from .augment import augment_view, draw_seed
from .images import load_image
from .items import item_label, read_item

__all__ = [
    "SMALL_JOB_VIEWS",
    "WORKERS_ENV",
    "ViewsDataset",
    "available_cores",
    "embed_units",
    "items_per_forward",
    "resolve_num_workers",
]

#: Below this much work, in views of 224 x 224 pixels (3-6 ms of CPU each here, so about 1-1.5 s in all),
#: `num_workers=None` runs in the main process: starting workers (a fork each, and a first batch that nothing
#: overlaps) costs about as much as they save on a job this small (docs/benchmarks.md). A smaller view counts for
#: less, in proportion to its pixels, and decoding an item counts for 0.4 of a view (2.5 ms for a 500x375 JPEG).
SMALL_JOB_VIEWS = 256
_REFERENCE_SIZE = 224
_DECODE_SHARE = 0.4
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Workers `num_workers=None` never exceeds: beyond this the backbone, not the input, is the limit on any one GPU.
_MAX_AUTO_WORKERS = 32


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one, else `os.cpu_count()`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_num_workers(
    num_workers: int | None, num_views: int, view_size: int = _REFERENCE_SIZE, num_items: int = 0
) -> int:
    """The worker processes an extraction of ``num_items`` items, ``num_views`` views in all, of ``view_size``
    pixels square uses.

    ``None`` (the default everywhere) means: the value of the environment variable ``XMADAPTER_NUM_WORKERS`` where it
    is set (the CLI's ``--workers`` sets it), else 0 on a single core or for a job under [`SMALL_JOB_VIEWS`] views of
    224 px (a view's cost grows with its pixels; decoding an item counts for 0.4 of one), else one worker per
    available core (at most 32). Each worker runs one torch thread (set when it starts), so workers never multiply
    torch's thread pool by the core count.
    """
    if num_workers is None:
        configured = os.environ.get(WORKERS_ENV, "").strip()
        if configured:
            if not configured.isdigit():
                raise ValueError(f"{WORKERS_ENV} must be an int >= 0 (0: no workers), got {configured!r}.")
            return int(configured)
        work = num_views * (view_size / _REFERENCE_SIZE) ** 2 + num_items * _DECODE_SHARE  # in 224 px views
        cores = available_cores()
        return 0 if work < SMALL_JOB_VIEWS or cores < 2 else min(cores, _MAX_AUTO_WORKERS)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"`num_workers` must be an int >= 0 (0: no workers) or None (auto), got {num_workers!r}.")
    return num_workers


def items_per_forward(batch_size: int, views: int) -> int:
    """Items whose ``views`` views go through one backbone forward: as many whole items as fit in ``batch_size``
    images (at least one; an item with more views than ``batch_size`` is forwarded in chunks of ``batch_size``).

    Forwards never mix the views of a partial item, so a run of items cut at a multiple of this is embedded in the
    very batches a longer run would use (the store's shards and the distributed shares are cut so).
    """
    return max(1, batch_size // views)


class ViewsDataset(Dataset):
    """Item ``i`` of a labelled image dataset as the pixel values of its views: the work of one worker.

    Args:
        dataset: a `datasets.Dataset` (image column undecoded, see `items.undecoded`) or a torch dataset of pairs.
        image_processor (`CLIPImageProcessor`): turns each (augmented) view into pixel values.
        augment_views (`int`): views per item; 0 = the plain image, once.
        seed (`int`): seed of the augmentation draws, ``draw_seed(seed, i, view)``.
        size (`int`): the augmented views' side (the processor's input size).
        columns (`tuple`): the image and label columns (None for a torch dataset).
    """

    def __init__(self, dataset, image_processor, *, augment_views: int, seed: int, size: int, columns: tuple):
        self.dataset, self.image_processor = dataset, image_processor
        self.augment_views, self.seed, self.size, self.columns = augment_views, seed, size, columns

    @property
    def views(self) -> int:
        return max(self.augment_views, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def _pictures(self, index: int) -> tuple[list, int]:
        image, label = read_item(self.dataset, index, *self.columns)
        image = load_image(image)  # decoded once, whatever the number of views
        if self.augment_views == 0:
            return [image], item_label(label, index)
        pictures = [augment_view(image, self.size, draw_seed(self.seed, index, v)) for v in range(self.augment_views)]
        return pictures, item_label(label, index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Pixel values `(V, 3, H, W)` of item ``index``'s views, and its label."""
        pictures, label = self._pictures(int(index))
        return self.image_processor(images=pictures, return_tensors="pt")["pixel_values"], label

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """A whole forward's items in one processor call: pixel values `(n * V, 3, H, W)` (item-major: item 0's
        views, then item 1's), labels `(n,)` and the indices."""
        indices = [int(i) for i in indices]
        pictures, labels = [], []
        for index in indices:
            views, label = self._pictures(index)
            pictures.extend(views)
            labels.append(label)
        pixels = self.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
        return pixels, torch.tensor(labels, dtype=torch.long), indices


def _as_is(batch):
    # `__getitems__` returns the batch ready: no collation (module level, so that spawned workers can unpickle it).
    return batch


def _keep_freed_memory() -> None:
    """Asks glibc's malloc to keep freed memory for reuse: a worker allocates and frees megabytes per view (decoded
    images, float arrays), and by default returns them to the OS (or maps them afresh) each time, so every view
    pays page faults again: measured 195,000 faults and 0.55 s of system time for 480 views in one worker, against
    86,000 and 0.24 s with these settings (most of what is left is the shared memory each batch travels in)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)  # blocks under 64 MB come from the heap, not a fresh mapping
        libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)  # and the heap keeps up to 256 MB free instead of shrinking
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to tune
        pass


def _init_worker(_worker_id: int) -> None:
    # One torch thread per worker: N workers each starting torch's default pool (one thread per core) would run N x
    # cores threads. The views are prepared by PIL and numpy, which run on the calling thread anyway.
    torch.set_num_threads(1)
    _keep_freed_memory()


class _Batches:
    """A one-pass batch sampler over a lazily produced sequence of batches (the store claims work as it goes)."""

    def __init__(self, batches: Iterator[list[int]]):
        self._batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return self._batches


def _forward(backbone, pixels: torch.Tensor, batch_size: int, autocast_dtype, device) -> torch.Tensor:
    """Raw embeddings `(R, C)` float32 on CPU of pixel rows `(R, 3, H, W)`, ``batch_size`` rows per forward."""
    rows = []
    for start in range(0, pixels.shape[0], batch_size):
        chunk = pixels[start : start + batch_size].to(device, non_blocking=True)  # async from pinned memory on CUDA
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            rows.append(encode_images(backbone, chunk).float())
    return torch.cat(rows).cpu()


def embed_units(
    backbone,
    views: ViewsDataset,
    units: Iterable[list[int]],
    *,
    batch_size: int,
    num_workers: int,
    autocast_dtype: torch.dtype | None = None,
    on_items: Callable[[int], None] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Embeds each unit (a list of item indices) and yields ``(items, embeds (V, n, C), labels (n,))`` per unit.

    ``units`` is consumed lazily, a little ahead of the backbone (the DataLoader prefetches), so a caller can claim
    work as it goes. Each unit is cut into forwards of [`items_per_forward`] items from its start; with
    ``num_workers`` > 0 the views are prepared in that many worker processes (started once for all the units) while
    the main process runs the backbone. ``on_items(n)`` is called after each forward (a progress bar).
    """
    per_forward = items_per_forward(batch_size, views.views)
    pending: deque[list[int]] = deque()  # units whose batches were handed to the DataLoader, oldest first

    def batches() -> Iterator[list[int]]:
        for unit in units:
            if unit:
                pending.append(list(unit))
                yield from (list(unit[s : s + per_forward]) for s in range(0, len(unit), per_forward))

    device = next(backbone.parameters()).device
    loader = DataLoader(
        views, batch_sampler=_Batches(batches()), num_workers=num_workers, collate_fn=_as_is,
        pin_memory=device.type == "cuda", worker_init_fn=_init_worker if num_workers else None,
    )  # fmt: skip
    embeds, labels, done = [], [], 0
    for pixels, batch_labels, items in loader:  # in the order the batches were made, whichever worker made them
        rows = _forward(backbone, pixels, batch_size, autocast_dtype, device)  # (n * V, C), item-major
        embeds.append(rows.view(len(items), views.views, -1).transpose(0, 1))  # (V, n, C)
        labels.append(batch_labels)
        done += len(items)
        if on_items is not None:
            on_items(len(items))
        if done == len(pending[0]):
            yield pending.popleft(), torch.cat(embeds, dim=1).contiguous(), torch.cat(labels)
            embeds, labels, done = [], [], 0
