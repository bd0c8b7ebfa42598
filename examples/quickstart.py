"""Quickstart: adapt a frozen CLIP to a few-shot task with XMAdapter, compare with zero-shot and Tip-Adapter, save,
reload and check that the reloaded adapter predicts the same.

Offline by default: a tiny random CLIP is saved to a temporary directory and loaded *by path*, exactly as a user loads
`openai/clip-vit-base-patch16`, and the images are generated (coloured stripes plus noise). With a real checkpoint:

    python examples/quickstart.py --model openai/clip-vit-base-patch16

(the generated task then means little; use your own `datasets.Dataset` with `image` and `label` columns).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from xmadapter_hf import XMAdapterForImageClassification, fit
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.testing import save_tiny_clip, tiny_image_dataset


def accuracy(model, embeds, labels) -> float:
    with torch.no_grad():
        return (model(image_embeds=embeds).logits.argmax(-1) == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a CLIP Hub id or local path (default: a tiny random CLIP, offline)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--views", type=int, default=4, help="augmented views per cache image")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="where to save the adapter (default: a temporary directory)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="xmadapter-quickstart-"))
    backbone = args.model or save_tiny_clip(work / "tiny-clip")
    names = [f"class {i}" for i in range(args.classes)]
    # generated task: few-shot train, a validation split for the search, a held-out test split
    task = dict(num_classes=args.classes, noise=0.85, seed=args.seed)
    train = tiny_image_dataset(shots=args.shots, **task)
    validation = tiny_image_dataset(shots=4, start_index=1_000, **task)
    test = tiny_image_dataset(shots=20, start_index=2_000, **task)

    model = XMAdapterForImageClassification.from_clip(backbone, names, method="xmadapter", seed=args.seed)
    print(f"backbone {backbone!r}: logit scale {model.logit_scale:.2f}, projection dim {model.embed_dim}")
    # One extraction of V augmented views: the cache keys average them, training draws from them every epoch.
    views = extract_embeddings(model.clip, model.processor, train, augment_views=args.views, seed=args.seed)
    val = extract_embeddings(model.clip, model.processor, validation, augment_views=0, show_progress=False)
    held_out = extract_embeddings(model.clip, model.processor, test, augment_views=0, show_progress=False)
    test_embeds, test_labels = held_out.embeds[0], held_out.labels

    # A random tiny CLIP maps all images into a narrow cone (cosines 0.95-1), so it needs far sharper affinities and a
    # larger residual ratio than Tip-Adapter's ImageNet range (7, 3), which suits real CLIP weights.
    scale = (7.0, 3.0) if args.model else (50.0, 50.0)
    common = dict(validation_labels=val.labels, seed=args.seed, search_scale=scale, show_progress=False)
    # Training-free Tip-Adapter on the same cache and backbone, with its own validation search
    tip_adapter = XMAdapterForImageClassification.from_clip(
        model.clip, names, processor=model.processor, method="tip-adapter"
    )
    tip_adapter, tip_report = fit(tip_adapter, views, val.embeds[0], **common)
    tip = accuracy(tip_adapter, test_embeds, test_labels)
    print(f"Tip-Adapter validation search ({tip_report.num_validation} images): sharpness "
          f"{tip_adapter.config.sharpness:.2f}, residual ratio {tip_adapter.config.residual_ratio:.3f}")  # fmt: skip
    # XMAdapter: the training-free search first, then its recipe (XMAdapterTrainer), then the search again
    model, report = fit(model, views, val.embeds[0], epochs=args.epochs, **common)
    trained = accuracy(model, test_embeds, test_labels)
    with torch.no_grad():
        zero_shot = (model(image_embeds=test_embeds).zero_shot_logits.argmax(-1) == test_labels).float().mean().item()
        ratio = model(image_embeds=test_embeds).affinity_ratio.mean().item()
    steps = report.steps // report.epochs
    print(f"XMAdapter trained {report.epochs} epochs of {steps} steps (batch {report.batch_size})")
    print(f"test accuracy ({len(test_labels)} images, chance {1 / args.classes:.2f}): zero-shot {zero_shot:.3f}, "
          f"Tip-Adapter {tip:.3f}, XMAdapter trained {trained:.3f} (mean affinity ratio {ratio:.2f})")  # fmt: skip

    output = Path(args.output) if args.output else work / "adapter"
    model.save_pretrained(output)
    files = sorted(p.name for p in output.iterdir())
    size = sum(p.stat().st_size for p in output.iterdir())
    reloaded = XMAdapterForImageClassification.from_pretrained(output)
    with torch.no_grad():
        same = torch.equal(reloaded(image_embeds=test_embeds).logits, model(image_embeds=test_embeds).logits)
    print(f"saved {files} ({size / 1024:.1f} KiB, adapter only) to {output}; reloaded predictions identical: {same}")
    if not same:
        raise SystemExit("reloaded adapter predicts differently")


if __name__ == "__main__":
    main()
