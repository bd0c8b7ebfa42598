"""Distributed embedding extraction: each process embeds its share, every process gets the whole result.

Extraction is the costly part of the embedding fast path (V augmented views of every image through the backbone), so
under `accelerate launch` / `torchrun` each process runs the one extraction pipeline (`extract_embeddings`) on its
own share of the items. Every augmentation draw is a function of (seed, item index, view), and a share is a run of
whole backbone forwards (`loader.items_per_forward`), so each item goes through the backbone in the very batch a
single process would use: the result is bit-identical to one process.

- Without a store, a share is a contiguous run of forwards (split as accelerate's `split_between_processes` splits a
  list: the first processes take one more); the shares are gathered with accelerate's `gather` (padded to a common
  length, as collectives need equal shapes; never pickled objects) and put back in dataset order.
- With ``cache_dir=`` (the embedding store, `data/store.py`), a share is a run of whole store shards: each process
  writes its shards into the store, the processes meet at a barrier, and each reads the whole result back from the
  store (no collective moves embeddings). The store's claims keep this safe beside any other writer, and a store
  filled by N processes is bit for bit the store one process fills.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from accelerate.utils import gather

from ..backbone import projection_dim
from .extraction import ExtractedEmbeddings, extract_embeddings, run_size
from .loader import items_per_forward
from .store import DEFAULT_SHARD_SIZE

__all__ = ["extract_embeddings_distributed", "shard_bounds"]

#: `extract_embeddings`' default batch size (the shares are runs of whole forwards).
_BATCH_SIZE = inspect.signature(extract_embeddings).parameters["batch_size"].default


def shard_bounds(num_items: int, num_processes: int, process_index: int) -> tuple[int, int]:
    """``[start, stop)`` of process ``process_index``'s contiguous shard of ``num_items`` items.

    Shards differ in size by at most one item (the first ``num_items % num_processes`` shards get one more), so no
    process idles while another extracts a whole extra batch.
    """
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"Invalid process {process_index} of {num_processes}.")
    base, extra = divmod(num_items, num_processes)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (1 if process_index < extra else 0)


def _item_bounds(num_items: int, block: int, num_processes: int, process_index: int) -> tuple[int, int]:
    """``[start, stop)`` items of a process's share of whole blocks of ``block`` items (forwards, or shards)."""
    first, last = shard_bounds(math.ceil(num_items / block), num_processes, process_index)  # in blocks
    return min(first * block, num_items), min(last * block, num_items)


