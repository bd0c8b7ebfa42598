"""Scores that mean something (issue 23, item 2): ranking by logits, the fitted temperature, ECE/NLL, the pipeline
class, JSON without NaN.

The maths is checked against straightforward implementations on random tensors: ranking against Python's `sorted`,
ECE against a loop over the 15 bins, the temperature against a brute-force grid of the smoothed NLL. Then the
temperature through `fit` (set, saved, loaded, reset by `set_cache`, kept by `add_classes`, never changing a logit),
`xmadapter predict`'s order and scores on an adapter whose softmax saturates, and transformers' own `pipeline(...)`
with our pipeline class on a saved tiny adapter.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import CLASS_NAMES

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
    rank_by_logits,
)
from xmadapter_hf.testing import save_tiny_clip, tiny_image_dataset


def _order(row: torch.Tensor) -> list[int]:
    """Class indices by decreasing logit, ties by index: Python's `sorted`, the reference of `rank_by_logits`."""
    values = row.tolist()
    return sorted(range(len(values)), key=lambda j: (-values[j], j))


def _random_logits(rows=64, classes=7, scale=300.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator) * scale
    labels = torch.randint(0, classes, (rows,), generator=generator)
    return logits, labels


# ------------------------------------------------------------------------------------------------------ maths
def test_rank_by_logits_is_a_stable_sort_of_the_logits():
    logits = torch.randint(-3, 4, (50, 9)).float()  # many ties
    expected = [_order(row) for row in logits]
    assert rank_by_logits(logits).tolist() == expected
    assert rank_by_logits(logits, 3).tolist() == [row[:3] for row in expected]


def _reference_ece(logits, labels, temperature, bins=15):
    ece = 0.0
    rows = []
    for row, label in zip(logits.double().tolist(), labels.tolist()):
        exps = [math.exp((z - max(row)) / temperature) for z in row]
        top = max(range(len(row)), key=lambda j: (row[j], -j))
        rows.append((exps[top] / sum(exps), float(top == label)))
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = [(c, a) for c, a in rows if low < c <= high]
        if inside:
            ece += (
                len(inside)
                / len(rows)
                * abs(sum(a for _, a in inside) / len(inside) - sum(c for c, _ in inside) / len(inside))
            )
    return ece


@pytest.mark.parametrize("temperature", [None, 0.7, 250.0])
def test_ece_and_nll_match_straightforward_implementations(temperature):
    logits, labels = _random_logits(rows=200, scale=3.0 if temperature != 250.0 else 300.0)
    t = 1.0 if temperature is None else temperature
    assert expected_calibration_error(logits, labels, temperature) == pytest.approx(
        _reference_ece(logits, labels, t), abs=1e-9
    )
    nll = sum(
        -(row[y] / t - (max(row) / t + math.log(sum(math.exp((z - max(row)) / t) for z in row))))
        for row, y in zip(logits.double().tolist(), labels.tolist())
    ) / len(labels)
    assert negative_log_likelihood(logits, labels, temperature) == pytest.approx(nll, rel=1e-9)


def _smoothed_nll(logits, labels, temperatures, prior_strength) -> torch.Tensor:
    """The smoothed NLL at every temperature `(G,)`, written out: targets (1 - eps) one-hot + eps / N."""
    eps = prior_strength / (len(labels) + prior_strength)
    targets = torch.full(logits.shape, eps / logits.shape[1], dtype=torch.float64)
    targets[torch.arange(len(labels)), labels] += 1 - eps
    log_p = torch.log_softmax(logits.double()[None] / temperatures.double()[:, None, None], dim=-1)  # (G, M, N)
    return -(targets * log_p).sum(-1).mean(-1)


@pytest.mark.parametrize("prior_strength", [0.0, 1.0])
def test_fit_temperature_finds_the_minimum_of_a_brute_force_grid(prior_strength):
    logits, labels = _random_logits(rows=80, scale=300.0, seed=1)
    logits[torch.arange(40), labels[:40]] += 400.0  # half the rows right with a margin: a finite optimum
    fitted = fit_temperature(logits, labels, prior_strength=prior_strength)
    grid = torch.logspace(0, 5, 10001, dtype=torch.float64)  # T from 1 to 1e5 in 0.12 % steps
    values = _smoothed_nll(logits, labels, grid, prior_strength)
    best = int(values.argmin())
    assert fitted.at_bound is None and fitted.temperature == pytest.approx(float(grid[best]), rel=2e-3)
    at_fit = _smoothed_nll(logits, labels, torch.tensor([fitted.temperature]), prior_strength)
    assert float(at_fit) <= float(values[best]) + 1e-12
    assert fitted.nll_after == pytest.approx(negative_log_likelihood(logits, labels, fitted.temperature))
    assert fitted.nll_after < fitted.nll_before  # the raw softmax of logits this large is far too sure
    # invariant to the logits' scale: logits times c give T times c
    assert fit_temperature(logits * 7.5, labels, prior_strength=prior_strength).temperature == pytest.approx(
        7.5 * fitted.temperature, rel=1e-6
    )  # to float32's rounding of the scaled logits


