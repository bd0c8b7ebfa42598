"""Distributed embedding extraction: each process embeds a contiguous shard, every process gets the whole result.

Extraction is the costly part of the embedding fast path (V augmented views of every image through the backbone), so
under `accelerate launch` / `torchrun` each process runs the one extraction pipeline (`extract_embeddings`) on its
own shard. A shard is a run of whole backbone batches (the batches one process would run, split as accelerate's
`split_between_processes` splits a list: the first processes take one more), and every augmentation draw is a function
of (seed, item index, view), so each item goes through the backbone in the very batch a single process would use: the
result is bit-identical to one process. The shards are gathered with accelerate's `gather` (padded to a common
length, as collectives need equal shapes; never pickled objects) and put back in dataset order.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from accelerate.utils import gather

from ..backbone import projection_dim
from .extraction import ExtractedEmbeddings, extract_embeddings

__all__ = ["extract_embeddings_distributed", "shard_bounds"]

#: `extract_embeddings`' default batch size (the shards are runs of whole batches).
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


def _item_bounds(num_items: int, batch_size: int, num_processes: int, process_index: int) -> tuple[int, int]:
    """``[start, stop)`` items of a process's shard of whole batches of ``batch_size`` items."""
    first, last = shard_bounds(math.ceil(num_items / batch_size), num_processes, process_index)  # in batches
    return min(first * batch_size, num_items), min(last * batch_size, num_items)


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
            `label_column`, `autocast_dtype`); every process must pass the same values.

    Returns:
        [`~xmadapter_hf.data.extraction.ExtractedEmbeddings`]: embeddings `(V, M, C)` and labels `(M,)` in the order of
        ``indices``, identical on every process and bit-identical to a one-process run with the same `batch_size`.
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

    batch = kwargs.get("batch_size", _BATCH_SIZE)
    bounds = [_item_bounds(len(indices), batch, world, process) for process in range(world)]
    start, stop = bounds[rank]
    longest = max(last - first for first, last in bounds)
    views, dim = max(augment_views, 1), projection_dim(backbone)
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
    return ExtractedEmbeddings(all_embeds[keep].transpose(0, 1).contiguous(), all_labels[keep])
