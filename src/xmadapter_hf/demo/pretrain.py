"""Contrastive pre-training of the demo CLIP on procedural textures, reproducible on CPU.

    python -m xmadapter_hf.demo.pretrain --output DIR --seed 0

trains a small `transformers.CLIPModel` with CLIP's symmetric InfoNCE loss on freshly rendered textures and their
captions (`textures`, ``"clean"`` rendering, the 48 combinations that are not demo classes) and writes DIR in the
`save_pretrained` layout (config.json, model.safetensors, tokenizer files, preprocessor_config.json) plus
`pretraining.json` (settings, loss of every step, wall time, the weights' sha256).

Captions that name the same attributes as another image of the batch are positives for it too (a batch of 256 holds
several images of each combination): each row (image -> captions) and column (caption -> images) of the InfoNCE
targets spreads its mass evenly over the matching pairs; with all captions distinct this is CLIP's loss exactly.

Reproducibility: every image and caption of step ``t`` is drawn from `numpy.random.default_rng((PRETRAIN_KEY, seed,
t, item))`, the weights are initialised by `torch.manual_seed(seed)`, and the run uses a fixed thread count
(``--threads``) with deterministic algorithms, so a rerun with the same torch build on the same kind of CPU gives
the same weights (to float rounding; `--compare DIR` prints the largest difference from another run's weights).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .checkpoint import sha256_of
from .task import IMAGE_SIZE
from .textures import caption, matches, pretraining_combinations, render, sample_attributes
from .tokenizer import MODEL_MAX_LENGTH, build_tokenizer

__all__ = ["PretrainingSettings", "build_demo_clip", "main", "pixel_values", "pretrain", "pretraining_batch"]

#: The first key of every pre-training draw (the demo task uses another).
PRETRAIN_KEY = 7


@dataclass(frozen=True)
class PretrainingSettings:
    """The pre-training run: model size, schedule, seed (the defaults are the shipped demo CLIP's)."""

    seed: int = 0
    steps: int = 1000
    batch_size: int = 256
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    threads: int = 2
    vision_hidden: int = 96
    vision_layers: int = 4
    text_hidden: int = 64
    text_layers: int = 3
    heads: int = 4
    patch_size: int = 4
    projection_dim: int = 64


def _image_processor():
    try:  # transformers 5 without torchvision: the PIL backend, named explicitly to avoid a fallback warning
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )


def build_demo_clip(settings: PretrainingSettings):
    """The untrained demo `CLIPModel` (weights from ``settings.seed``) and its `CLIPProcessor`."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = build_tokenizer()
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    text = dict(
        hidden_size=settings.text_hidden, num_hidden_layers=settings.text_layers,
        num_attention_heads=settings.heads, intermediate_size=4 * settings.text_hidden, vocab_size=len(tokenizer),
        max_position_embeddings=MODEL_MAX_LENGTH, **special,
    )  # fmt: skip
    vision = dict(
        hidden_size=settings.vision_hidden, num_hidden_layers=settings.vision_layers,
        num_attention_heads=settings.heads, intermediate_size=4 * settings.vision_hidden, image_size=IMAGE_SIZE,
        patch_size=settings.patch_size,
    )  # fmt: skip
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=settings.projection_dim)
    torch.manual_seed(settings.seed)
    model = CLIPModel(config)
    return model, CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer)


def pixel_values(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, normalised as the demo processor does (no resize needed)."""
    mean = np.asarray(OPENAI_CLIP_MEAN, dtype=np.float32)
    std = np.asarray(OPENAI_CLIP_STD, dtype=np.float32)
    scaled = (images.astype(np.float32) * np.float32(1 / 255) - mean) / std
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))