def test_a_tiny_perfectly_separated_split_gives_laplaces_confidence_not_100_percent():
    """16 images of 16 classes, all right by a huge margin (1 shot, 1 validation image a class): the plain NLL
    sends T to its lower bound (100 % scores); one uninformative pseudo-observation gives 1 - eps (1 - 1/N)."""
    n = classes = 16
    logits, labels = torch.zeros(n, classes), torch.arange(n)
    logits[labels, labels] = 900.0
    plain = fit_temperature(logits, labels, prior_strength=0.0)
    assert plain.at_bound == "lower"
    assert float(probabilities(logits, plain.temperature).amax(-1).min()) == 1.0
    fitted = fit_temperature(logits, labels)
    eps = 1 / (n + 1)
    top = probabilities(logits, fitted.temperature).amax(-1)
    torch.testing.assert_close(top, torch.full((n,), 1 - eps * (1 - 1 / classes)), rtol=0, atol=1e-6)


def test_bad_input_is_refused_before_anything_changes(make_model):
    logits, labels = _random_logits(rows=4, classes=3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_temperature(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        expected_calibration_error(logits, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="temperature"):
        probabilities(logits, 0.0)
    model = make_model("tip-adapter")
    model.config.temperature = 2.0
    with pytest.raises(ValueError, match="labels"):
        calibrate(model, torch.randn(3, model.embed_dim), torch.tensor([0, 1, 9]))
    assert model.config.temperature == 2.0
    with pytest.raises(ValueError, match="temperature"):
        model.config.temperature = -1.0


# ------------------------------------------------------------------------------------------ through the model
def _fitted(clip_and_processor, few_shot_dataset, validation, **kwargs):
    from xmadapter_hf import fit

    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="tip-adapter",
                                                      **kwargs)  # fmt: skip
    return fit(model, few_shot_dataset, validation, augment_views=0, show_progress=False)


def test_fit_fits_the_temperature_on_validation_and_no_logit_changes(
    clip_and_processor, few_shot_dataset, cache_embeds, tmp_path
):
    validation = tiny_image_dataset(num_classes=len(CLASS_NAMES), shots=6, noise=0.8, start_index=500)
    model, report = _fitted(clip_and_processor, few_shot_dataset, validation)
    embeds = model.embed_images(
        clip_and_processor[1].image_processor(images=list(validation["image"]), return_tensors="pt")["pixel_values"]
    )
    labels = torch.tensor(validation["label"])
    with torch.no_grad():
        logits = model(image_embeds=embeds).logits
    expected = fit_temperature(logits, labels)
    assert model.config.temperature == pytest.approx(expected.temperature, rel=1e-6)
    assert report.temperature == model.config.temperature and report.calibration["num_images"] == 24
    assert "scores' temperature fitted on the validation split" in str(report)
    # the temperature changes no logit (nor the Trainer's loss, which reads them)
    model.config.temperature = None
    with torch.no_grad():
        torch.testing.assert_close(model(image_embeds=embeds).logits, logits, rtol=0, atol=0)
    model.config.temperature = expected.temperature
    # saved and loaded (transformers pops a generation parameter named `temperature` from undeclared kwargs)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["temperature"] == model.config.temperature
    loaded = XMAdapterForImageClassification.from_pretrained(
        tmp_path, clip_model=model.clip, processor=model.processor
    )
    assert loaded.config.temperature == model.config.temperature
    # add_classes keeps it (old logits and their scale unchanged); set_cache resets it (another cache)
    loaded.add_classes(["purple rain"], embeds=cache_embeds[0][:2], labels=torch.tensor([0, 0]))
    assert loaded.config.temperature == model.config.temperature
    embeds, labels = cache_embeds
    loaded.set_cache(torch.cat([embeds, embeds[:2]]), torch.cat([labels, torch.tensor([4, 4])]))
    assert loaded.config.temperature is None


def test_predict_ranks_by_logit_and_scores_with_the_temperature(make_model, test_dataset, tmp_path):
    """An adapter whose softmax saturates (residual ratio 1e4): on main every class after the first had score 0 and
    came in `topk`'s order of the zeros, not in the order of its logits."""
    from xmadapter_hf.cli.predict import predict

    files = []
    for i, image in enumerate(test_dataset["image"]):
        files.append(tmp_path / f"{i}.png")
        image.save(files[-1])
    model = make_model("tip-adapter", residual_ratio=1e4, sharpness=3.0)
    for temperature in (None, 2500.0):
        model.config.temperature = temperature
        entries = predict(model, files, top_k=len(CLASS_NAMES), batch_size=5)
        pixels = model.processor.image_processor(images=list(test_dataset["image"]), return_tensors="pt")
        with torch.no_grad():
            logits = model(pixel_values=pixels["pixel_values"]).logits
        scores = probabilities(logits, temperature)
        for entry, row, score in zip(entries, logits, scores):
            order = _order(row)
            assert [p["label"] for p in entry["predictions"]] == [CLASS_NAMES[j] for j in order]
            assert [p["score"] for p in entry["predictions"]] == pytest.approx([float(score[j]) for j in order])
            assert entry["temperature"] == temperature
    # the case this test is about: a saturated softmax, where some image has two or more classes at score exactly 0
    # that only their logits can order (how many depends on the session's random tiny CLIP, so count, not all rows)
    assert int(((probabilities(logits) == 0).sum(-1) >= 2).sum()) >= 1


def test_transformers_pipeline_with_our_class_on_a_saved_adapter(
    clip_and_processor, few_shot_dataset, test_dataset, tmp_path
):
    from transformers import pipeline

    from xmadapter_hf import PIPELINE_TASK, XMAdapterImageClassificationPipeline

    backbone = save_tiny_clip(tmp_path / "tiny-clip", seed=0)
    model = XMAdapterForImageClassification.from_clip(backbone, CLASS_NAMES, method="tip-adapter")
    model.build_cache(few_shot_dataset, augment_views=0, show_progress=False)
    model.config.residual_ratio, model.config.sharpness = 1e4, 3.0  # a saturated softmax
    images = list(test_dataset["image"])
    pixels = model.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    calibrate(model, model.embed_images(pixels), torch.tensor(test_dataset["label"]))
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    scores = probabilities(logits, model.config.temperature)
    ours = [
        pipeline(PIPELINE_TASK, model=str(tmp_path / "adapter")),
        pipeline("image-classification", model=str(tmp_path / "adapter"),
                 pipeline_class=XMAdapterImageClassificationPipeline),
    ]  # fmt: skip
    stock = pipeline("image-classification", model=str(tmp_path / "adapter"))
    for classifier in ours:
        assert isinstance(classifier, XMAdapterImageClassificationPipeline)
        results = classifier(images, top_k=3)
        for result, row, score in zip(results, logits, scores):
            order = _order(row)[:3]
            assert [r["label"] for r in result] == [CLASS_NAMES[j] for j in order]
            # the pipeline runs one image a forward: logits of ~1e4 differ by float32 rounding from the batched ones
            assert [r["score"] for r in result] == pytest.approx([float(score[j]) for j in order], abs=1e-4)
    for result, row in zip(stock(images, top_k=1), logits):  # the stock pipeline: same top class, raw softmax
        assert result[0]["label"] == CLASS_NAMES[int(row.argmax())]


# ---------------------------------------------------------------------------------------------------- JSON
def test_json_outputs_never_hold_nan(tmp_path):
    from xmadapter_hf.cli.common import write_json
    from xmadapter_hf.jsonsafe import dumps

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))

    payload = {"loss": float("nan"), "rows": [1.0, float("inf"), (-float("inf"), 2)], "name": "x"}
    assert strict(dumps(payload)) == {"loss": None, "rows": [1.0, None, [None, 2]], "name": "x"}
    assert strict(write_json(tmp_path / "report.json", payload).read_text())["loss"] is None


def test_fits_validation_passes_build_no_autograd_graph(clip_and_processor, few_shot_dataset):
    """Every forward `fit` makes in eval mode (the accuracies, best-epoch selection, the final accuracy and the
    temperature: one pass for those two) runs without autograd: logits that are only counted or fitted a temperature
    on need no graph (calibrate's kept the graph of every validation row alive)."""
    from xmadapter_hf import fit

    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="tip-adapter-f")
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append((module.training, torch.is_grad_enabled())))
    validation = tiny_image_dataset(num_classes=len(CLASS_NAMES), shots=6, noise=0.8, start_index=500)
    _, report = fit(model, few_shot_dataset, validation, augment_views=0, epochs=2, show_progress=False)
    evaluations = [grad for training, grad in calls if not training]
    trained = [grad for training, grad in calls if training]
    assert trained and all(trained)  # the training steps record gradients
    # the training-free accuracies, epochs 0-2 of best-epoch selection, one pass for accuracy + temperature
    assert len(evaluations) == 5 and not any(evaluations)
    assert report.temperature is not None and report.temperature == model.config.temperature
