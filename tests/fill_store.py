"""Fills an embedding store from a real process, for tests/test_store.py.

    python tests/fill_store.py STORE REPORT [--distributed] [--barrier DIR --parties N] [--reverse] [--delay S]
    torchrun --standalone --nproc_per_node 2 tests/fill_store.py STORE REPORT --distributed

Extracts the tiny CLIP's embeddings of a generated 24-image task (2 views, batches of 4 images, shards of 4 items)
into ``STORE`` with `extract_embeddings(cache_dir=...)`, or with `extract_embeddings_distributed` under an
`Accelerator(cpu=True)` (gloo) with ``--distributed``. Every backbone forward is counted (and slowed by ``--delay``
seconds, so that two processes filling one store really interleave). ``--barrier`` makes the ``N`` processes start
extracting together; ``--reverse`` asks for the items in reverse order. Each process writes ``REPORT.rank<R>.json``
(forwards, images and items it embedded, the store folder) and ``REPORT.rank<R>.safetensors`` (what it got back).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from xmadapter_hf.data.distributed import extract_embeddings_distributed
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.testing import tiny_clip, tiny_image_dataset

SETTINGS = dict(augment_views=2, seed=5, batch_size=4, shard_size=4, num_workers=0, show_progress=False)


def task():
    """The backbone, processor and data every process and the test itself use."""
    clip, processor = tiny_clip(seed=0)
    return clip, processor, tiny_image_dataset(num_classes=6, shots=4, noise=0.5)


def _barrier(directory: Path, rank: str, parties: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"ready-{rank}-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(directory.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError("the other process never started")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("report")
    parser.add_argument("--distributed", action="store_true")
    parser.add_argument("--barrier")
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--reverse", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clip, processor, data = task()
    counts = {"forwards": 0, "images": 0}
    original = clip.get_image_features

    def counted(*a, **kw):
        counts["forwards"] += 1
        counts["images"] += kw["pixel_values"].shape[0]
        time.sleep(args.delay)
        return original(*a, **kw)

    clip.get_image_features = counted
    indices = list(range(len(data)))[:: -1 if args.reverse else 1]
    rank = os.environ.get("RANK", "0")
    if args.barrier:
        _barrier(Path(args.barrier), f"{rank}-{args.reverse}", args.parties)
    if args.distributed:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        rank = str(accelerator.process_index)
        out = extract_embeddings_distributed(
            accelerator, clip, processor, data, indices=indices, cache_dir=args.store, **SETTINGS
        )
    else:
        out = extract_embeddings(clip, processor, data, indices=indices, cache_dir=args.store, **SETTINGS)
    report = {**counts, "items": out.images_embedded, "cache_path": out.cache_path, "pid": os.getpid()}
    Path(f"{args.report}.rank{rank}.json").write_text(json.dumps(report))
    save_file({"embeds": out.embeds, "labels": out.labels}, f"{args.report}.rank{rank}.safetensors")


if __name__ == "__main__":
    main()
