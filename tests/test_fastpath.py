"""The embedding fast path: on-disk extraction cache (reuse, resume), embeddings == pixels, half-precision caches,
epoch-dependent view draws under a real Trainer, and `fit` end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES
from transformers import Trainer, TrainingArguments

from xmadapter_hf import EmbeddingViewsDataset, ViewEpochCallback, XMAdapterForImageClassification, fit
from xmadapter_hf.data.augment import draw_seed
from xmadapter_hf.data.extraction import extract_embeddings, extraction_cache_key
from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
from xmadapter_hf.training import build_optimizer


class _Interrupted(RuntimeError):
    pass


def _count_forwards(monkeypatch, clip, fail_after: int | None = None) -> dict:
    """Wraps `clip.get_image_features` to count its calls (and raise after ``fail_after`` of them)."""
    calls = {"n": 0}
    original = clip.get_image_features

    def wrapped(*args, **kwargs):
        if fail_after is not None and calls["n"] >= fail_after:
            raise _Interrupted("simulated interruption")
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(clip, "get_image_features", wrapped)
    return calls


# ------------------------------------------------------------------------------------------ extraction cache
def test_second_extraction_reads_the_disk_cache_without_a_backbone_forward(
    clip_and_processor, few_shot_dataset, tmp_path, monkeypatch
):
    clip, processor = clip_and_processor
    kwargs = dict(augment_views=2, seed=3, batch_size=5, show_progress=False, cache_dir=tmp_path)
    calls = _count_forwards(monkeypatch, clip)
    first = extract_embeddings(clip, processor, few_shot_dataset, **kwargs)
    assert calls["n"] > 0
    calls["n"] = 0
    again = extract_embeddings(clip, processor, few_shot_dataset, **{**kwargs, "batch_size": 7})
    assert calls["n"] == 0, "a finished extraction must be read back, not recomputed"
    assert torch.equal(first.embeds, again.embeds) and torch.equal(first.labels, again.labels)
    assert again.cache_path == first.cache_path
    assert (first.images_embedded, again.images_embedded) == (16, 0)
    subset = extract_embeddings(clip, processor, few_shot_dataset, **{**kwargs, "indices": [7, 2, 7]})
    assert calls["n"] == 0, "items are stored one by one: any subset is read back"
    assert torch.equal(subset.embeds, first.embeds[:, [7, 2, 7]]) and subset.labels.tolist() == [1, 0, 1]
    plain = extract_embeddings(
        clip, processor, few_shot_dataset, augment_views=2, seed=3, batch_size=5, show_progress=False
    )
    assert torch.equal(first.embeds, plain.embeds)  # the store changes nothing but the cost (the same batches)
    # anything the embeddings depend on changes the key, so that nothing stale is read back
    other_clip, _ = tiny_clip(seed=1)
    key = extraction_cache_key(clip, processor, few_shot_dataset, augment_views=2, seed=3)[0]
    for changed in (
        extraction_cache_key(other_clip, processor, few_shot_dataset, augment_views=2, seed=3)[0],
        extraction_cache_key(clip, processor, few_shot_dataset, augment_views=3, seed=3)[0],
        extraction_cache_key(clip, processor, few_shot_dataset, augment_views=2, seed=4)[0],
        extraction_cache_key(clip, processor, few_shot_dataset.select(range(8)), augment_views=2, seed=3)[0],
        extraction_cache_key(clip, tiny_clip(image_size=28)[1], few_shot_dataset, augment_views=2, seed=3)[0],
    ):
        assert changed != key


def test_interrupted_extraction_resumes_after_the_last_complete_shard(
    clip_and_processor, few_shot_dataset, tmp_path, monkeypatch
):
    clip, processor = clip_and_processor
    # 16 items, shards of 4, batches of 4, 2 views: each shard costs 2 backbone forwards
    kwargs = dict(augment_views=2, seed=0, batch_size=4, shard_size=4, show_progress=False, cache_dir=tmp_path)
    _count_forwards(monkeypatch, clip, fail_after=3)  # dies inside the second shard
    with pytest.raises(_Interrupted):
        extract_embeddings(clip, processor, few_shot_dataset, **kwargs)
    monkeypatch.undo()
    (directory,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert [p.name[:15] for p in directory.glob("shard-*")] == ["shard-000000000"]
    assert not list(directory.glob(".*.tmp")), "no temporary file may be left behind"
    assert not list((directory / "claims").iterdir()), "an interrupted call hands its claims back"
    calls = _count_forwards(monkeypatch, clip)
    resumed = extract_embeddings(clip, processor, few_shot_dataset, **kwargs)
    assert calls["n"] == 3 * 2, "only the three missing shards are extracted"
    monkeypatch.undo()
    clean = extract_embeddings(clip, processor, few_shot_dataset, augment_views=2, seed=0, show_progress=False)
    torch.testing.assert_close(resumed.embeds, clean.embeds)
    assert torch.equal(resumed.labels, clean.labels)


def test_cache_dir_refuses_data_it_cannot_identify(clip_and_processor, few_shot_dataset, tmp_path):
    clip, processor = clip_and_processor
    pairs = [(few_shot_dataset[i]["image"], few_shot_dataset[i]["label"]) for i in range(4)]  # a plain list
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        extract_embeddings(clip, processor, pairs, augment_views=1, cache_dir=tmp_path, show_progress=False)
    assert not any(tmp_path.iterdir()), "nothing is written before the inputs are validated"
    out = extract_embeddings(
        clip, processor, pairs, augment_views=1, cache_dir=tmp_path, dataset_fingerprint="four-pairs-v1",
        show_progress=False,
    )  # fmt: skip
    assert out.embeds.shape == (1, 4, 32)
    with pytest.raises(ValueError, match="shard_size"):
        extract_embeddings(clip, processor, pairs, shard_size=0, cache_dir=tmp_path, show_progress=False)


# --------------------------------------------------------------------------------------- embeddings == pixels
@pytest.mark.parametrize("method", ["tip-adapter-f", "xmadapter"])
def test_pixel_path_and_embedding_path_give_equal_logits(
    make_model, clip_and_processor, test_dataset, test_pixels, method
):
    clip, processor = clip_and_processor
    model = make_model(method, sharpness=8.0)
    pixels, _ = test_pixels
    embeds = extract_embeddings(clip, processor, test_dataset, augment_views=0, show_progress=False).embeds[0]
    with torch.no_grad():
        from_pixels = model(pixel_values=pixels).logits
        from_embeds = model(image_embeds=embeds).logits
    torch.testing.assert_close(from_pixels, from_embeds, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- half precision
def _clustered_model(method: str, num_classes: int = 100, shots: int = 16, seed: int = 0, **overrides):
    """A model over the tiny CLIP (C = 32) with a synthetic clustered cache of ``num_classes * shots`` entries."""
    clip, processor = tiny_clip(seed=0)
    names = [f"class {i}" for i in range(num_classes)]
    model = XMAdapterForImageClassification.from_clip(
        clip, names, processor=processor, method=method, sharpness=5.0, residual_ratio=1.0, **overrides
    )
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, 32, generator=gen), dim=-1)
    labels = torch.arange(num_classes).repeat_interleave(shots)
    model.set_cache(centres[labels] + 0.3 * torch.randn(len(labels), 32, generator=gen), labels)
    queries = centres[torch.randint(0, num_classes, (4096,), generator=gen)] + 0.3 * torch.randn(
        4096, 32, generator=gen
    )
    return model, queries


@pytest.mark.parametrize("method", ["tip-adapter", "tip-adapter-f", "xmadapter"])
def test_half_precision_cache_keeps_top1_and_logits(method):
    full, queries = _clustered_model(method)
    half, _ = _clustered_model(method)
    half.half_cache()
    assert half.cache_embeds.dtype == torch.float16 and half.config.cache_dtype == "float16"
    if method != "tip-adapter":
        assert half.method.cache_keys.dtype == torch.float16 and not half.method.cache_keys.requires_grad
        assert (
            half.method.cache_keys.untyped_storage().nbytes() * 2 == full.method.cache_keys.untyped_storage().nbytes()
        )
    with torch.no_grad():
        expected, got = full(image_embeds=queries).logits, half(image_embeds=queries).logits
    assert got.dtype == torch.float32  # the maths stays float32
    agreement = (expected.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert agreement >= 0.999, f"top-1 agreement {agreement:.4f}"
    worst = ((expected - got).abs().max() / expected.abs().max()).item()
    assert worst <= 0.01, f"largest logit change {worst:.4%} of the largest magnitude"


def test_half_learned_keys_round_trip_and_refuse_training(tmp_path):
    model, queries = _clustered_model("xmadapter", num_classes=8, shots=4)
    model.half_cache("bfloat16")
    model.save_pretrained(tmp_path)
    loaded = XMAdapterForImageClassification.from_pretrained(
        tmp_path, clip_model=model.clip, processor=model.processor
    )
    assert loaded.method.cache_keys.dtype == torch.bfloat16 and loaded.cache_embeds.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(loaded(image_embeds=queries).logits, model(image_embeds=queries).logits)
    model.train()
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="float_cache"):
        model(image_embeds=queries[:4], labels=labels)
    model.float_cache()
    assert model.method.cache_keys.dtype == torch.float32 and model.method.cache_keys.requires_grad
    model(image_embeds=queries[:4], labels=labels).loss.backward()
    assert model.method.cache_keys.grad is not None
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        model.half_cache("float32")


@pytest.mark.parametrize("method", ["tip-adapter-f", "xmadapter"])
def test_chunked_cache_maths_equals_one_chunk(method):
    """Chunking (affinities, text keys, set_cache's normalisation) changes memory, not results."""
    whole, queries = _clustered_model(method, num_classes=20, shots=5)
    chunked, _ = _clustered_model(method, num_classes=20, shots=5, cache_chunk_size=7)
    torch.testing.assert_close(chunked.cache_embeds, whole.cache_embeds)
    with torch.no_grad():
        torch.testing.assert_close(chunked(image_embeds=queries).logits, whole(image_embeds=queries).logits)


# ------------------------------------------------------------------------------------- views under Trainer
def _views(cache_embeds, num_views=4):
    raw, labels = cache_embeds
    gen = torch.Generator().manual_seed(0)
    return torch.stack([raw + 0.05 * torch.randn(raw.shape, generator=gen) for _ in range(num_views)]), labels


def _trainer_batches(make_model, data, tmp_path, callback: bool) -> list[torch.Tensor]:
    """Runs a real Trainer for 2 epochs (batch 4) on ``data``; returns the `image_embeds` of every step."""
    model = make_model("tip-adapter-f", sharpness=5.0)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["image_embeds"]), with_kwargs=True)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2, report_to=[], use_cpu=True,
        save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=data, optimizers=build_optimizer(model, num_training_steps=8),
        callbacks=[ViewEpochCallback(data)] if callback else None,
    )  # fmt: skip
    trainer.train()
    return seen


