"""Shared fixtures: tiny random CLIPs (no download), generated image tasks, models of every method."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf.testing import tiny_clip, tiny_image_dataset

CLASS_NAMES = ["red apple", "green leaf", "blue sky", "yellow sun"]
ROOT = Path(__file__).resolve().parents[1]


def load_repo_module(relative_path: str):
    """A script of the repository that is not part of the package (`benchmarks/...`, `scripts/...`), imported."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def clip_and_processor():
    return tiny_clip(seed=0)


@pytest.fixture(scope="session")
def few_shot_dataset():
    return tiny_image_dataset(num_classes=len(CLASS_NAMES), shots=4, noise=0.8)


@pytest.fixture(scope="session")
def test_dataset():
    return tiny_image_dataset(num_classes=len(CLASS_NAMES), shots=3, noise=0.8, start_index=1000)


@pytest.fixture(scope="session")
def cache_embeds(clip_and_processor, few_shot_dataset):
    """Raw embeddings (NK, C) and labels (NK,) of the few-shot set, plain view (for fast cache building)."""
    from xmadapter_hf.data.extraction import extract_embeddings

    clip, processor = clip_and_processor
    extracted = extract_embeddings(clip, processor, few_shot_dataset, augment_views=0, show_progress=False)
    return extracted.embeds[0], extracted.labels


@pytest.fixture(scope="session")
def test_pixels(clip_and_processor, test_dataset):
    _, processor = clip_and_processor
    pixels = processor.image_processor(images=list(test_dataset["image"]), return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor(test_dataset["label"])


@pytest.fixture
def make_model(clip_and_processor, cache_embeds):
    """Builds a model of any method with its cache set from the session's embeddings."""

    def make(method: str = "xmadapter", **overrides):
        clip, processor = clip_and_processor
        model = XMAdapterForImageClassification.from_clip(
            clip, CLASS_NAMES, processor=processor, method=method, **overrides
        )
        model.set_cache(*cache_embeds)
        return model

    return make
