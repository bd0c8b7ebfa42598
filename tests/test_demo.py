"""The shipped demo CLIP and its few-shot task (`xmadapter_hf.demo`)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf.demo import (
    DEMO_CLASSES,
    DEMO_CLIP_SHA256,
    DEMO_TASKS,
    POOL_SIZES,
    DemoCheckpointError,
    demo_clip_path,
    demo_images,
    demo_task,
    export_images,
    verify_demo_clip,
)
from xmadapter_hf.demo import checkpoint as demo_checkpoint
from xmadapter_hf.demo import task as demo_task_module
from xmadapter_hf.demo import textures as demo_textures
from xmadapter_hf.demo.textures import HELD_OUT_COMBINATIONS, grammar_words, pretraining_combinations

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_clip():
    from transformers import AutoProcessor, CLIPModel

    path = demo_clip_path()
    return CLIPModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def test_shipped_weights_load_by_path_with_their_hash(demo_clip):
    path = Path(demo_clip_path())
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == DEMO_CLIP_SHA256
    clip, processor = demo_clip
    assert (path / "model.safetensors").stat().st_size < 4_000_000  # a few MB of float32 weights
    text = clip.config.text_config
    tokenizer = processor.tokenizer
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
    )  # fmt: skip
    assert text.vocab_size == len(tokenizer)
    record = json.loads((path / "pretraining.json").read_text())
    assert record["sha256"] == DEMO_CLIP_SHA256


def test_a_damaged_or_incomplete_copy_is_refused(tmp_path):
    copy = Path(shutil.copytree(demo_clip_path(), tmp_path / "clip"))
    assert verify_demo_clip(copy) == str(copy)
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-100] ^= 0x01  # one bit of one weight
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(DemoCheckpointError, match="sha256 .* not the shipped"):
        verify_demo_clip(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(DemoCheckpointError, match="lacks tokenizer.json"):
        verify_demo_clip(copy)


def test_a_zipped_install_is_copied_to_the_cache(tmp_path):
    archive = tmp_path / "package.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in Path(demo_clip_path()).iterdir():
            zipped.write(file, f"clip/{file.name}")
    resource = zipfile.Path(archive, "clip/")
    copied = demo_checkpoint._copy_out(resource, tmp_path / "cache")
    assert copied.parent == tmp_path / "cache" and verify_demo_clip(copied) == str(copied)
    assert demo_checkpoint._copy_out(resource, tmp_path / "cache") == copied  # reused, not copied again


def test_tokenizer_gives_each_word_one_token_and_each_class_its_own_ids(demo_clip):
    _, processor = demo_clip
    tokenizer = processor.tokenizer
    assert len(tokenizer) > 200  # the characters, the merges and the two special tokens
    for word in grammar_words():
        assert len(tokenizer(word)["input_ids"]) == 3, word  # <|startoftext|> word <|endoftext|>
    ids = [tuple(tokenizer(f"a photo of a {name}.")["input_ids"]) for name in DEMO_CLASSES]
    assert len(set(ids)) == len(DEMO_CLASSES)
    assert all(len(sequence) == 9 for sequence in ids)


def test_class_names_get_different_text_embeddings(demo_clip):
    clip, processor = demo_clip
    model = XMAdapterForImageClassification.from_clip(clip, DEMO_CLASSES, processor=processor, method="zero-shot")
    weights = model.class_embeds
    cosines = weights @ weights.t() - 2 * torch.eye(len(DEMO_CLASSES))
    assert float(cosines.max()) < 0.98


def test_demo_classes_are_held_out_of_pretraining():
    shown = set(pretraining_combinations())
    assert len(shown) == 48 and not shown & set(HELD_OUT_COMBINATIONS)
    assert sorted(f"{c} {p}" for c, p in HELD_OUT_COMBINATIONS) == list(DEMO_CLASSES)


def test_generation_is_deterministic_and_splits_are_disjoint():
    pools = {split: demo_images(split) for split in POOL_SIZES}
    again = demo_task_module._pool.__wrapped__("photo", "validation", "photo")  # rendered anew, not from the memo
    assert all(np.array_equal(a, b) for a, b in zip(pools["validation"], again))
    for split, (images, labels) in pools.items():
        assert len(images) == len(labels) == POOL_SIZES[split] * len(DEMO_CLASSES)
    digests = {
        split: {hashlib.sha256(image.tobytes()).hexdigest() for image in images}
        for split, (images, _) in pools.items()
    }
    assert sum(len(d) for d in digests.values()) == sum(len(images) for images, _ in pools.values())
    few, few_labels = demo_images("train", shots=4, seed=0)
    assert np.array_equal(np.bincount(few_labels), np.full(len(DEMO_CLASSES), 4))
    assert {hashlib.sha256(image.tobytes()).hexdigest() for image in few} <= digests["train"]
    more, _ = demo_images("train", shots=8, seed=0)
    assert {image.tobytes() for image in few} <= {image.tobytes() for image in more}  # nested shot sets
    other, _ = demo_images("train", shots=4, seed=1)
    assert not np.array_equal(few, other)
    with pytest.raises(ValueError, match="shots"):
        demo_task("train", shots=65)


def _digests(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


def test_the_photo_task_is_the_one_the_docs_measured():
    # docs/demo.md, docs/accuracy.md and the README's tables were measured on these pixels: a change to the textures
    # module (e.g. a new rendering) must leave them as they are
    images, labels = demo_images("validation")
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == "2eeefec1925c3263b3d8d4dbc07765cf61e80093d843c469a9cb38b7f7d61171"


def test_sketch_task_pools_are_fixed_disjoint_and_distinct_from_the_photo_task():
    spec = DEMO_TASKS["sketch"]
    assert (spec.rendering, dict(spec.pool_sizes)) == ("sketch", {"train": 64, "validation": 16, "test": 50})
    pools = {split: demo_images(split, task="sketch") for split in spec.pool_sizes}
    for split, (images, labels) in pools.items():
        assert images.shape == (spec.pool_sizes[split] * len(DEMO_CLASSES), 32, 32, 3) and images.dtype == np.uint8
        assert np.array_equal(np.bincount(labels), np.full(len(DEMO_CLASSES), spec.pool_sizes[split]))
    again = demo_task_module._pool.__wrapped__("sketch", "validation", "sketch")  # rendered anew, not from the memo
    assert all(np.array_equal(a, b) for a, b in zip(pools["validation"], again))
    sketch = [_digests(images) for images, _ in pools.values()]
    assert len(set().union(*sketch)) == sum(len(images) for images, _ in pools.values())  # disjoint splits
    assert not set().union(*sketch) & _digests(demo_images("validation")[0])  # not the photo task's images
    few, few_labels = demo_images("train", shots=4, seed=0, task="sketch")
    more, _ = demo_images("train", shots=8, seed=0, task="sketch")
    assert np.array_equal(np.bincount(few_labels), np.full(len(DEMO_CLASSES), 4))
    assert _digests(few) <= _digests(more) <= sketch[0]  # nested shot sets, drawn from the train pool
    assert not np.array_equal(few, demo_images("train", shots=4, seed=1, task="sketch")[0])
    clean, clean_labels = demo_images("validation", rendering="clean", task="sketch")
    assert np.array_equal(clean_labels, pools["validation"][1]) and not _digests(clean) & sketch[1]
    dataset = demo_task("test", shots=3, seed=2, task="sketch")
    assert dataset.features["label"].names == list(DEMO_CLASSES) and len(dataset) == 3 * len(DEMO_CLASSES)


def test_demo_task_refuses_an_unknown_task_or_a_rendering_of_another_task(tmp_path):
    with pytest.raises(ValueError, match="`task` must be one of \\('photo', 'sketch'\\), got 'sketches'"):
        demo_task("train", task="sketches")
    with pytest.raises(ValueError, match="`rendering` must be 'sketch'"):
        demo_images("train", rendering="photo", task="sketch")
    with pytest.raises(ValueError, match="shots"):
        demo_images("test", shots=51, task="sketch")
    with pytest.raises(ValueError, match="`rendering` must be 'photo'"):
        export_images(tmp_path / "out", rendering="sketch")
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_sketch_outline_marks_both_sides_of_every_edge():
    mask = np.random.default_rng(0).random((9, 11)) < 0.5
    expected = np.zeros_like(mask)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            neighbours = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
            expected[i, j] = any(
                mask[a, b] != mask[i, j] for a, b in neighbours if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1]
            )
    assert np.array_equal(demo_textures._outline(mask), expected)


def test_demo_task_dataset_and_exported_imagefolder(tmp_path):
    from datasets import load_dataset

    train = demo_task("train", shots=2, seed=3)
    assert train.features["label"].names == list(DEMO_CLASSES)
    export_images(tmp_path, shots=2, seed=3)
    loaded = load_dataset("imagefolder", data_dir=str(tmp_path))
    assert set(loaded) == {"train", "validation", "test"}
    assert loaded["train"].features["label"].names == list(DEMO_CLASSES)
    assert len(loaded["train"]) == 2 * len(DEMO_CLASSES)
    assert len(loaded["test"]) == POOL_SIZES["test"] * len(DEMO_CLASSES)
    arrays, labels = demo_images("train", shots=2, seed=3)
    exported = sorted((int(item["label"]), np.asarray(item["image"]).tobytes()) for item in loaded["train"])
    assert exported == sorted((int(label), image.tobytes()) for label, image in zip(labels, arrays))


def test_zero_shot_is_well_above_chance_and_the_cache_helps(demo_clip):
    from xmadapter_hf import extract_embeddings, fit

    clip, processor = demo_clip

    def embeddings(split, shots):
        data = demo_task(split, shots=shots, seed=0)
        return extract_embeddings(clip, processor, data, augment_views=0, batch_size=64, show_progress=False)

    train, validation, test = embeddings("train", 8), embeddings("validation", 8), embeddings("test", 10)
    model = XMAdapterForImageClassification.from_clip(clip, DEMO_CLASSES, processor=processor, method="tip-adapter")
    model, _ = fit(
        model, train, validation.embeds[0], validation_labels=validation.labels, search_scale=(50, 50),
        search_step=(50, 20), show_progress=False,
    )  # fmt: skip
    with torch.no_grad():
        out = model(image_embeds=test.embeds[0])
    zero_shot = float((out.zero_shot_logits.argmax(-1) == test.labels).float().mean())
    adapted = float((out.logits.argmax(-1) == test.labels).float().mean())
    chance = 1 / len(DEMO_CLASSES)
    assert zero_shot > 2 * chance + 0.1, zero_shot  # measured: 0.481 (160 test images)
    assert adapted > zero_shot + 0.05, (adapted, zero_shot)  # measured: 0.556


def test_sketch_task_zero_shot_is_above_chance_but_far_from_saturated(demo_clip):
    from xmadapter_hf.demo.pretrain import pixel_values

    clip, processor = demo_clip
    model = XMAdapterForImageClassification.from_clip(clip, DEMO_CLASSES, processor=processor, method="zero-shot")
    accuracies = {}
    for rendering in ("sketch", "clean"):
        images, labels = demo_images("validation", rendering=rendering, task="sketch")
        with torch.no_grad():
            embeds = clip.get_image_features(pixel_values=pixel_values(images)).pooler_output
            predictions = model(image_embeds=embeds).logits.argmax(-1).numpy()
        accuracies[rendering] = float((predictions == labels).mean())
    chance = 1 / len(DEMO_CLASSES)
    assert 2 * chance < accuracies["sketch"] < 0.45, accuracies  # measured: 0.266 (256 validation images)
    assert accuracies["clean"] > 0.9, accuracies  # the same textures unshifted; measured: 0.977


def test_pretraining_reproduces_the_recorded_first_losses():
    from xmadapter_hf.demo.pretrain import PretrainingSettings, pretrain

    record = json.loads((Path(demo_clip_path()) / "pretraining.json").read_text())
    settings = PretrainingSettings(**record["settings"])
    threads = torch.get_num_threads()
    _, _, losses = pretrain(settings, steps=2)
    assert torch.get_num_threads() == threads  # restored
    assert np.allclose(losses, record["losses"][:2], rtol=0, atol=1e-5), (losses, record["losses"][:2])


def test_docs_demo_code_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "demo.md").read_text(), re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/demo.md", "exec"), namespace)
