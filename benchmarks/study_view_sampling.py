"""Study: how the embedding path should draw training embeddings from cached views (accuracy, not time).

The end-to-end benchmark (`bench_end_to_end.py`) compares the embedding path with the reference procedure of
Tip-Adapter-F (fresh augmentations through the backbone at every step) on one shuffle per seed; its accuracy
comparison has little power. This study replays the reference exactly, many times, at no backbone cost:

1. **Bank** (slow, once): on the benchmark's task and backbone (random ViT-B/32-sized CLIP, 10 classes x 16 shots,
   noise 0.93), extract per seed the 10 cache views and the reference's fresh view of every image for every epoch
   (`augment_view(image, 224, draw_seed(seed, 1, epoch, index))`, the very draws of the benchmark's reference), plus
   validation (80), test (200, the benchmark's former test set) and test-500 embeddings. The backbone is frozen and
   in eval mode, so a forward on these pixels inside the training loop would give the same embeddings
   (`tests/test_fastpath.py` checks that the pixel and embedding paths give equal logits). The bank is saved under
   ``--bank-dir`` after every epoch, and a rerun resumes it. 100 epochs x 3 seeds take about 40 minutes on 2 CPU
   cores.
2. **Replay** (seconds): train Tip-Adapter-F as the benchmark does (same cache, search first, recipe, batch 20,
   cosine, search again) with the per-step embeddings taken from:
   - ``fresh``: the reference's fresh views (repetition r > 0 uses the fresh views of epochs shifted by 20 r);
   - ``view``: one of the 10 cached views per image and epoch (`EmbeddingViewsDataset(view_sampling="view")`);
   - ``gaussian``: a draw with the mean and covariance of the image's cached views (the default).
   ``--reps`` repeats each with other shuffles and draws (r = 0 is the benchmark's own shuffle).

Run: ``python benchmarks/study_view_sampling.py --bank-dir /tmp/view-bank`` (bank, then replay of epochs 20 and 100,
seeds 0-2, 3 repetitions). ``--epochs 2 --seeds 1 --reps 1`` for a smoke run of a few minutes.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
from bench_end_to_end import IMAGE_SIZE, vit_b32_clip

from xmadapter_hf import EmbeddingViewsDataset, XMAdapterForImageClassification
from xmadapter_hf import backbone as bb
from xmadapter_hf.data.augment import augment_view, draw_seed
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.data.images import load_image
from xmadapter_hf.testing import tiny_image_dataset
from xmadapter_hf.training import build_optimizer

CLASSES, SHOTS, VIEWS, BATCH = 10, 16, 10, 20
TASK = dict(num_classes=CLASSES, size=IMAGE_SIZE, noise=0.93, seed=0)
SEARCH = dict(search_scale=(100.0, 50.0))


def _save(state: dict, path: Path) -> None:
    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def build_bank(bank: Path, seeds: list[int], epochs: int, backbone, processor) -> None:
    bank.mkdir(parents=True, exist_ok=True)
    train = tiny_image_dataset(shots=SHOTS, **TASK)
    images = [load_image(image) for image in train["image"]]
    common = dict(augment_views=0, batch_size=32, show_progress=False)
    if not (bank / "eval.pt").exists():
        val = extract_embeddings(backbone, processor, tiny_image_dataset(shots=8, start_index=1000, **TASK), **common)
        test = extract_embeddings(
            backbone, processor, tiny_image_dataset(shots=20, start_index=2000, **TASK), **common
        )
        test500 = extract_embeddings(
            backbone, processor, tiny_image_dataset(shots=50, start_index=3000, **TASK), **common
        )
        evaluation = dict(val=val.embeds[0], val_labels=val.labels, test=test.embeds[0], test_labels=test.labels)
        evaluation.update(test50=test500.embeds[0], test50_labels=test500.labels, labels=torch.tensor(train["label"]))
        _save(evaluation, bank / "eval.pt")
    for seed in seeds:
        path = bank / f"seed{seed}.pt"
        state = torch.load(path) if path.exists() else {}
        if "views" not in state:
            views = extract_embeddings(
                backbone, processor, train, augment_views=VIEWS, seed=seed, batch_size=32, show_progress=False
            )
            state = {"views": views.embeds.clone(), "fresh": []}
            _save(state, path)
        while len(state["fresh"]) < epochs:
            epoch, rows = len(state["fresh"]), []
            for start in range(0, len(images), 32):
                index = range(start, min(start + 32, len(images)))
                pictures = [augment_view(images[i], IMAGE_SIZE, draw_seed(seed, 1, epoch, i)) for i in index]
                pixels = processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
                with torch.no_grad():
                    rows.append(bb.encode_images(backbone, pixels))
            state["fresh"].append(torch.cat(rows))
            _save(state, path)
            print(f"# bank: seed {seed}, fresh views of epoch {epoch} extracted", flush=True)


def replay(model, evaluation, state, variant: str, epochs: int, seed: int, rep: int) -> tuple[float, float]:
    labels, views, fresh = evaluation["labels"], state["views"], state["fresh"]
    count = len(labels)
    model.set_cache(views.mean(dim=0), labels)
    model.search_hyperparameters(evaluation["val"], evaluation["val_labels"], **SEARCH)
    if variant != "fresh":
        data = EmbeddingViewsDataset(views, labels, seed=seed + 1000 * rep, view_sampling=variant)
    optimizer, scheduler = build_optimizer(model, num_training_steps=epochs * -(-count // BATCH))
    model.train()
    for epoch in range(epochs):
        if variant == "fresh":
            embeds = fresh[(epoch + 20 * rep) % len(fresh)]
        else:
            embeds = data.embeddings_for_epoch(epoch)
        shuffle = draw_seed(seed, epoch) if rep == 0 else draw_seed(seed, epoch, 55, rep)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(shuffle))
        for start in range(0, count, BATCH):
            index = order[start : start + BATCH]
            loss = model(image_embeds=embeds[index], labels=labels[index], cache_index=index).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    model.search_hyperparameters(evaluation["val"], evaluation["val_labels"], **SEARCH)
    with torch.no_grad():
        return tuple(
            (model(image_embeds=evaluation[key]).logits.argmax(-1) == evaluation[f"{key}_labels"])
            .float()
            .mean()
            .item()
            for key in ("test", "test50")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank-dir", type=Path, required=True, help="where the extracted views are kept")
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="shuffles/draws per seed")
    parser.add_argument("--variants", nargs="+", default=["fresh", "view", "gaussian"])
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    backbone, processor = vit_b32_clip(seed=0)
    build_bank(args.bank_dir, seeds, max(args.epochs), backbone, processor)
    evaluation = torch.load(args.bank_dir / "eval.pt")
    names = [f"class {i}" for i in range(CLASSES)]
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for seed in seeds:
        state = torch.load(args.bank_dir / f"seed{seed}.pt")
        for epochs in args.epochs:
            for variant in args.variants:
                for rep in range(args.reps):
                    model = XMAdapterForImageClassification.from_clip(
                        backbone, names, processor=processor, method="tip-adapter-f"
                    )
                    accuracy = replay(model, evaluation, state, variant, epochs, seed, rep)
                    results.setdefault((epochs, variant), []).append(accuracy)
                    print(f"seed {seed} rep {rep}: {epochs} epochs, {variant}: test-200 {accuracy[0]:.3f}, "
                          f"test-500 {accuracy[1]:.3f}", flush=True)  # fmt: skip
    print()
    print(f"| epochs | draws | test-200 (mean of {len(seeds) * args.reps}) | test-500 | gap to fresh (test-500) |")
    print("|---|---|---|---|---|")
    for epochs in args.epochs:
        fresh = statistics.mean(r[1] for r in results.get((epochs, "fresh"), [(0, float("nan"))]))
        for variant in args.variants:
            rows = results[(epochs, variant)]
            small, large = statistics.mean(r[0] for r in rows), statistics.mean(r[1] for r in rows)
            print(f"| {epochs} | {variant} | {small:.3f} | {large:.3f} | {100 * (large - fresh):+.1f} points |")


if __name__ == "__main__":
    main()
