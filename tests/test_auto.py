"""`method="auto"` (training/select.py): one extraction for every candidate, the choice by validation accuracy alone
with its tie rule, the table in the report, the config, the card and on the command line, and a pending model that
refuses everything but `fit`."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES
from PIL import Image

from xmadapter_hf import METHODS, XMAdapterForImageClassification, fit
from xmadapter_hf.data.extraction import ExtractedEmbeddings, extract_embeddings
from xmadapter_hf.methods import AUTO_CANDIDATES
from xmadapter_hf.testing import tiny_image_dataset

#: training-free candidates and one trained (short) one: the selection path of every kind, in a few seconds
CANDIDATES = ["zero-shot", "tip-adapter", "gda", "xmadapter"]
OPTIONS = dict(epochs=1, augment_views=1, seed=0, show_progress=False)


def _pending(clip_and_processor, **overrides):
    clip, processor = clip_and_processor
    return XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method="auto", **overrides
    )


class _ForwardCounter:
    """Counts the vision tower's forwards and the images they carried (a forward hook on `clip.vision_model`)."""

    def __init__(self, clip):
        self.calls = self.images = 0
        self.handle = clip.vision_model.register_forward_hook(self)

    def __call__(self, module, args, kwargs_or_output, output=None):
        self.calls += 1
        self.images += (args[0] if args else kwargs_or_output).shape[0] if args else 0

    def close(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def validation():
    return tiny_image_dataset(num_classes=len(CLASS_NAMES), shots=3, noise=0.8, start_index=1000)


@pytest.fixture(scope="module")
def auto_fit(clip_and_processor, few_shot_dataset, validation):
    """An auto fit on images with the vision tower's forwards counted, and a single-method fit's count beside it."""
    clip, processor = clip_and_processor
    counter = _ForwardCounter(clip)
    model = _pending(clip_and_processor)
    same, (model, report) = model, fit(model, few_shot_dataset, validation, candidates=CANDIDATES, **OPTIONS)
    auto_calls = counter.calls
    counter.calls = 0
    single = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="tip-adapter")
    fit(single, few_shot_dataset, validation, **OPTIONS)
    counter.close()
    return model, report, same, auto_calls, counter.calls


def test_images_go_through_the_backbone_once_for_every_candidate(auto_fit):
    model, report, same, auto_calls, single_calls = auto_fit
    assert single_calls > 0 and auto_calls == single_calls  # 4 candidates, the forwards of one fit
    assert model is same and model.config.method in CANDIDATES and report.method == model.config.method


def test_the_choice_is_the_argmax_of_validation_accuracies_measured_independently(
    auto_fit, clip_and_processor, few_shot_dataset, validation
):
    """Each candidate refitted on its own from the same embeddings, its validation accuracy counted here; the choice
    is the first of the best (the tie rule), and the table holds exactly those accuracies."""
    model, report, *_ = auto_fit
    clip, processor = clip_and_processor
    views = extract_embeddings(clip, processor, few_shot_dataset, augment_views=1, seed=0, show_progress=False)
    val = extract_embeddings(clip, processor, validation, augment_views=0, show_progress=False)
    accuracy = {}
    for name in CANDIDATES:
        alone = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method=name)
        alone, _ = fit(alone, views, val.embeds[0], validation_labels=val.labels, epochs=1, show_progress=False)
        with torch.no_grad():
            predicted = alone(image_embeds=val.embeds[0]).logits.argmax(-1)
        accuracy[name] = int((predicted == val.labels).sum()) / len(val.labels)
    table = {row["method"]: row for row in report.selection}
    assert [row["method"] for row in report.selection] == CANDIDATES
    assert {name: row["validation_accuracy"] for name, row in table.items()} == pytest.approx(accuracy, abs=1e-12)
    best = max(accuracy.values())
    expected = next(name for name in CANDIDATES if accuracy[name] == best)
    assert model.config.method == expected and [row["method"] for row in report.selection if row["chosen"]] == [
        expected
    ]
    assert report.accuracy == pytest.approx(best)
    selection = model.config.method_selection
    assert selection["chosen"] == expected and selection["candidates"] == CANDIDATES
    assert selection["num_validation"] == len(validation) and selection["table"] == report.selection
    text = str(report)
    assert f"method='auto' chose {expected} on the validation split ({len(validation)} images)" in text
    assert "a tie goes to the candidate listed first" in text
    assert all(name in text for name in CANDIDATES)


