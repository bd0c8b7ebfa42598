"""XMAdapter's Gaussian term (issue 24 item 3; ours, not the paper's: `use_gaussian_term`, docs/methods.md): its
statistics against a straightforward estimate on random tensors, its search (the Gaussian weight first with the caches
off, then the caches with a residual ratio of 0 allowed) against a brute-force one, the paper's formula one setting
away (and for a config saved without the field), save/load, bf16, `add_classes` and the ONNX export."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES

from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification
from xmadapter_hf.methods import CacheTerm, LogitTerm, SearchSpace
from xmadapter_hf.training.grid_search import search_space_grid

NEW = ["purple grape", "white cloud", "black night"]


def _views(num_classes, shots, views, dim, seed=0):
    """Random raw embeddings of ``views`` views of ``shots`` images per class around class centres, (V, M, C)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(shots)
    images = centres[labels] + 0.7 * torch.randn(len(labels), dim, generator=g)
    return images[None] + 0.3 * torch.randn(views, len(labels), dim, generator=g), labels


def _straightforward(views, labels, num_classes):
    """The Gaussian discriminant written plainly in float64: means of the normalised views, the unbiased covariance of
    the class-centred views, ``Sigma^-1 = d pinv((n - 1) cov + tr(cov) I)``, ``W = mu Sigma^-1``,
    ``b = log(1 / N) - diag(mu Sigma^-1 mu^T) / 2``."""
    x = F.normalize(views.double(), dim=-1).reshape(-1, views.shape[-1])  # (V M, C)
    y = labels.repeat(views.shape[0])
    mu = torch.stack([x[y == c].mean(0) for c in range(num_classes)])
    centred = x - mu[y]
    n, d = x.shape
    cov = centred.t() @ centred / (n - 1)
    precision = d * torch.linalg.pinv((n - 1) * cov + torch.trace(cov) * torch.eye(d, dtype=torch.float64))
    weight = mu @ precision
    bias = torch.log(torch.tensor(1.0 / num_classes, dtype=torch.float64)) - 0.5 * (weight * mu).sum(-1)
    return weight, bias, precision


@pytest.fixture
def model_and_support(clip_and_processor):
    clip, processor = clip_and_processor
    dim = clip.config.projection_dim
    views, labels = _views(len(CLASS_NAMES), 4, 3, dim)
    model = XMAdapterForImageClassification.from_clip(
        copy.deepcopy(clip), CLASS_NAMES, processor=processor, method="xmadapter", gaussian_ratio=0.7
    )
    model.set_cache(views, labels)
    return model, views, labels