def _trainer_draws(make_model, views, labels, tmp_path, callback: bool) -> list[dict[int, int]]:
    """Runs a real Trainer for 2 epochs; returns, per epoch, the view each item was seen with."""
    data = EmbeddingViewsDataset(views, labels, seed=7, view_sampling="view")
    seen = _trainer_batches(make_model, data, tmp_path, callback)
    flat = views.reshape(-1, views.shape[-1])  # (V * M, C): row v * M + i is view v of item i
    draws = [{}, {}]
    for step, batch in enumerate(seen):
        for row in batch:
            match = (flat == row).all(dim=1).nonzero().flatten().tolist()
            assert len(match) == 1, "each batch row must be exactly one cached view"
            view, item = divmod(match[0], views.shape[1])
            epoch = step // 4  # 16 items, batch 4
            assert item not in draws[epoch], "one view per item and epoch"
            draws[epoch][item] = view
    return draws


def test_trainer_draws_one_view_per_item_and_epoch_reproducibly(make_model, cache_embeds, tmp_path):
    views, labels = _views(cache_embeds)
    expected = EmbeddingViewsDataset(views, labels, seed=7, view_sampling="view")
    plain = _trainer_draws(make_model, views, labels, tmp_path / "a", callback=False)
    with_callback = _trainer_draws(make_model, views, labels, tmp_path / "b", callback=True)
    for epoch in (0, 1):
        want = {i: expected.view_of(i, epoch) for i in range(len(expected))}
        assert plain[epoch] == want, f"epoch {epoch}: the Trainer must reach `set_epoch` (accelerate's set_epoch)"
        assert with_callback[epoch] == want
    assert plain[0] != plain[1], "two epochs must draw different views"
    assert EmbeddingViewsDataset(views, labels, seed=8, view_sampling="view").views_for_epoch(0).tolist() != [
        plain[0][i] for i in range(16)
    ]


