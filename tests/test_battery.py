"""The shared battery (PEFT-style parametrised testers) over every registered method."""

from __future__ import annotations

import pytest
import torch
from conftest import CLASS_NAMES
from datasets import Dataset
from transformers import Trainer, TrainingArguments, pipeline

from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification, registered_methods
from xmadapter_hf.methods import get_method_class
from xmadapter_hf.training import build_optimizer

METHODS = registered_methods()
TRAINABLE = [m for m in METHODS if get_method_class(m).trainable]
# a few settings each method reads, so that the battery is not run at values where a term vanishes
SETTINGS = {"sharpness": 6.0, "residual_ratio": 1.5}


def test_every_method_of_the_config_is_registered():
    from xmadapter_hf.methods import METHODS as CONFIG_METHODS

    assert sorted(CONFIG_METHODS) == METHODS
    assert len(METHODS) == 8
    assert sorted(TRAINABLE) == ["clip-adapter", "meta-adapter", "multimodal-adapter", "tip-adapter-f", "xmadapter"]


def _args(tmp_path, batch, accumulation=1, steps=3):
    return TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip


def _dataset(cache_embeds):
    raw, labels = cache_embeds
    noisy = torch.cat([raw, raw + 0.03 * torch.randn(raw.shape, generator=torch.Generator().manual_seed(1))])
    return Dataset.from_dict({"image_embeds": noisy.tolist(), "labels": labels.repeat(2).tolist()}).with_format(
        "torch"
    )


@pytest.mark.parametrize("method", METHODS)
def test_forward_on_pixels_equals_forward_on_embeddings(make_model, test_pixels, method):
    model = make_model(method, **SETTINGS)
    pixels, _ = test_pixels
    on_pixels = model(pixel_values=pixels)
    on_embeds = model(image_embeds=model.embed_images(pixels))
    assert on_pixels.logits.shape == (len(pixels), len(CLASS_NAMES))
    torch.testing.assert_close(on_pixels.logits, on_embeds.logits)
    torch.testing.assert_close(on_pixels.zero_shot_logits, on_embeds.zero_shot_logits)
    assert torch.isfinite(on_pixels.logits).all()


@pytest.mark.parametrize("method", METHODS)
def test_backward_reaches_only_adapter_parameters(make_model, cache_embeds, method):
    model = make_model(method, **SETTINGS)
    model.train()
    raw, labels = cache_embeds
    if method not in TRAINABLE:
        with pytest.raises(ValueError, match="training-free"):
            model(image_embeds=raw, labels=labels)
        assert not [p for p in model.parameters() if p.requires_grad]
        return
    optimizer, _ = build_optimizer(model, num_training_steps=2, learning_rate=0.05)
    for _ in range(2):  # zero-initialised layers (MetaNet's last) pass gradient on from the second step
        optimizer.zero_grad()
        model(image_embeds=raw, labels=labels).loss.backward()
        optimizer.step()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("method.") for n in trainable)
    assert all(p.grad is None for p in model.clip.parameters())
    silent = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"parameters without gradient: {silent}"


@pytest.mark.parametrize("method", METHODS)
def test_exact_save_and_load(make_model, clip_and_processor, cache_embeds, tmp_path, method):
    model = make_model(method, **SETTINGS)
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as if trained
    model.save_pretrained(tmp_path)
    clip, processor = clip_and_processor
    loaded = XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=clip, processor=processor)
    raw = cache_embeds[0]
    assert torch.equal(loaded(image_embeds=raw).logits, model(image_embeds=raw).logits)
    assert loaded.config.method == method


@pytest.mark.parametrize("method", METHODS)
def test_trainer_step(make_model, cache_embeds, tmp_path, method):
    model = make_model(method, **SETTINGS)
    trainer = Trainer(model=model, args=_args(tmp_path, 8, steps=1), train_dataset=_dataset(cache_embeds))
    if method not in TRAINABLE:
        with pytest.raises(ValueError, match="training-free"):
            trainer.train()
        return
    before = {k: v.clone() for k, v in model.method.state_dict().items()}
    trainer.train()
    assert any(not torch.equal(v, before[k]) for k, v in model.method.state_dict().items())


@pytest.mark.parametrize("method", TRAINABLE)
def test_accumulation_equals_one_big_batch(make_model, cache_embeds, tmp_path, method):
    weights = []
    for batch, accumulation in ((8, 1), (4, 2)):
        model = make_model(method, **SETTINGS)
        trainer = Trainer(
            model=model, args=_args(tmp_path / f"{batch}", batch, accumulation), train_dataset=_dataset(cache_embeds),
            optimizers=build_optimizer(model, num_training_steps=3, learning_rate=0.01),
        )  # fmt: skip
        trainer.train()
        weights.append({k: v.clone() for k, v in model.method.state_dict().items()})
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], atol=1e-5, rtol=1e-5, msg=key)


@pytest.mark.parametrize("method", METHODS)
def test_searched_fields_are_the_search_space_s(make_model, cache_embeds, method):
    """`searched_fields(config)` (what `fit(search=False)` and the CLI report as kept) names the fields the search
    space sets."""
    model = make_model(method, **SETTINGS)
    space = model.method.search_space(torch.nn.functional.normalize(cache_embeds[0], dim=-1), model.cache_state())
    declared = model.method.searched_fields(model.config)
    if space is None:
        assert declared == () and not model.method.searches()
        return
    fields = [space.residual_ratio_field] if space.terms else []
    fields += [term.sharpness_field for term in space.terms] + [term.weight_field for term in space.logit_terms]
    assert sorted(declared) == sorted(fields) and model.method.searches()


@pytest.mark.parametrize("method", METHODS)
def test_image_classification_pipeline(make_model, clip_and_processor, test_dataset, method):
    model = make_model(method, **SETTINGS)
    _, processor = clip_and_processor
    classifier = pipeline("image-classification", model=model, image_processor=processor.image_processor)
    predictions = classifier(list(test_dataset["image"])[:3], top_k=2)
    assert len(predictions) == 3
    assert all(p["label"] in CLASS_NAMES for row in predictions for p in row)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "field,value,error",
    [
        ("sharpness", 0.0, ValueError),
        ("sharpness", 101.0, ValueError),
        ("residual_ratio", -1.0, ValueError),
        ("clip_adapter_ratio", 1.5, ValueError),
        ("mma_blend", -0.1, ValueError),
        ("mma_mask", "causal", ValueError),
        ("affinity_ratio_init", 1.0, ValueError),
        ("cache_dtype", "int8", ValueError),
        ("meta_reduction", 0, ValueError),
        ("gaussian_ratio", -1.0, ValueError),
        ("use_text_cache", "yes", TypeError),
    ],
)
def test_bad_config_values(method, field, value, error):
    with pytest.raises(error, match=f"`{field}`"):
        XMAdapterConfig(method=method, class_names=CLASS_NAMES, **{field: value})
