"""Issue 15: recipes from the authors' code, early stopping on validation, precedence of dataset defaults."""

from __future__ import annotations

import pytest
import torch
from conftest import CLASS_NAMES

from xmadapter_hf import XMAdapterForImageClassification, fit
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.methods import get_method_class
from xmadapter_hf.testing import tiny_image_dataset
from xmadapter_hf.training import recipe_arguments


def _task(clip_and_processor):
    clip, processor = clip_and_processor
    train = extract_embeddings(clip, processor, tiny_image_dataset(4, shots=4, noise=0.8, seed=2), augment_views=0,
                               show_progress=False)  # fmt: skip
    val = extract_embeddings(clip, processor, tiny_image_dataset(4, shots=4, noise=0.8, seed=2, start_index=500),
                             augment_views=0, show_progress=False)  # fmt: skip
    return train, val.embeds[0], val.labels


def _model(clip_and_processor, method, **overrides):
    clip, processor = clip_and_processor
    return XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method=method, **overrides
    )


def test_the_recipes_are_the_authors():
    mma = get_method_class("multimodal-adapter").recipe
    assert (mma.optimizer, mma.learning_rate, mma.weight_decay, mma.epochs, mma.batch_size) == ("adam", 5e-3, 1e-4,
                                                                                             200, 256)  # fmt: skip
    assert mma.lr_scheduler_type == "constant" and mma.keep_best_epoch
    # the departures (docs/methods.md): plain 16-shot embeddings were memorised and stalled; patience 20 stopped early
    assert mma.augment and mma.early_stopping_patience is None
    clip_adapter = get_method_class("clip-adapter").recipe
    assert (clip_adapter.optimizer, clip_adapter.learning_rate, clip_adapter.momentum, clip_adapter.weight_decay,
            clip_adapter.epochs, clip_adapter.batch_size) == ("sgd", 2e-3, 0.9, 5e-4, 200, 32)  # fmt: skip


def test_clip_adapter_trains_with_sgd_and_momentum(clip_and_processor, tmp_path):
    from xmadapter_hf.training import XMAdapterTrainer

    model = _model(clip_and_processor, "clip-adapter")
    trainer = XMAdapterTrainer(model, recipe_arguments(model, str(tmp_path), num_items=256))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    assert optimizer.param_groups[0]["weight_decay"] == 5e-4


def test_early_stopping_restores_the_best_epoch_which_equals_a_shorter_run(clip_and_processor):
    """With a constant rate, the weights of the best epoch b of a run that stopped early are those of a run of b
    epochs without early stopping (same seed: same order and draws)."""
    train, val_embeds, val_labels = _task(clip_and_processor)
    common = dict(validation_labels=val_labels, seed=1, show_progress=False, learning_rate=0.05)
    model, report = fit(_model(clip_and_processor, "multimodal-adapter"), train, val_embeds, epochs=12,
                        early_stopping_patience=2, **common)  # fmt: skip
    stopped = report.extra["early_stopping"]
    assert stopped["epochs_run"] <= 12 and 1 <= stopped["best_epoch"] <= stopped["epochs_run"]
    assert stopped["epochs_run"] == 12 or stopped["epochs_run"] - stopped["best_epoch"] == 2
    short, _ = fit(_model(clip_and_processor, "multimodal-adapter"), train, val_embeds, epochs=stopped["best_epoch"],
                   early_stopping_patience=0, keep_best_epoch=False, **common)  # fmt: skip
    for key, value in short.method.state_dict().items():
        torch.testing.assert_close(model.method.state_dict()[key], value, msg=key)
    assert report.accuracy == stopped["best_validation_accuracy"]


