"""Train an XMAdapter with a plain Accelerate loop: any number of processes, mixed precision, gradient accumulation.

One GPU / CPU:    python examples/train_accelerate.py
N GPUs:           accelerate launch --multi_gpu --num_processes N examples/train_accelerate.py --mixed-precision bf16
2 CPU processes:  torchrun --standalone --nproc_per_node 2 examples/train_accelerate.py

(`accelerate launch --cpu --num_processes 2` starts ONE process; torchrun is the way to get real CPU processes.)

What makes N processes train exactly like one process with the same global batch:
- the loss of every micro-batch is ``sum_i(w_i CE_i) / n_items`` with ``n_items`` the number of labelled items of the
  whole accumulated global batch, counted over every micro-batch of the window and gathered over every process;
- DDP averages gradients over processes and `accelerator.backward` divides by the accumulation steps: the loss is
  multiplied by both beforehand, so the accumulated gradient is the gradient of the global-batch loss;
- the scheduler is stepped once per optimiser step (Accelerate's prepared scheduler steps once per process);
- the sampler's shuffled order is a function of the seed and the epoch only (Accelerate's seedable sampler).
With `--path embeddings` the embeddings are extracted once, each process a shard (`extract_embeddings_distributed`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import GradientAccumulationPlugin, set_seed
from example_utils import (
    autocast_dtype,
    build_distributed_cache,
    build_model,
    run_info,
    save_on_main_process,
    start,
    training_items,
    write_report,
)
from torch.utils.data import DataLoader

from xmadapter_hf.training import build_optimizer


def micro_batches(loader, dataset, epochs_seen: list[int]):
    """The training micro-batches, epoch after epoch, without end (the loop counts optimiser steps).

    The dataset is told the epoch here (its per-epoch draws): Accelerate's dataloader (1.15) forwards `set_epoch` to
    the dataset with one process, but not when its batch sampler is sharded over several processes and wraps a
    shuffling sampler.
    """
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        epochs_seen.append(epoch)
        yield from loader
        epoch += 1


@torch.no_grad()
def evaluate(accelerator: Accelerator, model, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the whole test set, on every process, in dataset order.

    Each process predicts its share; `gather_for_metrics` drops the items Accelerate repeated to even out the last
    batch, so that every test image counts exactly once.
    """
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        logits = model(**{k: v for k, v in batch.items() if k != "cache_index"}).logits
        logits, labels = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def main() -> None:
    args, cpu, work, backbone, names, train, test = start(__doc__)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=args.mixed_precision,
        # Windows of `accumulation` micro-batches are counted by the loop itself, across epoch ends, so that a window
        # never syncs early because a dataloader ended.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.accumulation, sync_with_dataloader=False
        ),
        # The shuffled order is drawn from (seed, epoch) alone, so that it is the same for any number of processes.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        # The cache buffers never change (nothing to broadcast); every parameter of a built method gets a gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=False)],
    )
    set_seed(args.seed)
    model = build_model(args, backbone, names).to(accelerator.device)
    dtype = autocast_dtype(args.mixed_precision)

    # The cache (and, on the fast path, the training items): one extraction, sharded over the processes.
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    views, test_views, tensors = build_distributed_cache(accelerator, model, train, test, args, dtype)
    train_items, test_items = training_items(args, model, train, test, views, test_views)
    accelerator.wait_for_everyone()
    extraction_seconds = time.perf_counter() - started
    extracted_images = (len(train) * max(args.views, 1)) + (len(test) if args.path == "embeddings" else 0)

    optimizer, scheduler = build_optimizer(model, num_training_steps=args.steps, learning_rate=args.learning_rate)
    train_loader = DataLoader(train_items, batch_size=args.batch_size, shuffle=not args.no_shuffle)
    test_loader = DataLoader(test_items, batch_size=args.batch_size)
    # The scheduler is NOT prepared: Accelerate's scheduler wrapper steps it once per process per optimiser step (for
    # schedules written in one-process steps), which would run the cosine schedule N times too fast here.
    model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader, test_loader)
    world, accumulation = accelerator.num_processes, args.accumulation

    before, labels = evaluate(accelerator, model, test_loader)  # the untrained adapter (Tip-Adapter's predictions)
    accuracy_before = (before.argmax(-1) == labels).float().mean().item()
    test_loss_before = torch.nn.functional.cross_entropy(before, labels).item()
    model.train()
    epochs_seen: list[int] = []
    batches = micro_batches(train_loader, train_items, epochs_seen)
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    trained_items, losses = 0, []
    for step in range(args.steps):
        window = [next(batches) for _ in range(accumulation)]
        # n_items of the whole global batch: every micro-batch of the window, on every process.
        local_items = sum(batch["labels"].ne(-100).sum() for batch in window).reshape(1)
        num_items = accelerator.gather(local_items).sum()
        window_loss = torch.zeros((), device=accelerator.device)
        for batch in window:
            with accelerator.accumulate(model):
                loss = model(**batch, num_items_in_batch=num_items).loss  # this process's share of the window loss
                window_loss += loss.detach()
                # Undo DDP's mean over processes and `backward`'s division by the accumulation steps: the loss is
                # already normalised by the global item count.
                accelerator.backward(loss * world * accumulation)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad()
        trained_items += int(num_items)
        losses.append(float(accelerator.reduce(window_loss, reduction="sum")))
        if accelerator.is_main_process and (step + 1) % max(1, args.steps // 5) == 0:
            print(f"step {step + 1}/{args.steps}: loss {losses[-1]:.4f}, lr {scheduler.get_last_lr()[0]:.2e}")
    accelerator.wait_for_everyone()
    train_seconds = time.perf_counter() - started

    logits, labels = evaluate(accelerator, model, test_loader)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    test_loss = torch.nn.functional.cross_entropy(logits, labels).item()

    # Save: the adapter alone (no backbone tensor), written by the main process only, after everyone finished.
    output = Path(args.output) if args.output else work / "adapter"
    unwrapped, saved = save_on_main_process(accelerator, model, output)

    images_per_second = trained_items / train_seconds
    info = run_info(
        accelerator, args, num_processes=world, accumulation=accumulation, names=names, labels=labels,
        trained_images=trained_items, train_seconds=train_seconds, saved=saved, dataset_epochs=epochs_seen,
        output=output,
    )  # fmt: skip
    info.update(
        losses=losses,
        accuracy=accuracy,
        accuracy_before=accuracy_before,
        test_loss=test_loss,
        test_loss_before=test_loss_before,
        extraction_images_per_second=extracted_images / extraction_seconds,
    )
    tensors["adapter"] = unwrapped.adapter_state_dict()
    tensors["eval"] = {"logits": logits, "labels": labels}
    write_report(args.dump_dir, accelerator.process_index, info, tensors)
    if accelerator.is_main_process:
        precision = "fp32" if args.mixed_precision == "no" else args.mixed_precision
        print(
            f"{accelerator.distributed_type.value}, {world} process(es), {precision}, {args.path} path: "
            f"test accuracy {accuracy_before:.3f} -> {accuracy:.3f}, test loss {test_loss_before:.3f} -> "
            f"{test_loss:.3f} over {labels.numel()} images (chance {1 / len(names):.3f})"
        )
        print(
            f"throughput: training {images_per_second:.1f} images/s ({trained_items} images, {train_seconds:.2f} s), "
            f"extraction {info['extraction_images_per_second']:.1f} images/s"
        )
        print(f"adapter saved to {output}")
    if math.isnan(losses[-1]):
        raise SystemExit("training diverged (NaN loss)")


if __name__ == "__main__":
    main()
