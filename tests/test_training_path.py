"""The one training path (issue 13): `fit` and `XMAdapterTrainer` with `recipe_arguments` train the same weights,
overridden arguments are obeyed, the method's optimiser is built from them, and `fit` is all or nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import CLASS_NAMES
from transformers import get_scheduler

from xmadapter_hf import (
    EmbeddingViewsDataset,
    XMAdapterForImageClassification,
    XMAdapterTrainer,
    fit,
    recipe_arguments,
)
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.data.views import EpochShuffleSampler
from xmadapter_hf.testing import tiny_image_dataset

TRAINABLE = ["tip-adapter-f", "clip-adapter", "multimodal-adapter", "xmadapter"]
SEARCH = dict(search_scale=(50, 50), search_step=(10, 5))


@pytest.fixture(scope="module")
def task(clip_and_processor):
    """Two cached views of a 4-class, 4-shot set, and the plain view of 8 validation images."""
    clip, processor = clip_and_processor
    train = tiny_image_dataset(num_classes=4, shots=4, noise=0.8, seed=2)
    validation = tiny_image_dataset(num_classes=4, shots=2, noise=0.8, seed=2, start_index=500)
    views = extract_embeddings(clip, processor, train, augment_views=2, seed=3, show_progress=False)
    plain = extract_embeddings(clip, processor, validation, augment_views=0, show_progress=False)
    return views, plain.embeds[0], plain.labels


def _build(clip_and_processor, method, **overrides):
    clip, processor = clip_and_processor
    return XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method=method, **overrides
    )


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.method.state_dict().items()}


@pytest.mark.parametrize("keep_best_epoch", [False, None])
@pytest.mark.parametrize("method", TRAINABLE)
def test_the_trainer_path_trains_the_weights_fit_trains(clip_and_processor, task, tmp_path, method, keep_best_epoch):
    """The last epoch (`keep_best_epoch=False`: the weights must have moved) and the default best-epoch selection on
    validation (the start included, so the weights may be the start's) give the same weights on both paths."""
    views, val_embeds, val_labels = task
    fitted, report = fit(
        _build(clip_and_processor, method), views, val_embeds, validation_labels=val_labels, epochs=2, seed=3,
        show_progress=False, keep_best_epoch=keep_best_epoch, **SEARCH,
    )  # fmt: skip
    assert report.steps == 16 and report.batch_size == 2  # 16 images: at least 8 steps an epoch
    # the Trainer path, as docs/training.md shows it
    model = _build(clip_and_processor, method)
    model.set_cache(views.embeds, views.labels)  # every view: the keys are their mean, GDA's term reads them all
    model.config.seed = 3  # what `build_cache(..., seed=3)` records: the training seed of `recipe_arguments`
    if model.method.uses_cache:
        model.search_hyperparameters(val_embeds, val_labels, **SEARCH)
    args = recipe_arguments(model, str(tmp_path), num_train_epochs=2, use_cpu=True, disable_tqdm=True)
    trainer = XMAdapterTrainer(
        model, args, train_dataset=EmbeddingViewsDataset(views.embeds, views.labels, seed=3),
        validation=(val_embeds, val_labels), keep_best_epoch=keep_best_epoch,  # the recipe's selection, as fit's
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == report.steps
    assert (trainer.early_stopping is None) == (keep_best_epoch is False)
    expected, got = _weights(fitted), _weights(model)
    moved = False
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5, msg=key)
        moved |= not torch.equal(got[key], _weights(_build(clip_and_processor, method))[key])
    if keep_best_epoch is False:
        assert moved, "training must move the weights for the comparison to mean anything"


def test_overridden_arguments_are_obeyed(clip_and_processor, task, tmp_path):
    """learning_rate, weight_decay, lr_scheduler_type, max_grad_norm and accumulation, against a plain loop."""
    views, _, _ = task
    overrides = dict(learning_rate=0.05, weight_decay=0.1, lr_scheduler_type="linear", max_grad_norm=0.05,
                     gradient_accumulation_steps=2, per_device_train_batch_size=4, num_train_epochs=2)  # fmt: skip

    def build():
        model = _build(clip_and_processor, "xmadapter", sharpness=8.0, hard_sample_strength=1.0, seed=1)
        model.set_cache(views.embeds.mean(0), views.labels)
        return model

    model = build()
    args = recipe_arguments(model, str(tmp_path), use_cpu=True, disable_tqdm=True, **overrides)
    data = EmbeddingViewsDataset(views.embeds, views.labels, seed=1)
    trainer = XMAdapterTrainer(model, args, train_dataset=data)
    trainer.train()
    optimizer = trainer.optimizer.optimizer  # inside accelerate's wrapper
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1] and type(optimizer) is torch.optim.AdamW
    assert groups[1]["initial_lr"] == pytest.approx(10 * groups[0]["initial_lr"]) == pytest.approx(0.5)

    reference = build()  # the same steps by hand: AdamW, linear decay, clipping, two micro-batches per step
    groups = reference.method.parameter_groups(0.05, 0.1)
    optimizer = torch.optim.AdamW(groups, lr=0.05, betas=(0.9, 0.999), eps=1e-4)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=4)
    trainable = [p for group in groups for p in group["params"]]
    sampler = EpochShuffleSampler(len(data), seed=1)
    reference.train()
    for epoch in range(2):
        embeds, order = data.embeddings_for_epoch(epoch), sampler.order(epoch)
        for step in range(2):
            for micro in range(2):
                index = order[8 * step + 4 * micro : 8 * step + 4 * micro + 4]
                reference(image_embeds=embeds[index], labels=views.labels[index], cache_index=index,
                          num_items_in_batch=torch.tensor(8)).loss.backward()  # fmt: skip
            torch.nn.utils.clip_grad_norm_(trainable, 0.05)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    for key, value in _weights(reference).items():
        torch.testing.assert_close(_weights(model)[key], value, atol=1e-5, rtol=1e-5, msg=key)