@pytest.mark.parametrize("method", ["tip-adapter-f", "xmadapter"])
def test_training_never_ends_below_its_start_on_validation(clip_and_processor, method):
    """The shared best-epoch rule (every recipe's `keep_best_epoch`): the start is epoch 0 of the selection, so a run
    that only hurts validation (a destructive learning rate) gives back the training-free model, exactly."""
    train, val_embeds, val_labels = _task(clip_and_processor)
    common = dict(validation_labels=val_labels, seed=0, show_progress=False, epochs=3, learning_rate=50.0)
    model, report = fit(_model(clip_and_processor, method), train, val_embeds, **common)
    selection = report.extra["early_stopping"]
    assert selection["epochs_run"] == 3
    assert selection["best_validation_accuracy"] >= selection["start_validation_accuracy"]
    with pytest.raises(TypeError, match="keep_best_epoch"):
        fit(_model(clip_and_processor, method), train, val_embeds, keep_best_epoch="yes", **common)
    assert selection["best_epoch"] == 0
    assert report.accuracy == report.training_free_accuracy  # the start came back, and the search found it again
    torch.testing.assert_close(model.method.cache_keys.float(), model.cache_embeds.float())
    if method == "tip-adapter-f":  # the last epoch, kept on request, is below the start
        last, last_report = fit(_model(clip_and_processor, method), train, val_embeds, keep_best_epoch=False, **common)
        assert "early_stopping" not in last_report.extra
        assert last_report.accuracy < report.training_free_accuracy  # training hurt


def test_a_diverged_run_is_refused_and_the_model_given_back_as_it_was(clip_and_processor):
    """XMAdapter at learning rate 50 ends with non-finite weights: with the last epoch kept, `fit` refuses the run
    instead of returning (or later saving) a model whose logits are NaN, and the model is as before the call. (The
    paper's form: with the Gaussian term the search may turn the caches off on this task, and nothing diverges.)"""
    train, val_embeds, val_labels = _task(clip_and_processor)
    model = _model(clip_and_processor, "xmadapter", use_gaussian_term=False)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("clip.")}
    with pytest.raises(ValueError, match="Training diverged"):
        fit(model, train, val_embeds, validation_labels=val_labels, seed=0, show_progress=False, epochs=3,
            learning_rate=50.0, keep_best_epoch=False)  # fmt: skip
    after = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, equal_nan=True, msg=key)


def test_the_trainer_path_selects_the_best_epoch_with_validation_and_keeps_the_last_without(
    clip_and_processor, tmp_path
):
    from xmadapter_hf import EmbeddingViewsDataset
    from xmadapter_hf.training import XMAdapterTrainer

    train, val_embeds, val_labels = _task(clip_and_processor)
    model = _model(clip_and_processor, "tip-adapter-f")
    model.set_cache(train.embeds.mean(0), train.labels)
    data = EmbeddingViewsDataset(train.embeds, train.labels, seed=0)
    args = recipe_arguments(model, str(tmp_path), num_train_epochs=2, report_to=[], use_cpu=True, save_strategy="no")
    trainer = XMAdapterTrainer(model, args, train_dataset=data, validation=(val_embeds, val_labels))
    trainer.train()
    assert trainer.early_stopping is not None and trainer.early_stopping.patience is None
    assert len(trainer.early_stopping.history) == 2 and trainer.early_stopping.start_accuracy is not None
    assert XMAdapterTrainer(model, args, train_dataset=data).early_stopping is None  # no validation: the last epoch
    with pytest.raises(ValueError, match="validation"):
        XMAdapterTrainer(model, args, train_dataset=data, keep_best_epoch=True)


def test_explicit_arguments_beat_the_dataset_and_the_dataset_beats_the_recipe(clip_and_processor):
    train, val_embeds, val_labels = _task(clip_and_processor)
    common = dict(validation_labels=val_labels, show_progress=False, dataset_name="eurosat")
    _, report = fit(_model(clip_and_processor, "tip-adapter-f"), train, val_embeds, epochs=1, **common)
    assert report.epochs == 1
    _, report = fit(_model(clip_and_processor, "tip-adapter-f"), train, val_embeds, **common)
    assert report.epochs == 100  # EuroSAT's Tip-Adapter-F epochs, not the recipe's 20
    assert report.search_before is not None
