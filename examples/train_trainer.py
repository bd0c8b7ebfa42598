"""Train an XMAdapter with the Hugging Face `Trainer`, on one process or many (DDP), in fp32 or mixed precision.

One GPU / CPU:        python examples/train_trainer.py
N GPUs:               accelerate launch --multi_gpu --num_processes N examples/train_trainer.py --mixed-precision bf16
                      (or torchrun --nproc_per_node N examples/train_trainer.py)
2 CPU processes:      torchrun --standalone --nproc_per_node 2 examples/train_trainer.py

The `TrainingArguments` that matter under DDP:
- `use_cpu=True` on a machine without GPU (else each torchrun process trains alone, not distributed);
- `ddp_find_unused_parameters=False`: every parameter of a built method receives a gradient;
- `ddp_broadcast_buffers=False`: the cache buffers never change, there is nothing to broadcast at each forward;
- `remove_unused_columns=False`: the pixel path's dataset yields `pixel_values`/`cache_index` built on the fly;
- `data_seed`: the shuffled order is drawn from (seed, epoch) alone, the same for any number of processes.
The model normalises its loss by Trainer's `num_items_in_batch` (counted over the accumulated batch and gathered over
processes), so N processes with per-device batch b train like one process with batch N * b.

The adapter is saved with the model's own `save_pretrained` on the main process (adapter-only, no pickle);
`trainer.save_model` / `trainer.push_to_hub` would add Trainer's `training_args.bin`, a pickle
(see docs/distributed.md).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from example_utils import (
    PixelItems,
    autocast_dtype,
    build_distributed_cache,
    build_model,
    run_info,
    save_on_main_process,
    start,
    write_report,
)
from transformers import Trainer, TrainerCallback, TrainingArguments

from xmadapter_hf.training import build_optimizer


class SetEpoch(TrainerCallback):
    """Tells the dataset the epoch at the start of each one (fresh augmentations per epoch on the pixel path).

    Accelerate's dataloader forwards `set_epoch` to the dataset with one process, but not when its batch sampler is
    sharded over several processes and wraps a shuffling sampler: without this callback every epoch of a shuffled
    multi-process run would reuse epoch 0's augmentations.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is the number of epochs done (fractional when resuming in the middle of one)
        self.dataset.set_epoch(math.floor(state.epoch + 1e-6))


def embedding_items(embeds: torch.Tensor, labels: torch.Tensor, with_cache_index: bool = True) -> Dataset:
    """A `datasets.Dataset` of every (view, image) pair: `image_embeds`, `labels` and `cache_index` (= the image)."""
    views, images = embeds.shape[:2]
    columns = {"image_embeds": embeds.reshape(views * images, -1).tolist(), "labels": labels.repeat(views).tolist()}
    if with_cache_index:
        columns["cache_index"] = torch.arange(images).repeat(views).tolist()
    return Dataset.from_dict(columns).with_format("torch")


def main() -> None:
    args, cpu, work, backbone, names, train, test = start(__doc__)
    output = Path(args.output) if args.output else work / "adapter"
    training_args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation,
        max_steps=args.steps,
        learning_rate=args.learning_rate or 1e-3,  # unused: the method's own optimiser is passed below
        max_grad_norm=0.0,  # no clipping, as in the methods' recipes (Tip-Adapter-F's code) and the Accelerate loop
        use_cpu=cpu,
        bf16=args.mixed_precision == "bf16",
        fp16=args.mixed_precision == "fp16",
        ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False,
        remove_unused_columns=False,
        train_sampling_strategy="sequential" if args.no_shuffle else "random",
        seed=args.seed,
        data_seed=args.seed,
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, args.steps // 5),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    state = PartialState()  # set up by TrainingArguments (gloo on CPU under torchrun)
    model = build_model(args, backbone, names).to(training_args.device)
    dtype = autocast_dtype(args.mixed_precision)

    # The cache (and the fast path's training items): one extraction, sharded over the processes.
    views, test_views, tensors = build_distributed_cache(state, model, train, test, args, dtype)
    if args.path == "embeddings":
        train_items = embedding_items(views.embeds, views.labels)
        test_items = embedding_items(test_views.embeds, test_views.labels, with_cache_index=False)
    else:
        train_items = PixelItems(train, model.processor, seed=args.seed, augment=args.views > 0)
        test_items = PixelItems(test, model.processor, augment=False, with_cache_index=False)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_items,
        optimizers=build_optimizer(model, num_training_steps=args.steps, learning_rate=args.learning_rate),
        callbacks=[SetEpoch(train_items)] if hasattr(train_items, "set_epoch") else None,
    )
    started = time.perf_counter()
    result = trainer.train()
    train_seconds = time.perf_counter() - started
    trained_images = args.steps * args.batch_size * args.accumulation * state.num_processes

    # Trainer.predict gathers the predictions of every process (dropping Accelerate's padding of the last batch); the
    # config's `keys_to_ignore_at_inference` makes them the logits alone.
    prediction = trainer.predict(test_items)
    logits = torch.as_tensor(prediction.predictions)
    labels = torch.as_tensor(prediction.label_ids)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()

    # Save: the adapter alone, by the main process only, once every process has finished.
    unwrapped, saved = save_on_main_process(trainer.accelerator, trainer.model_wrapped, output)

    info = run_info(
        trainer.accelerator, args, num_processes=state.num_processes, accumulation=args.accumulation, names=names,
        labels=labels, trained_images=trained_images, train_seconds=train_seconds, saved=saved,
        train_items=train_items, output=output,
    )  # fmt: skip
    info.update(
        losses=[entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        train_loss=result.training_loss,
        accuracy=accuracy,
    )
    tensors["adapter"] = unwrapped.adapter_state_dict()
    tensors["eval"] = {"logits": logits, "labels": labels}
    write_report(args.dump_dir, state.process_index, info, tensors)
    if state.is_main_process:
        precision = "fp32" if args.mixed_precision == "no" else args.mixed_precision
        print(
            f"{info['distributed_type']}, {state.num_processes} process(es), {precision}, {args.path} path: "
            f"test accuracy {accuracy:.3f} over {labels.numel()} images (chance {1 / len(names):.3f})"
        )
        print(
            f"throughput: training {info['images_per_second']:.1f} images/s ({trained_images} images, "
            f"{train_seconds:.2f} s, Trainer overhead included)"
        )
        print(f"adapter saved to {output}")


if __name__ == "__main__":
    main()