def pretraining_batch(seed: int, step: int, batch_size: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Step ``step``'s images (B, H, W, 3) uint8, captions, and which caption describes which image (B, B) bool."""
    combinations = pretraining_combinations()
    attributes, images, captions, named = [], [], [], []
    for item in range(batch_size):
        rng = np.random.default_rng([PRETRAIN_KEY, seed, step, item])
        shown = sample_attributes(rng, combinations)
        text, said = caption(shown, rng)
        attributes.append(shown)
        captions.append(text)
        named.append(said)
        images.append(render(shown, rng, IMAGE_SIZE, "clean"))
    match = np.array([[matches(said, shown) for said in named] for shown in attributes])  # (image, caption)
    return np.stack(images), captions, match


def contrastive_loss(image_embeds, text_embeds, logit_scale, match: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss with every matching (image, caption) pair a positive (see the module doc)."""
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    logits = logit_scale.exp() * image_embeds @ text_embeds.t()  # (images, captions)
    targets = match.float()
    image_to_text = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def _learning_rate(settings: PretrainingSettings, step: int) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model, settings: PretrainingSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        plain = parameter.ndim < 2 or "embedding" in name or name == "logit_scale"
        (no_decay if plain else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.98), eps=1e-6)


def pretrain(settings: PretrainingSettings, steps: int | None = None, log_every: int = 0, evaluate=None):
    """Runs pre-training; returns (model, processor, losses). ``steps`` stops early (for reproduction checks).

    Runs with ``settings.threads`` threads and deterministic algorithms, and restores both settings afterwards.
    """
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(settings.threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(settings, steps, log_every, evaluate)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _pretrain(settings: PretrainingSettings, steps: int | None, log_every: int, evaluate):
    model, processor = build_demo_clip(settings)
    tokenizer = processor.tokenizer
    optimizer = _optimizer(model, settings)
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(settings.steps if steps is None else steps):
        images, captions, match = pretraining_batch(settings.seed, step, settings.batch_size)
        tokens = tokenizer(captions, padding=True, return_tensors="pt")
        out = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixel_values(images)
        )
        loss = contrastive_loss(out.image_embeds, out.text_embeds, model.logit_scale, torch.from_numpy(match))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(settings, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - started
            recent = sum(losses[-log_every:]) / log_every
            line = f"step {step + 1}: loss {recent:.4f}, scale {model.logit_scale.exp().item():.1f}, {elapsed:.0f} s"
            if evaluate is not None:
                model.eval()
                line += f", {evaluate(model, processor)}"
                model.train()
            print(line, flush=True)
    model.eval()
    return model, processor, losses


def compare_weights(directory_a, directory_b) -> float:
    """The largest absolute difference between the tensors of two saved demo CLIPs (their names must agree)."""
    from safetensors.torch import load_file

    a = load_file(str(Path(directory_a) / "model.safetensors"))
    b = load_file(str(Path(directory_b) / "model.safetensors"))
    if set(a) != set(b):
        raise ValueError(f"The two checkpoints hold different tensors: {sorted(set(a) ^ set(b))[:5]}.")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xmadapter_hf.demo.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="directory to write the CLIP into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PretrainingSettings.steps)
    parser.add_argument("--threads", type=int, default=PretrainingSettings.threads)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument(
        "--evaluate", action="store_true", help="print zero-shot accuracy on the demo validation split"
    )
    parser.add_argument("--compare", help="a saved demo CLIP to compare the result with (largest |difference|)")
    args = parser.parse_args(argv)
    settings = PretrainingSettings(seed=args.seed, steps=args.steps, threads=args.threads)
    started = time.perf_counter()
    model, processor, losses = pretrain(
        settings, log_every=args.log_every, evaluate=_zero_shot_report if args.evaluate else None
    )
    seconds = time.perf_counter() - started
    output = Path(args.output)
    model.save_pretrained(output)
    processor.save_pretrained(output)  # tokenizer files and processor_config.json
    processor.image_processor.save_pretrained(output)  # preprocessor_config.json, for tools that look for it
    record = {
        "settings": asdict(settings),
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "sha256": sha256_of(output / "model.safetensors"),
        "losses": losses,
    }
    (output / "pretraining.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {output} in {seconds:.0f} s; model.safetensors sha256 {record['sha256']}")
    if args.compare:
        difference = compare_weights(output, args.compare)
        print(f"largest |difference| from {args.compare}: {difference:.3g}")
        return 0 if difference <= 1e-5 else 1
    return 0


def _zero_shot_report(model, processor) -> str:
    """Zero-shot accuracy on the demo validation split, shifted and clean renderings (monitoring only)."""
    from .task import DEMO_CLASSES, demo_images

    with torch.no_grad():
        tokens = processor.tokenizer(
            [f"a photo of a {name}." for name in DEMO_CLASSES], padding=True, return_tensors="pt"
        )
        text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        parts = []
        for rendering in ("photo", "clean"):
            images, labels = demo_images("validation", rendering=rendering)
            image = F.normalize(model.get_image_features(pixel_values=pixel_values(images)).pooler_output, dim=-1)
            accuracy = float(((image @ text.t()).argmax(1).numpy() == labels).mean())
            parts.append(f"zero-shot {rendering} {accuracy:.3f}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
