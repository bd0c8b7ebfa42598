"""Tiny random CLIP backbones and generated image tasks, for tests, examples and docs (no download needed).

The tiny CLIP is sound on purpose: its tokenizer has a real byte-level vocabulary (> 100 tokens) and the text
config's bos/eos/pad ids are the tokenizer's, so that pooling picks the end-of-text token and different class names
get different text embeddings (with CLIPConfig's default eos id every class would get the same embedding).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["save_tiny_clip", "tiny_clip", "tiny_clip_config", "tiny_image_dataset", "tiny_tokenizer", "vit_b_clip"]


def tiny_tokenizer():
    """A `CLIPTokenizer` over the printable byte-level characters (each also with `</w>`), no merges."""
    from transformers import CLIPTokenizer

    chars = [chr(i) for i in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip_config(
    projection_dim: int = 32, image_size: int = 30, hidden_size: int = 32, layers: int = 2, heads: int = 4
):
    """A `CLIPConfig` of the tiny test size, with the tiny tokenizer's special token ids."""
    from transformers import CLIPConfig

    tok = tiny_tokenizer()
    common = dict(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=37)
    text = dict(
        common, vocab_size=len(tok), max_position_embeddings=77,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    vision = dict(common, image_size=image_size, patch_size=2)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def _with_processor(config, image_size: int, seed: int):
    """A random `CLIPModel` of ``config`` (eval mode, weights from ``seed``) and a `CLIPProcessor` for it."""
    from transformers import CLIPModel, CLIPProcessor

    try:  # transformers 5 without torchvision: the PIL backend, named explicitly to avoid a fallback warning
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer())


def tiny_clip(seed: int = 0, projection_dim: int = 32, image_size: int = 30, **config_kwargs):
    """A tiny random `CLIPModel` (eval mode) and its `CLIPProcessor`; the same seed gives the same weights."""
    config = tiny_clip_config(projection_dim=projection_dim, image_size=image_size, **config_kwargs)
    return _with_processor(config, image_size, seed)


def vit_b_clip(patch_size: int = 16, seed: int = 0):
    """A random CLIP of ViT-B/``patch_size`` size (vision 768 x 12 layers, text 512 x 12, projection 512, 224 px) with
    the tiny tokenizer: the benchmarks' stand-in for `openai/clip-vit-base-patch16` / `-patch32`, whose weights cannot
    be downloaded here (same compute, random weights)."""
    from transformers import CLIPConfig

    tok = tiny_tokenizer()
    text = dict(
        hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=2048, vocab_size=len(tok),
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    vision = dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224,
        patch_size=patch_size,
    )  # fmt: skip
    return _with_processor(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512), 224, seed)


def save_tiny_clip(directory, seed: int = 0, **kwargs) -> str:
    """Saves a tiny CLIP and its processor to ``directory``: the honest stand-in for a Hub checkpoint."""
    model, processor = tiny_clip(seed=seed, **kwargs)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def tiny_image_dataset(
    num_classes: int = 4,
    shots: int = 4,
    size: int = 30,
    seed: int = 0,
    noise: float = 0.35,
    start_index: int = 0,
):
    """A generated `datasets.Dataset` (`image`, `label`): each class a colour and a stripe pattern, plus noise.

    ``noise`` (0..1) blends each image with uniform noise, so that the task is learnable but not trivial.
    ``start_index`` offsets the per-image random draws, so that disjoint train and test sets come from one seed.
    """
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    class_rng = np.random.default_rng(10_000 + seed)
    colours = class_rng.uniform(0, 255, size=(num_classes, 3))
    periods = class_rng.integers(2, 8, size=num_classes)
    images, labels = [], []
    for label in range(num_classes):
        for shot in range(shots):
            rng = np.random.default_rng([seed, label, start_index + shot])
            yy, xx = np.mgrid[0:size, 0:size]
            phase = rng.integers(0, periods[label])
            stripes = ((xx + yy + phase) // periods[label]) % 2
            base = colours[label][None, None, :] * (0.6 + 0.4 * stripes[..., None])
            picture = (1 - noise) * base + noise * rng.uniform(0, 255, size=(size, size, 3))
            images.append(Image.fromarray(picture.clip(0, 255).astype(np.uint8)))
            labels.append(label)
    features = Features({"image": ImageFeature(), "label": Value("int64")})
    return Dataset.from_dict({"image": images, "label": labels}, features=features)