def test_the_statistics_and_logits_equal_a_straightforward_estimate(model_and_support):
    model, views, labels = model_and_support
    assert model.config.use_gaussian_term  # new models: on
    weight, bias, precision = _straightforward(views, labels, len(CLASS_NAMES))
    torch.testing.assert_close(model.method.precision, precision.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.method.gaussian_weight, weight.float(), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(model.method.gaussian_bias, bias.float(), rtol=1e-4, atol=1e-3)
    queries = torch.randn(6, views.shape[-1])
    with torch.no_grad():
        out = model(image_embeds=queries)
        paper = copy.deepcopy(model)
        paper.config.gaussian_ratio = 0.0
        without = paper(image_embeds=queries).logits
    f = F.normalize(queries.double(), dim=-1)
    expected = without.double() + 0.7 * (f @ weight.t() + bias)
    torch.testing.assert_close(out.logits.double(), expected, rtol=1e-4, atol=1e-3)
    parts = model.method.logit_parts(out)
    assert sorted(parts) == ["gaussian", "image_cache", "text_cache", "zero_shot"]
    torch.testing.assert_close(sum(parts.values()), out.logits, rtol=1e-5, atol=1e-3)


def _brute_force(zero_shot, cosines, labels_cache, gaussian, labels, sharpnesses, ratios, weights):
    """The search written as loops: the weight alone (caches off, first maximum), then (beta, alpha) over
    ``[0] + ratios`` with the Gaussian term at that weight (first maximum, beta outer)."""
    num_classes = zero_shot.shape[1]
    L = F.one_hot(labels_cache, num_classes).float()

    def correct(logits):
        return int((logits.argmax(-1) == labels).sum())

    counts = [correct(zero_shot + w * gaussian) for w in weights]
    weight = weights[counts.index(max(counts))]
    best = (-1, None, None)
    for beta in sharpnesses:
        cache = torch.exp(-beta * (1 - cosines)) @ L
        for alpha in [0.0, *ratios]:
            count = correct(zero_shot + alpha * cache + weight * gaussian)
            if count > best[0]:
                best = (count, beta, alpha)
    return weight, best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_search_picks_the_weight_alone_first_then_the_caches_with_zero_allowed(seed):
    g = torch.Generator().manual_seed(seed)
    m, n, nk = 60, 5, 15
    labels = torch.randint(0, n, (m,), generator=g)
    zero_shot = torch.randn(m, n, generator=g)
    gaussian = torch.randn(m, n, generator=g) + 1.5 * F.one_hot(labels, n) * (torch.rand(m, 1, generator=g) > 0.4)
    cosines = torch.rand(m, nk, generator=g)
    cache_labels = torch.arange(n).repeat_interleave(3)
    grid = (0.1, 1.0, 10.0)
    term = LogitTerm(gaussian, "gaussian_ratio", paper_grid=grid, searched_first=True)
    space = SearchSpace(zero_shot, cache_labels, [CacheTerm(cosines, "sharpness")], shots=3, logit_terms=[term])
    result = search_space_grid(space, labels, 100.0, search_grid="paper", search_scale=(7.0, 3.0), search_step=(4, 3))
    sharpnesses, ratios = result.sharpness_grid, result.residual_ratio_grid
    assert ratios[0] == 0.0  # tried first: a tie keeps the caches off
    weight, (count, beta, alpha) = _brute_force(zero_shot, cosines, cache_labels, gaussian, labels, sharpnesses,
                                                ratios[1:], list(grid))  # fmt: skip
    assert result.fields["gaussian_ratio"] == weight
    assert (result.sharpness, result.residual_ratio) == (beta, alpha)
    assert result.accuracy == count / m
    # the space contains the term alone: the search never ends below it on validation
    alone = int(((zero_shot + weight * gaussian).argmax(-1) == labels).sum())
    assert count >= alone


def test_caches_that_cannot_help_are_switched_off_and_the_model_is_gda(clip_and_processor, model_and_support):
    """Validation labels that the caches cannot improve on (the Gaussian term's own predictions): the search keeps the
    residual ratio at 0 and XMAdapter's logits are GDA's, with GDA's searched weight."""
    model, views, labels = model_and_support
    clip, processor = clip_and_processor
    gda = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    gda.set_cache(views, labels)
    val = torch.randn(40, views.shape[-1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        val_labels = gda.method.gaussian_logits(F.normalize(val, dim=-1)).argmax(-1)
    gda.search_hyperparameters(val, val_labels)
    model.search_hyperparameters(val, val_labels)
    assert model.config.residual_ratio == 0.0 and model.config.gaussian_ratio == gda.config.gaussian_ratio
    with torch.no_grad():
        torch.testing.assert_close(model(image_embeds=val).logits, gda(image_embeds=val).logits)
    assert model.method.searched_fields(model.config)[0] == "gaussian_ratio"


def test_the_paper_formula_is_one_setting_away_and_old_saves_keep_it(clip_and_processor, tmp_path):
    clip, processor = clip_and_processor
    paper = XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method="xmadapter", use_gaussian_term=False
    )
    assert "precision" not in dict(paper.method.named_buffers())
    assert "gaussian_ratio" not in paper.method.searched_fields(paper.config)
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="xmadapter")
    model.config.save_pretrained(tmp_path)
    assert XMAdapterConfig.from_pretrained(tmp_path).use_gaussian_term is True
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["use_gaussian_term"]  # a config written before the field existed: the formula it was saved with
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert XMAdapterConfig.from_pretrained(tmp_path).use_gaussian_term is False


def test_save_load_bf16_and_export_keep_the_term(model_and_support, tmp_path):
    model, views, _ = model_and_support
    model.eval()
    queries = torch.randn(5, views.shape[-1])
    with torch.no_grad():
        expected = model(image_embeds=queries).logits
    model.save_pretrained(tmp_path)
    loaded = XMAdapterForImageClassification.from_pretrained(
        tmp_path, clip_model=model.clip, processor=model.processor
    )
    assert loaded.config.use_gaussian_term
    with torch.no_grad():
        torch.testing.assert_close(loaded(image_embeds=queries).logits, expected)
    import onnxruntime

    from xmadapter_hf.export import export_onnx

    files = export_onnx(model, tmp_path / "onnx", what="head")
    session = onnxruntime.InferenceSession(str(files["head"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {"image_embeds": queries.numpy()})))
    torch.testing.assert_close(torch.from_numpy(got["logits"]), expected, rtol=1e-4, atol=1e-3)
    assert "gaussian_logits" in got
    before = {k: v.clone() for k, v in loaded.method.named_buffers() if k in ("precision", "gaussian_bias")}
    loaded.to(torch.bfloat16)
    for name, value in loaded.method.named_buffers():
        if name in before:
            assert value.dtype == torch.float32 and torch.equal(value, before[name]), name


def test_add_classes_keeps_the_covariance_and_gives_new_classes_their_means(model_and_support):
    model, views, _ = model_and_support
    precision, weight = model.method.precision.clone(), model.method.gaussian_weight.clone()
    new_views, new_labels = _views(3, 2, 3, views.shape[-1], seed=7)
    model.add_classes(NEW, embeds=new_views, labels=new_labels)
    assert torch.equal(model.method.precision, precision)
    assert torch.equal(model.method.gaussian_weight[: len(CLASS_NAMES)], weight)
    x = F.normalize(new_views.double(), dim=-1)
    means = torch.stack([x[:, new_labels == c].reshape(-1, x.shape[-1]).mean(0) for c in range(3)])
    torch.testing.assert_close(
        model.method.gaussian_weight[len(CLASS_NAMES) :], (means @ precision.double()).float(), rtol=1e-4, atol=1e-3
    )
    assert model(image_embeds=torch.randn(2, views.shape[-1])).logits.shape == (2, len(CLASS_NAMES) + 3)


def test_a_support_without_spread_leaves_the_term_at_zero_with_a_warning(make_model, cache_embeds, caplog):
    """One plain view of one image per class: no covariance. The paper's formula still works; the term is zero."""
    raw, labels = cache_embeds
    first = torch.stack([torch.nonzero(labels == c)[0, 0] for c in range(len(CLASS_NAMES))])
    with caplog.at_level(logging.WARNING, logger="xmadapter_hf"):
        model = make_model("xmadapter")
        model.set_cache(raw[first], labels[first])
    assert any("Gaussian term is left out" in r.getMessage() for r in caplog.records)
    assert not model.method.gaussian_weight.any() and not model.method.gaussian_bias.any()
    assert torch.isfinite(model(image_embeds=raw[:3]).logits).all()