def extract_embeddings_distributed(
    accelerator,
    backbone,
    image_processor,
    dataset,
    *,
    augment_views: int = 10,
    indices: Sequence[int] | None = None,
    show_progress: bool | None = None,
    **kwargs,
) -> ExtractedEmbeddings:
    """`extract_embeddings` sharded over the processes of ``accelerator``; returns the full result on every process.

    Args:
        accelerator (`accelerate.Accelerator` or `accelerate.PartialState`): the distributed context (its
            `num_processes`, `process_index` and `device`). With one process this is plain `extract_embeddings`.
        backbone, image_processor, dataset: as for [`~xmadapter_hf.data.extraction.extract_embeddings`].
        augment_views (`int`, *optional*, defaults to 10): augmented views per item (0 = the plain view).
        indices (`Sequence[int]`, *optional*): the items to embed, in the order wanted (default: all of them).
        show_progress (`bool`, *optional*): progress bar; by default on the main process only.
        kwargs: any other keyword argument of `extract_embeddings` (`seed`, `batch_size`, `image_column`,
            `label_column`, `autocast_dtype`, `num_workers`, `cache_dir`, `dataset_fingerprint`, `shard_size`);
            every process must pass the same values (but `num_workers`). With ``cache_dir`` each process embeds a run
            of whole store shards into the store and reads the whole result back from it after a barrier
            (`accelerator.wait_for_everyone`); shards are then the unit of sharing, so pass a ``shard_size`` that
            gives every process some (e.g. at most ``M / num_processes``).

    Returns:
        [`~xmadapter_hf.data.extraction.ExtractedEmbeddings`]: embeddings `(V, M, C)` and labels `(M,)` in the order of
        ``indices``, identical on every process and bit-identical to a one-process run with the same `batch_size`
        (and `shard_size`); its `images_embedded` counts this process's share.
    """
    indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise ValueError("The dataset is empty: cannot extract embeddings from no images.")
    world, rank = accelerator.num_processes, accelerator.process_index
    if show_progress is None:
        show_progress = accelerator.is_main_process
    if world == 1:
        return extract_embeddings(
            backbone, image_processor, dataset, augment_views=augment_views, indices=indices,
            show_progress=show_progress, **kwargs,
        )  # fmt: skip

    views, batch = max(augment_views, 1), kwargs.get("batch_size", _BATCH_SIZE)
    if kwargs.get("cache_dir") is not None:
        return _through_the_store(accelerator, backbone, image_processor, dataset, indices, show_progress,
                                  augment_views=augment_views, **kwargs)  # fmt: skip
    bounds = [_item_bounds(len(indices), items_per_forward(batch, views), world, p) for p in range(world)]
    start, stop = bounds[rank]
    longest = max(last - first for first, last in bounds)
    dim = projection_dim(backbone)
    if stop > start:
        mine = extract_embeddings(
            backbone, image_processor, dataset, augment_views=augment_views, indices=indices[start:stop],
            show_progress=show_progress, **kwargs,
        )  # fmt: skip
        embeds, labels = mine.embeds.transpose(0, 1), mine.labels  # (m, V, C): items first, for the gather
    else:  # fewer items than processes: this process has nothing to embed but must still join the collectives
        embeds, labels = torch.zeros(0, views, dim), torch.zeros(0, dtype=torch.long)
    # Collectives need the same shape on every process: pad each shard to the longest one, drop the padding after.
    padding = longest - embeds.shape[0]
    embeds = torch.cat([embeds, embeds.new_zeros(padding, views, dim)])
    labels = torch.cat([labels, labels.new_full((padding,), -1)])
    device = accelerator.device  # NCCL gathers CUDA tensors only; gloo (CPU) takes these as they are
    all_embeds = gather(embeds.contiguous().to(device)).cpu()  # (world * longest, V, C), process-major
    all_labels = gather(labels.to(device)).cpu()
    keep = []
    for process, (first, last) in enumerate(bounds):
        offset = process * longest
        keep.extend(range(offset, offset + last - first))
    keep = torch.tensor(keep, dtype=torch.long)
    embedded = stop - start
    return ExtractedEmbeddings(all_embeds[keep].transpose(0, 1).contiguous(), all_labels[keep],
                               images_embedded=embedded)  # fmt: skip


def _through_the_store(accelerator, backbone, image_processor, dataset, indices, show_progress, **kwargs):
    """Each process fills the store with its run of whole shards; after a barrier every process reads all of it."""
    views, batch = max(kwargs["augment_views"], 1), kwargs.get("batch_size", _BATCH_SIZE)
    block = run_size(kwargs.get("shard_size", DEFAULT_SHARD_SIZE), batch, views)
    start, stop = _item_bounds(len(indices), block, accelerator.num_processes, accelerator.process_index)
    embedded = 0
    if stop > start:
        mine = extract_embeddings(
            backbone, image_processor, dataset, indices=indices[start:stop], show_progress=show_progress, **kwargs
        )
        embedded = mine.images_embedded
    accelerator.wait_for_everyone()
    # Every share is stored now: this reads (it embeds only what another process failed to store, claims permitting).
    result = extract_embeddings(backbone, image_processor, dataset, indices=indices, show_progress=False, **kwargs)
    result.images_embedded += embedded
    return result