def test_ties_go_to_the_candidate_listed_first(clip_and_processor, cache_embeds, monkeypatch):
    """The counts of correct validation images replaced by given ones: equal counts pick the first listed."""
    from xmadapter_hf.training import select

    embeds, labels = cache_embeds
    counts = {"zero-shot": 5, "tip-adapter": 7, "gda": 7}
    monkeypatch.setattr(select, "_correct", lambda model, *args: counts[model.config.method])
    views = ExtractedEmbeddings(embeds[None].repeat(2, 1, 1) + 0.01 * torch.randn(2, *embeds.shape), labels)
    for order, expected in ((["zero-shot", "tip-adapter", "gda"], "tip-adapter"), (["gda", "tip-adapter"], "gda")):
        model, report = fit(_pending(clip_and_processor), views, embeds, validation_labels=labels, candidates=order,
                            show_progress=False)  # fmt: skip
        assert model.config.method == expected, order
    counts["zero-shot"] = 8
    model, _ = fit(_pending(clip_and_processor), views, embeds, validation_labels=labels, show_progress=False,
                   candidates=["tip-adapter", "zero-shot"])  # fmt: skip
    assert model.config.method == "zero-shot"  # accuracy first, whatever the order


def test_a_candidate_the_data_does_not_allow_is_skipped_with_its_reason(clip_and_processor, cache_embeds):
    """One shot per class without augmented views: GDA has no covariance to estimate; the others fit."""
    embeds, labels = cache_embeds
    first = torch.tensor([int((labels == c).nonzero()[0]) for c in range(len(CLASS_NAMES))])
    views = ExtractedEmbeddings(embeds[first][None], labels[first])
    model, report = fit(_pending(clip_and_processor), views, embeds, validation_labels=labels,
                        candidates=["gda", "zero-shot", "tip-adapter"], show_progress=False)  # fmt: skip
    gda = report.selection[0]
    assert gda["status"] == "skipped" and "no spread" in gda["reason"] and not gda["chosen"]
    assert model.config.method in ("zero-shot", "tip-adapter") and "gda" in str(report)
    pending = _pending(clip_and_processor)
    with pytest.raises(ValueError, match="no candidate could be fitted.*gda: GDA estimates"):
        fit(pending, views, embeds, validation_labels=labels, candidates=["gda"], show_progress=False)
    assert pending.config.method == "auto" and pending.config.method_selection is None  # left as it was


