"""Train an XMAdapter with the Hugging Face `Trainer`, on one process or many (DDP), in fp32 or mixed precision.

One GPU / CPU:        python examples/train_trainer.py
N GPUs:               accelerate launch --multi_gpu --num_processes N examples/train_trainer.py --mixed-precision bf16
                      (or torchrun --nproc_per_node N examples/train_trainer.py)
2 CPU processes:      torchrun --standalone --nproc_per_node 2 examples/train_trainer.py

`recipe_arguments(model, ...)` gives the `TrainingArguments` of the method's recipe (optimiser settings, schedule,
epochs, batch) and `XMAdapterTrainer` builds the optimiser from them and the method's parameter groups: this script
builds no optimiser. The arguments it overrides for DDP:
- `use_cpu=True` on a machine without GPU (else each torchrun process trains alone, not distributed);
- `ddp_find_unused_parameters=False`: every parameter of a built method receives a gradient;
- `ddp_broadcast_buffers=False`: the cache buffers never change, there is nothing to broadcast at each forward;
- `data_seed`: the shuffled order is drawn from (seed, epoch) alone, the same for any number of processes.
The model normalises its loss by Trainer's `num_items_in_batch` (counted over the accumulated batch and gathered over
processes), so N processes with per-device batch b train like one process with batch N * b.

The adapter is saved with the model's own `save_pretrained` on the main process (adapter-only, no pickle);
`trainer.save_model` / `trainer.push_to_hub` would add Trainer's `training_args.bin`, a pickle
(see docs/distributed.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import PartialState
from example_utils import (
    EpochRecorder,
    autocast_dtype,
    build_distributed_cache,
    build_model,
    run_info,
    save_on_main_process,
    start,
    training_items,
    write_report,
)

from xmadapter_hf import XMAdapterTrainer, recipe_arguments


def main() -> None:
    args, cpu, work, backbone, names, train, test = start(__doc__)
    output = Path(args.output) if args.output else work / "adapter"
    model = build_model(args, backbone, names)
    training_args = recipe_arguments(
        model,
        str(work / "trainer"),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation,
        max_steps=args.steps,
        **({"learning_rate": args.learning_rate} if args.learning_rate else {}),
        use_cpu=cpu,
        bf16=args.mixed_precision == "bf16",
        fp16=args.mixed_precision == "fp16",
        ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False,
        train_sampling_strategy="sequential" if args.no_shuffle else "random",
        seed=args.seed,
        data_seed=args.seed,
        save_strategy="no",
        logging_steps=max(1, args.steps // 5),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    state = PartialState()  # set up by TrainingArguments (gloo on CPU under torchrun)
    model.to(training_args.device)
    dtype = autocast_dtype(args.mixed_precision)

    # The cache (and the fast path's training items): one extraction, sharded over the processes.
    views, test_views, tensors = build_distributed_cache(state, model, train, test, args, dtype)
    train_items, test_items = training_items(args, model, train, test, views, test_views)

    recorder = EpochRecorder(train_items)
    trainer = XMAdapterTrainer(model, training_args, train_dataset=train_items, callbacks=[recorder])
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
        dataset_epochs=recorder.epochs, output=output,
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
