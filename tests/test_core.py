"""Core I: the tiny CLIP is sound, zero-shot and Tip-Adapter equal their formulas, adapter-only save/load."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CLASS_NAMES
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification, pipeline

from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification
from xmadapter_hf.data.augment import augment_view, draw_seed
from xmadapter_hf.data.images import load_image
from xmadapter_hf.testing import save_tiny_clip, tiny_clip, tiny_image_dataset


def _raw_image_embeds(clip, processor, images):
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = clip.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _text_weights(clip, processor, names, templates):
    rows = []
    for name in names:
        tokens = processor.tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        out = out / out.norm(dim=-1, keepdim=True)
        mean = out.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_tiny_clip_is_sound(clip_and_processor, make_model):
    _, processor = clip_and_processor
    assert len(processor.tokenizer) > 100
    model = make_model("zero-shot")
    W = model.class_embeds
    cos = W @ W.t()
    off_diagonal = cos[~torch.eye(len(CLASS_NAMES), dtype=torch.bool)]
    assert off_diagonal.max() < 0.999, "different class names must get different text embeddings"
    assert torch.allclose(W.norm(dim=-1), torch.ones(len(CLASS_NAMES)), atol=1e-5)


def test_class_weights_are_the_template_ensemble(clip_and_processor):
    clip, processor = clip_and_processor
    templates = ["a photo of a {}.", "itap of a {}.", "art of the {}."]
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, templates=templates)
    expected = _text_weights(clip, processor, CLASS_NAMES, templates)
    torch.testing.assert_close(model.class_embeds, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", ["pixels", "embeddings"])
def test_zero_shot_and_tip_adapter_equal_their_formulas(clip_and_processor, few_shot_dataset, test_dataset, path):
    clip, processor = clip_and_processor
    alpha, beta = 2.5, 7.0
    model = XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method="tip-adapter", residual_ratio=alpha, sharpness=beta
    )
    model.build_cache(few_shot_dataset, augment_views=2, seed=3, show_progress=False)

    # The test's own cache keys: views drawn from (seed, index, view), raw embeddings averaged, then normalised.
    size = processor.image_processor.crop_size["height"]
    views = []
    for view in range(2):
        images = [
            augment_view(load_image(img), size, draw_seed(3, i, view))
            for i, img in enumerate(few_shot_dataset["image"])
        ]
        views.append(_raw_image_embeds(clip, processor, images))
    keys = torch.stack(views).mean(dim=0)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    one_hot = torch.nn.functional.one_hot(torch.tensor(few_shot_dataset["label"]), len(CLASS_NAMES)).float()

    images = list(test_dataset["image"])
    raw = _raw_image_embeds(clip, processor, images)
    f = raw / raw.norm(dim=-1, keepdim=True)
    W = _text_weights(clip, processor, CLASS_NAMES, ["a photo of a {}."])
    s = clip.logit_scale.exp().item()
    zero_shot = s * f @ W.t()
    tip = zero_shot + alpha * torch.exp(-beta * (1 - f @ keys.t())) @ one_hot

    if path == "pixels":
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        out = model(pixel_values=pixels)
    else:
        out = model(image_embeds=raw)
    torch.testing.assert_close(out.zero_shot_logits, zero_shot, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, tip, atol=1e-5, rtol=1e-5)
    zs_model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="zero-shot")
    torch.testing.assert_close(zs_model(image_embeds=raw).logits, zero_shot, atol=1e-5, rtol=1e-5)


def test_cache_labels_are_integers_and_cache_size_is_set(make_model, cache_embeds):
    model = make_model("tip-adapter")
    assert model.cache_labels.dtype == torch.long
    assert model.config.cache_size == cache_embeds[0].shape[0] == 16
    assert model.config.shots == 4


def test_build_cache_errors(clip_and_processor, few_shot_dataset):
    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="tip-adapter")
    with pytest.raises(ValueError, match="empty"):
        model.build_cache(few_shot_dataset.select([]), show_progress=False)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        model.build_cache(tiny_image_dataset(num_classes=5, shots=1), augment_views=0, show_progress=False)
    with pytest.raises(ValueError, match="at least one cache image"):
        model.build_cache(tiny_image_dataset(num_classes=3, shots=1), augment_views=0, show_progress=False)
    assert model.config.cache_size == 0, "a failed build_cache must not change the model"


def test_backbone_frozen_and_in_eval_mode(make_model, tmp_path):
    model = make_model("xmadapter")
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert any(p.requires_grad for p in model.method.parameters())
    model.train()
    assert model.training and model.method.training and not model.clip.training
    assert not any(m.training for m in model.clip.modules())
    model.save_pretrained(tmp_path)
    loaded = XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=tiny_clip()[0])
    assert not any(p.requires_grad for p in loaded.clip.parameters())
    loaded.train()
    assert not loaded.clip.training


def test_save_writes_no_backbone_tensor(make_model, tmp_path):
    model = make_model("xmadapter")
    model.save_pretrained(tmp_path / "direct")
    # Trainer checkpoints call save_pretrained(output_dir, state_dict=<the full model's state dict>)
    model.save_pretrained(tmp_path / "trainer", state_dict=model.state_dict())
    for sub in ("direct", "trainer"):
        keys = set(load_file(tmp_path / sub / "model.safetensors"))
        assert keys and not any(k.startswith("clip.") for k in keys)
        assert keys == set(model.adapter_state_dict())
        assert "method.cache_keys" in keys and "class_embeds" in keys and "cache_labels" in keys


def test_from_pretrained_by_path_is_bit_identical(tmp_path, clip_and_processor, few_shot_dataset, test_pixels):
    base = save_tiny_clip(tmp_path / "clip")  # the stand-in for openai/clip-vit-base-patch16
    model = XMAdapterForImageClassification.from_clip(base, CLASS_NAMES, method="tip-adapter-f", sharpness=5.0)
    model.build_cache(few_shot_dataset, augment_views=1, show_progress=False)
    with torch.no_grad():
        model.method.cache_keys.add_(0.01)  # as if trained
    assert model.config.base_model_name_or_path == base
    model.save_pretrained(tmp_path / "adapter")
    pixels, _ = test_pixels
    expected = model(pixel_values=pixels).logits

    loaded = XMAdapterForImageClassification.from_pretrained(tmp_path / "adapter")
    assert torch.equal(loaded(pixel_values=pixels).logits, expected)
    assert not loaded.training and not any(p.requires_grad for p in loaded.clip.parameters())
    auto = AutoModelForImageClassification.from_pretrained(tmp_path / "adapter")
    assert isinstance(auto, XMAdapterForImageClassification)
    assert torch.equal(auto(pixel_values=pixels).logits, expected)


def test_pipeline_returns_label_names(make_model, clip_and_processor, test_dataset, tmp_path):
    model = make_model("tip-adapter", sharpness=20.0)
    _, processor = clip_and_processor
    classifier = pipeline("image-classification", model=model, image_processor=processor.image_processor)
    predictions = classifier(test_dataset[0]["image"], top_k=len(CLASS_NAMES))
    assert {p["label"] for p in predictions} == set(CLASS_NAMES)
    expected = model(
        pixel_values=processor.image_processor(images=[test_dataset[0]["image"]], return_tensors="pt")["pixel_values"]
    )
    assert predictions[0]["label"] == CLASS_NAMES[int(expected.logits.argmax())]


def test_checkpoint_with_missing_or_extra_tensor_is_refused(make_model, tmp_path, clip_and_processor):
    model = make_model("xmadapter")
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    with safe_open(weights, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    clip, processor = clip_and_processor

    missing = {k: v for k, v in tensors.items() if k != "method.text_projection.weight"}
    save_file(missing, weights, metadata=metadata)
    with pytest.raises(ValueError, match=r"missing tensors \['method.text_projection.weight'\]"):
        XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=clip, processor=processor)

    save_file({**tensors, "method.surprise": torch.zeros(2)}, weights, metadata=metadata)
    with pytest.raises(ValueError, match=r"unexpected tensors \['method.surprise'\]"):
        XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=clip, processor=processor)


def test_backbone_of_another_projection_dim_is_refused(make_model, tmp_path):
    make_model("tip-adapter").save_pretrained(tmp_path)
    other_clip, other_processor = tiny_clip(projection_dim=16)
    with pytest.raises(ValueError, match="projection dim 32.*projection dim 16"):
        XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=other_clip, processor=other_processor)


def test_not_a_clip_backbone_is_a_type_error():
    with pytest.raises(TypeError, match="dual image-text encoder"):
        XMAdapterForImageClassification.from_clip(torch.nn.Linear(2, 2), ["a", "b"], processor=object())


def test_saved_config_records_the_backbone_and_version(make_model, tmp_path):
    model = make_model("tip-adapter")
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "xmadapter"
    assert saved["class_names"] == CLASS_NAMES and saved["id2label"]["0"] == CLASS_NAMES[0]
    assert saved["projection_dim"] == 32 and saved["xmadapter_version"]
    assert saved["backbone_fingerprint"]["architecture_hash"]
    config = XMAdapterConfig.from_pretrained(tmp_path)
    assert config.num_labels == len(CLASS_NAMES) and config.label2id[CLASS_NAMES[2]] == 2