def test_a_pending_model_refuses_forward_save_load_and_the_trainer(clip_and_processor, tmp_path):
    from transformers import TrainingArguments

    from xmadapter_hf import XMAdapterConfig, XMAdapterTrainer

    model = _pending(clip_and_processor)
    assert model.config.method == "auto" and model.config.hard_sample_strength is None
    with pytest.raises(ValueError, match="has not chosen its method yet, so it cannot classify: call `xmadapter_hf"):
        model(image_embeds=torch.randn(2, model.embed_dim))
    with pytest.raises(ValueError, match="call `xmadapter_hf.fit"):
        model(pixel_values=torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="cannot be saved: call `xmadapter_hf.fit"):
        model.save_pretrained(tmp_path / "pending")
    assert not (tmp_path / "pending").exists()
    with pytest.raises(ValueError, match="cannot be trained .*call `xmadapter_hf.fit"):
        XMAdapterTrainer(model, TrainingArguments(str(tmp_path / "out"), report_to="none", use_cpu=True))
    with pytest.raises(ValueError, match="chooses the method on a validation split"):
        fit(model, torch.randn(1, 4, model.embed_dim), None, show_progress=False)
    # a config saying "auto" written by hand is no adapter to load
    saved = tmp_path / "by-hand"
    XMAdapterConfig(method="auto", class_names=CLASS_NAMES).save_pretrained(saved)
    (saved / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no fitted adapter: its config says method='auto'"):
        XMAdapterForImageClassification.from_pretrained(saved, clip_model=clip_and_processor[0])


def test_candidates_are_checked_before_any_extraction(clip_and_processor, few_shot_dataset, make_model):
    model = _pending(clip_and_processor)
    with pytest.raises(ValueError, match=r"registered methods \(clip-adapter, gda, .*\); unknown: 'tip'"):
        fit(model, few_shot_dataset, few_shot_dataset, candidates=["zero-shot", "tip"])
    with pytest.raises(TypeError, match="list of method names"):
        fit(model, few_shot_dataset, few_shot_dataset, candidates="gda")
    with pytest.raises(ValueError, match="names 'gda' more than once"):
        fit(model, few_shot_dataset, few_shot_dataset, candidates=["gda", "gda"])
    with pytest.raises(ValueError, match="method is 'tip-adapter'. Build it with `from_clip"):
        fit(make_model("tip-adapter"), few_shot_dataset, few_shot_dataset, candidates=["gda"])
    assert set(AUTO_CANDIDATES) == set(METHODS) and len(AUTO_CANDIDATES) == len(METHODS)  # every shipped method


def test_the_saved_adapter_is_the_chosen_method_with_the_same_logits(auto_fit, clip_and_processor, tmp_path):
    from xmadapter_hf.hub import build_model_card

    model, *_ = auto_fit
    clip, processor = clip_and_processor
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["method"] == model.config.method and config["method_selection"]["chosen"] == config["method"]
    loaded = XMAdapterForImageClassification.from_pretrained(
        tmp_path / "adapter", clip_model=clip, processor=processor
    )
    assert loaded.config.method == model.config.method and type(loaded.method) is type(model.method)
    queries = torch.randn(5, model.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image_embeds=queries).logits, model(image_embeds=queries).logits)
    card = str(build_model_card(loaded.config, "me/adapter"))
    assert "## Method selection" in card and "| method chosen by |" in card
    assert f"| {model.config.method} |" in card and "**chosen**" in card


def test_cli_fit_method_auto_prints_the_table(tmp_path, capsys):
    from xmadapter_hf.cli import main

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                tmp_path / "data" / name / f"{i}.png"
            )
    common = ["fit", "--data", str(tmp_path / "data"), "--shots", "2", "--augment-views", "1", "--no-progress"]
    assert main([*common, "--method", "auto", "--candidates", "zero-shot", "tip-adapter", "--output",
                 str(tmp_path / "adapter")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    chosen = config["method"]
    assert chosen in ("zero-shot", "tip-adapter")
    assert f"method='auto' chose {chosen} on the validation split (2 images)" in out
    for name in ("zero-shot", "tip-adapter"):  # a row each: accuracy, NLL, seconds; the chosen one marked *
        assert re.search(rf"^[ *] {name} +[01]\.\d{{4}} +\d+\.\d{{4}} +\d+\.\d$", out, re.M), out
    assert "validation accuracy (" in out and f"* {chosen} " in out
    report = json.loads((tmp_path / "adapter" / "report.json").read_text())
    assert report["method"] == chosen and report["method_selection"]["candidates"] == ["zero-shot", "tip-adapter"]
    assert main([*common, "--method", "gda", "--candidates", "zero-shot", "--output", str(tmp_path / "x")]) == 1
    assert "--candidates chooses among methods with --method auto" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--method", "auto", "--candidates", "tip", "--output", str(tmp_path / "y")])
    assert "invalid choice: 'tip'" in capsys.readouterr().err


def test_the_demo_auto_row_is_the_best_validation_fit_with_ties_in_candidate_order():
    from xmadapter_hf.demo.compare import DemoResult, auto_result

    def result(method, validation, test):
        return DemoResult(seed=0, shots=4, method=method, search="default", test_accuracy=test,
                          zero_shot_accuracy=0.4, validation_accuracy=validation, affinity_ratio=0.5, seconds=1.0,
                          extraction_seconds=0.1)  # fmt: skip

    fits = [result("xmadapter", 0.7, 0.9), result("gda", 0.7, 0.6), result("zero-shot", 0.5, 0.4)]
    row = auto_result(fits)
    assert (row.method, row.chosen, row.test_accuracy, row.seconds) == ("auto", "gda", 0.6, 3.0)  # gda lists first
    assert row.affinity_ratio is None