def test_the_recipe_s_optimiser_and_its_overrides(clip_and_processor, task, tmp_path):
    views, _, _ = task
    model = _build(clip_and_processor, "multimodal-adapter")
    model.set_cache(views.embeds.mean(0), views.labels)
    args = recipe_arguments(model, str(tmp_path), use_cpu=True)
    assert (args.learning_rate, args.weight_decay, args.num_train_epochs, args.adam_epsilon) == (5e-3, 1e-4, 200, 1e-8)
    optimizer = XMAdapterTrainer(model, args).create_optimizer()
    assert type(optimizer) is torch.optim.Adam and not optimizer.defaults["decoupled_weight_decay"]  # the authors'
    for changes, kind in (({"optim_args": None}, torch.optim.AdamW), ({"optim": "sgd"}, torch.optim.SGD)):
        optimizer = XMAdapterTrainer(model, recipe_arguments(model, str(tmp_path), use_cpu=True, **changes))
        assert type(optimizer.create_optimizer()) is kind


def test_fit_that_raises_leaves_the_model_as_it_was(clip_and_processor, task, cache_embeds, monkeypatch):
    views, val_embeds, val_labels = task
    model = _build(clip_and_processor, "xmadapter", sharpness=5.0)
    model.set_cache(*cache_embeds)
    with torch.no_grad():
        model.method.cache_keys.add_(0.01)
    model.train()
    before = {key: value.clone() for key, value in model.adapter_state_dict().items()}
    config = model.config.to_dict()
    calls = {"n": 0}
    forward = model.forward

    def failing(*args, **kwargs):
        if kwargs.get("labels") is not None:  # a training step
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("the machine went away")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", failing)
    with pytest.raises(RuntimeError, match="went away"):
        fit(model, views, val_embeds, validation_labels=val_labels, epochs=2, show_progress=False, **SEARCH)
    assert calls["n"] == 3, "the failure came in the middle of training"
    after = model.adapter_state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, changed
    assert model.config.to_dict() == config and model.training and not model.clip.training
    with torch.no_grad():
        model.eval()(image_embeds=cache_embeds[0])  # and it still works


def test_a_whole_epoch_is_drawn_at_once_as_each_item_would_be(task):
    views, _, _ = task
    data = EmbeddingViewsDataset(views.embeds, views.labels, seed=5)
    data.set_epoch(3)
    table = data.embeddings_for_epoch()
    subset = torch.tensor([7, 2, 11])
    torch.testing.assert_close(data.embeddings_for_epoch(3, subset), table[subset], atol=0, rtol=0)
    batch = data.__getitems__([7, 2, 11])
    assert all(torch.equal(item["image_embeds"], table[i]) for item, i in zip(batch, subset.tolist()))
    assert all(torch.equal(data[i]["image_embeds"], table[i]) for i in subset.tolist())
    assert [item["cache_index"].item() for item in batch] == [7, 2, 11]