def test_embedding_views_dataset_validates_its_inputs(cache_embeds):
    views, labels = _views(cache_embeds)
    with pytest.raises(ValueError, match=r"\(V, M, C\)"):
        EmbeddingViewsDataset(views[0], labels)
    with pytest.raises(ValueError, match="labels"):
        EmbeddingViewsDataset(views, labels[:3])
    with pytest.raises(TypeError, match="cache_index"):
        EmbeddingViewsDataset(views, labels, cache_index="yes")
    data = EmbeddingViewsDataset(views, labels, cache_index=False)
    assert set(data[0]) == {"image_embeds", "labels"}
    with pytest.raises(ValueError, match="epoch"):
        data.set_epoch(-1)


def _reference_normals(seed: int, epoch: int, index: int, count: int) -> torch.Tensor:
    """The draw of `data/views.py`, restated with Python integers: splitmix64 of the item's index keyed by
    draw_seed(seed, epoch), then of each word's slot, and Box-Muller on the two 32-bit halves of each word (two
    normal numbers a word: r cos t, r sin t)."""
    mask = 2**64 - 1

    def mix(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    base = mix(index ^ draw_seed(seed, epoch))
    normals = []
    for slot in range((count + 1) // 2):
        word = mix((base + slot) & mask)
        radius = math.sqrt(-2 * math.log(((word >> 32) + 0.5) / 2**32))
        angle = 2 * math.pi * ((word & 0xFFFFFFFF) + 0.5) / 2**32
        normals += [radius * math.cos(angle), radius * math.sin(angle)]
    return torch.tensor(normals[:count])


def test_gaussian_view_sampling_draws_from_the_views_mean_and_covariance(cache_embeds):
    """Each draw is mean_i + sum_v g_v (view_v,i - mean_i) / sqrt(V - 1), g ~ N(0, I) from (seed, epoch, index)."""
    views, labels = _views(cache_embeds, num_views=5)  # (V, M, C)
    data = EmbeddingViewsDataset(views, labels, seed=3, view_sampling="gaussian")
    mean = views.mean(dim=0)
    for epoch, index in [(0, 0), (2, 5), (7, 15)]:
        data.set_epoch(epoch)
        g = _reference_normals(3, epoch, index, 5)
        expected = mean[index] + sum(g[v] * (views[v, index] - mean[index]) for v in range(5)) / 2.0  # sqrt(5 - 1)
        torch.testing.assert_close(data[index]["image_embeds"], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(data.embeddings_for_epoch(epoch)[index], data[index]["image_embeds"])
    assert not torch.equal(data.embeddings_for_epoch(0), data.embeddings_for_epoch(1)), "epochs draw anew"
    again = EmbeddingViewsDataset(views, labels, seed=3, view_sampling="gaussian")
    torch.testing.assert_close(again.embeddings_for_epoch(4), data.embeddings_for_epoch(4), rtol=0, atol=0)
    # over many epochs the draws of one image have its views' mean and (unbiased) covariance
    item = 2
    draws = torch.stack([data.embedding_of(item, epoch) for epoch in range(4000)])  # (4000, C)
    centred = views[:, item] - mean[item]  # (V, C)
    covariance = centred.T @ centred / 4  # (C, C)
    scale = covariance.diagonal().mean().sqrt()
    assert (draws.mean(dim=0) - mean[item]).abs().max() < 0.1 * scale
    assert (torch.cov(draws.T) - covariance).abs().max() < 0.15 * covariance.abs().max()
    # one view: the draw is that view; "view" sampling returns cached views unchanged
    single = EmbeddingViewsDataset(views[:1], labels, view_sampling="gaussian")
    assert torch.equal(single.embeddings_for_epoch(3), views[0])
    plain = EmbeddingViewsDataset(views, labels, seed=3, view_sampling="view")
    assert EmbeddingViewsDataset(views, labels).view_sampling == "gaussian"  # the default, as fit's
    rows = plain.embeddings_for_epoch(1)
    assert torch.equal(rows, views[plain.views_for_epoch(1), torch.arange(len(plain))])
    with pytest.raises(ValueError, match="view_sampling"):
        EmbeddingViewsDataset(views, labels, view_sampling="mixup")


def test_trainer_sees_the_gaussian_draws_of_each_epoch(make_model, cache_embeds, tmp_path):
    views, labels = _views(cache_embeds)
    data = EmbeddingViewsDataset(views, labels, seed=7, view_sampling="gaussian")
    seen = _trainer_batches(make_model, data, tmp_path, callback=True)
    for epoch in (0, 1):
        got = torch.cat(seen[4 * epoch : 4 * epoch + 4])  # 16 items, batch 4: 4 steps per epoch
        want = data.embeddings_for_epoch(epoch)
        # every item exactly once, as its epoch's draw (the rows come in the Trainer's shuffled order)
        matches = torch.cdist(got, want) < 1e-6  # (16, 16)
        assert matches.sum(dim=1).eq(1).all() and matches.sum(dim=0).eq(1).all(), f"epoch {epoch}"
        assert not (torch.cdist(got, views.reshape(-1, views.shape[-1])) < 1e-6).any(), "draws are not cached views"


# ------------------------------------------------------------------------------------------------------- fit
def test_fit_end_to_end_on_the_tiny_clip(tmp_path, monkeypatch):
    clip, processor = tiny_clip(seed=0)
    names = [f"class {i}" for i in range(10)]
    task = dict(num_classes=10, noise=0.85, seed=5)
    train = tiny_image_dataset(shots=8, **task)
    validation = tiny_image_dataset(shots=4, start_index=1000, **task)
    settings = dict(
        epochs=5, augment_views=4, seed=1, search_scale=(50, 50), search_step=(50, 20), cache_dir=tmp_path,
        show_progress=False,
    )  # fmt: skip

    def build():
        return XMAdapterForImageClassification.from_clip(clip, names, processor=processor, method="xmadapter")

    with pytest.raises(ValueError, match="epochs"):
        fit(build(), train, validation, **{**settings, "epochs": 0})
    with pytest.raises(ValueError, match="view_sampling"):
        fit(build(), train, validation, **{**settings, "view_sampling": "mixup"})
    model, report = fit(build(), train, validation, **settings)
    assert report.view_sampling == "gaussian"
    assert not model.training and model.config.cache_size == 80 and model.config.augment_views == 4
    assert (report.epochs, report.batch_size, report.steps) == (5, 10, 40)  # 80 images: >= 8 steps per epoch
    assert report.num_train == 80 and report.num_validation == 40
    assert report.search_before is not None and report.search_after is not None
    assert model.config.search_result["split"] == "validation"
    assert model.config.sharpness == report.search_after["sharpness"]
    assert report.training_free_accuracy >= 2 * 0.1, "the task must be learnable for the test to mean anything"
    assert report.accuracy == pytest.approx(report.search_after["accuracy"])
    # a second fit with the same settings: no backbone forward (extraction cache) and bit-identical training
    calls = _count_forwards(monkeypatch, clip)
    again, report_again = fit(build(), train, validation, **settings)
    assert calls["n"] == 0
    assert torch.equal(again.method.cache_keys, model.method.cache_keys)
    assert report_again.accuracy == report.accuracy
    assert len(CLASS_NAMES) == 4  # the shared fixtures stay untouched; this test builds its own 10-class task
