"""What `train_accelerate.py` and `train_trainer.py` share: the command line, the task, the datasets, the reports.

The task is generated (coloured stripes plus noise, `xmadapter_hf.testing.tiny_image_dataset`) so that the examples
run offline; `--model` defaults to a tiny random CLIP saved to a temporary directory and loaded *by path*, exactly as
a user loads `openai/clip-vit-base-patch16`. To train on your own data, replace `build_task` by a function returning
two `datasets.Dataset`s with `image` and `label` columns.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

from xmadapter_hf import AugmentedImagesDataset, EmbeddingViewsDataset, XMAdapterForImageClassification

__all__ = [
    "EpochRecorder",
    "add_common_arguments",
    "autocast_dtype",
    "build_model",
    "build_task",
    "write_report",
]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags both training examples accept."""
    parser.add_argument("--model", help="a CLIP Hub id or local path (default: a tiny random CLIP, offline)")
    parser.add_argument("--path", choices=("embeddings", "pixels"), default="embeddings",
                        help="embeddings: extract once (augmented views), train on them; pixels: images -> processor "
                             "-> backbone at every step, with a fresh augmentation per epoch")  # fmt: skip
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no",
                        help="autocast dtype of the forward (fp16 needs a GPU; bf16 runs on CPU too)")  # fmt: skip
    parser.add_argument("--method", default="xmadapter", help="a trainable method (default xmadapter)")
    parser.add_argument("--hard-sample-strength", type=float, help="lambda_hard (0 = off; default: 1 for xmadapter)")
    parser.add_argument("--sharpness", type=float, help="beta (default: 20 for the tiny CLIP, else the config's)")
    parser.add_argument("--residual-ratio", type=float, help="alpha (default: 1.0)")
    parser.add_argument("--learning-rate", type=float, help="default: the method's recipe (1e-3 for XMAdapter)")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=8, help="per process and micro-batch")
    parser.add_argument("--accumulation", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--no-shuffle", action="store_true", help="visit the training items in dataset order")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument(
        "--views", type=int, default=4, help="augmented views per few-shot image (cache and fast path)"
    )
    parser.add_argument("--test-shots", type=int, default=10, help="test images per class")
    parser.add_argument("--noise", type=float, default=0.85, help="difficulty of the generated task (0..1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="where the main process saves the adapter (default: a temporary directory)")
    parser.add_argument("--dump-dir", help="write per-process reports here (JSON, adapter tensors as safetensors)")


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The torch dtype of a `--mixed-precision` value (None for `no`)."""
    return {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]


def build_task(args, work: Path):
    """(backbone path, class names, few-shot train set, test set). Every process builds the same."""
    if args.model:
        backbone = args.model
    else:
        from xmadapter_hf.testing import save_tiny_clip

        # Each process saves its own copy (same seed, same weights): no process waits on another's file system.
        backbone = save_tiny_clip(work / "tiny-clip")
    from xmadapter_hf.testing import tiny_image_dataset

    names = [f"class {i}" for i in range(args.classes)]
    task = dict(num_classes=args.classes, noise=args.noise, seed=args.seed)
    train = tiny_image_dataset(shots=args.shots, **task)
    test = tiny_image_dataset(shots=args.test_shots, start_index=10_000, **task)
    return backbone, names, train, test


def build_model(args, backbone: str, names: list[str]) -> XMAdapterForImageClassification:
    """The adapter over the backbone, with the flags' hyperparameters (its cache is set afterwards)."""
    sharpness = args.sharpness if args.sharpness is not None else (None if args.model else 20.0)
    overrides = {"sharpness": sharpness} if sharpness is not None else {}
    strength = args.hard_sample_strength
    if strength is None:
        strength = 1.0 if args.method == "xmadapter" else 0.0
    if args.method == "xmadapter":
        # the Gaussian term's weight is chosen by the validation search (`fit` runs it); these loops run none and
        # fix the residual ratio and the sharpness, so they train the paper's XMAdapter
        overrides["use_gaussian_term"] = False
    return XMAdapterForImageClassification.from_clip(
        backbone, names, method=args.method, seed=args.seed, hard_sample_strength=strength,
        residual_ratio=1.0 if args.residual_ratio is None else args.residual_ratio, **overrides,
    )  # fmt: skip


class EpochRecorder(TrainerCallback):
    """Records the epoch the training dataset is at, step by step (the reports show that every epoch reached it)."""

    def __init__(self, dataset):
        self.dataset, self.seen = dataset, set()

    @property
    def epochs(self) -> list[int]:
        return sorted(self.seen)

    def on_step_begin(self, args, state, control, **kwargs):
        self.seen.add(self.dataset.epoch)
        return control


def start(description: str):
    """Parses the common arguments and builds the task; returns (args, cpu, work, backbone, names, train, test).

    Runs before the process group exists: transformers 5 writes model files on rank 0 only once torch.distributed is
    initialised, and here every process saves its own copy of the tiny backbone.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    args = parser.parse_args()
    cpu = not torch.cuda.is_available()
    if args.mixed_precision == "fp16" and cpu:
        # Accelerate enables no fp16 autocast (and no grad scaler) on CPU: the run would silently be fp32.
        raise SystemExit("--mixed-precision fp16 needs a GPU; on CPU use bf16.")
    work = work_directory()
    backbone, names, train, test = build_task(args, work)
    return args, cpu, work, backbone, names, train, test


def build_distributed_cache(state, model, train, test, args, dtype):
    """One extraction sharded over the processes: the cache, and on the embedding path the test views too.

    Returns (views, test_views or None, tensors to report).
    """
    from xmadapter_hf.data.distributed import extract_embeddings_distributed

    views = extract_embeddings_distributed(
        state, model.clip, model.processor, train, augment_views=args.views, seed=args.seed, autocast_dtype=dtype
    )
    model.set_cache(views.embeds.mean(0), views.labels)
    model.config.augment_views = args.views
    if args.path != "embeddings":
        return views, None, {}
    test_views = extract_embeddings_distributed(
        state, model.clip, model.processor, test, augment_views=0, autocast_dtype=dtype
    )
    tensors = {"embeddings": {"train": views.embeds, "train_labels": views.labels, "test": test_views.embeds[0]}}
    return views, test_views, tensors


def training_items(args, model, train, test, views, test_views):
    """The training and test items of `--path`: draws from the cached views (embeddings) or fresh augmentations."""
    if args.path == "embeddings":  # one draw per image and epoch from its cached views
        train_items = EmbeddingViewsDataset(views.embeds, views.labels, seed=args.seed)
        test_items = EmbeddingViewsDataset(test_views.embeds, test_views.labels, cache_index=False)
    else:  # a fresh augmentation of each image every epoch
        train_items = AugmentedImagesDataset(train, model.processor, seed=args.seed, augment=args.views > 0)
        test_items = AugmentedImagesDataset(test, model.processor, augment=False, with_cache_index=False)
    return train_items, test_items


def save_on_main_process(accelerator, model, output: Path):
    """Saves the adapter alone (no backbone tensor) from the main process only, once every process has finished.

    Returns the unwrapped model and whether this process wrote the checkpoint.
    """
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    saved = False
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output)
        saved = True
    accelerator.wait_for_everyone()
    return unwrapped, saved


def run_info(
    accelerator,
    args,
    *,
    num_processes: int,
    accumulation: int,
    names,
    labels,
    trained_images: int,
    train_seconds: float,
    saved: bool,
    dataset_epochs: list[int],
    output: Path,
) -> dict:
    """The report fields both examples share (the tests read them from ``rank{r}.json``)."""
    return {
        "distributed_type": accelerator.distributed_type.value,
        "num_processes": num_processes,
        "process_index": accelerator.process_index,
        "mixed_precision": accelerator.mixed_precision,
        "path": args.path,
        "steps": args.steps,
        "global_batch": args.batch_size * num_processes * accumulation,
        "num_test": int(labels.numel()),
        "chance": 1 / len(names),
        "trained_images": trained_images,
        "train_seconds": train_seconds,
        "images_per_second": trained_images / train_seconds,
        "saved_checkpoint": saved,
        "dataset_epochs": dataset_epochs,
        "output": str(output),
    }  # fmt: skip


def write_report(dump_dir: str | None, rank: int, info: dict, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Writes ``rank{rank}.json`` and one ``rank{rank}_{name}.safetensors`` per entry of ``tensors`` (never pickle)."""
    if not dump_dir:
        return
    directory = Path(dump_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for name, group in tensors.items():
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in group.items()}, directory / f"rank{rank}_{name}.safetensors"
        )
    (directory / f"rank{rank}.json").write_text(json.dumps(info, indent=2))


def work_directory() -> Path:
    """A fresh temporary directory for the tiny backbone and the default output."""
    return Path(tempfile.mkdtemp(prefix="xmadapter-example-"))
