"""GDA (issue 24): its closed form against a transcription of the official `main_few_shots.py` (mrflogs/ICLR24,
commit 560fe21) on the same tensors, the views reaching the method through every cache path, its refusals, and what
`add_classes` and `from_pretrained(class_names=...)` do to its statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.methods import LogitTerm, SearchSpace
from xmadapter_hf.methods.gda import OFFICIAL_ALPHA_GRID, gaussian_discriminant
from xmadapter_hf.testing import tiny_image_dataset
from xmadapter_hf.training.grid_search import AUTO_WEIGHT_STEPS, logit_term_grid, search_space_grid, weight_balance

NEW = ["purple grape", "white cloud", "black night"]


def _official(vecs, labels, clip_weights, val_features, val_labels, test_features, dtype):
    """`run()` of `main_few_shots.py`, lines 41-83, line for line, on the CPU and in ``dtype``: the official code
    casts to float32 with `.float()` (lines 71, 80), which is ``.to(dtype)`` here so that float64 can be compared.

    ``vecs`` and ``labels`` are the lists that lines 45-51 build: one entry per augment epoch, the normalised features
    of every image and their labels. Returns (W, b, best alpha, test logits)."""
    vecs = torch.cat(vecs)
    labels = torch.cat(labels)
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(clip_weights.shape[1])])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(clip_weights.shape[1])])
    cov_inv = center_vecs.shape[1] * torch.linalg.pinv(
        (center_vecs.shape[0] - 1) * center_vecs.T.cov()
        + center_vecs.T.cov().trace() * torch.eye(center_vecs.shape[1], dtype=dtype)
    )
    ps = torch.ones(clip_weights.shape[1], dtype=dtype) * 1.0 / clip_weights.shape[1]
    W = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    best_val_acc = 0
    best_alpha = 0.1
    for alpha in [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]:
        val_logits = 100.0 * val_features.to(dtype) @ clip_weights.to(dtype) + alpha * (val_features.to(dtype) @ W + b)
        acc = float((val_logits.argmax(-1) == val_labels).float().mean())  # utils.cls_acc: top-1
        if acc > best_val_acc:
            best_val_acc = acc
            best_alpha = alpha
    alpha = best_alpha
    test_logits = 100.0 * test_features.to(dtype) @ clip_weights.to(dtype) + alpha * (test_features.to(dtype) @ W + b)
    return W, b, best_alpha, test_logits


def _task(num_classes=5, shots=(4, 4, 4, 4, 4), views=3, dim=16, seed=0, dtype=torch.float64):
    """Raw views (V, M, C) of M support images (``shots[c]`` of class c) around random class centres, labels,
    normalised class weights (N, C), and validation and test queries (normalised) with labels."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=gen, dtype=dtype)
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(shots)])
    images = centres[labels] + 0.6 * torch.randn(len(labels), dim, generator=gen, dtype=dtype)
    support = images + 0.2 * torch.randn(views, len(labels), dim, generator=gen, dtype=dtype)  # augmented views
    weights = F.normalize(centres + torch.randn(num_classes, dim, generator=gen, dtype=dtype), dim=-1)

    def queries(n):
        query_labels = torch.arange(num_classes).repeat(n)
        raw = centres[query_labels] + 0.8 * torch.randn(len(query_labels), dim, generator=gen, dtype=dtype)
        return F.normalize(raw, dim=-1), query_labels

    return support, labels, weights, queries(6), queries(8)


def _epochs(support, labels):
    """What lines 45-51 collect: per augment epoch, the normalised features of every image, and the labels."""
    return [v / v.norm(dim=-1, keepdim=True) for v in support], [labels] * support.shape[0]


@pytest.mark.parametrize("shots", [(4, 4, 4, 4, 4), (1, 3, 2, 5, 1)], ids=["balanced", "unequal"])
@pytest.mark.parametrize("dim", [16, 64], ids=["n>d", "n<d"])
def test_the_closed_form_and_alpha_equal_the_official_computation_in_float64(shots, dim):
    support, labels, weights, (val, val_labels), (test, _) = _task(shots=shots, dim=dim)
    W, b, alpha, test_logits = _official(*_epochs(support, labels), weights.t(), val, val_labels, test, torch.float64)
    ours = gaussian_discriminant(support, labels, len(shots))
    assert ours.weight.dtype == torch.float64 and ours.num_views == support.shape[0] * len(labels)
    torch.testing.assert_close(val @ ours.weight.t() + ours.bias, val @ W + b, rtol=1e-6, atol=0)
    torch.testing.assert_close(ours.weight, W.t(), rtol=1e-6, atol=1e-9)
    # the library's search over the official grid (s = 100: the grid as written) chooses the official alpha
    space = SearchSpace(100.0 * val @ weights.t(), labels, [], logit_terms=[
        LogitTerm(val @ ours.weight.t() + ours.bias, "gaussian_ratio", OFFICIAL_ALPHA_GRID)])  # fmt: skip
    result = search_space_grid(space, val_labels, 100.0, search_grid="paper", starting_weights=[1.0])
    assert result.fields == {"gaussian_ratio": alpha} and result.weight_grids["gaussian_ratio"] == [
        *OFFICIAL_ALPHA_GRID
    ]
    ours_test = 100.0 * test @ weights.t() + alpha * (test @ ours.weight.t() + ours.bias)
    assert torch.equal(ours_test.argmax(-1), test_logits.argmax(-1))


def test_the_model_equals_the_official_logits_in_float32(clip_and_processor):
    """Through the model (statistics estimated in float64, kept in float32) against the official computation in
    float32 on the same float32 tensors, at the official logit scale 100 and the official alpha."""
    clip, processor = clip_and_processor
    dim = clip.config.projection_dim
    support, labels, _, (val, val_labels), (test, _) = _task(num_classes=4, shots=(4, 2, 3, 4), dim=dim)
    support, val, test = support.float(), val.float(), test.float()
    model = XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method="gda", logit_scale=100.0
    )
    model.set_cache(support, labels)
    weights = model.class_embeds
    W, b, alpha, test_logits = _official(*_epochs(support, labels), weights.t(), val, val_labels, test, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model.method.gaussian_logits(test), test @ W + b, rtol=1e-4, atol=0)
    result = model.search_hyperparameters(val, val_labels, search_grid="paper")  # the official grid at s = 100
    assert model.config.gaussian_ratio == alpha and result.weight_grids["gaussian_ratio"] == [*OFFICIAL_ALPHA_GRID]
    assert model.config.search_result["search_grid"] == "paper" and "search_scale" not in model.config.search_result
    with torch.no_grad():
        out = model(image_embeds=test)
    torch.testing.assert_close(out.logits, test_logits, rtol=1e-4, atol=1e-3)
    assert torch.equal(out.logits.argmax(-1), test_logits.argmax(-1))
    parts = model.method.logit_parts(out)
    assert sorted(parts) == ["gaussian", "zero_shot"]
    torch.testing.assert_close(parts["zero_shot"] + parts["gaussian"], out.logits)
    torch.testing.assert_close(parts["gaussian"], alpha * model.method.gaussian_logits(test), rtol=1e-4, atol=1e-3)


def test_every_cache_path_gives_the_method_every_view(clip_and_processor):
    """`build_cache` and `fit` pass the views (the keys stay their mean, bit for bit as before); `set_cache` takes
    (V, NK, C) or (NK, C) (one view)."""
    from xmadapter_hf import fit

    clip, processor = clip_and_processor
    data = tiny_image_dataset(num_classes=4, shots=3, noise=0.8)
    views = extract_embeddings(clip, processor, data, augment_views=2, seed=0, show_progress=False)
    expected = gaussian_discriminant(views.embeds, views.labels, 4, dtype=torch.float64)

    built = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    built.build_cache(data, augment_views=2, seed=0, show_progress=False)
    fitted = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    fitted, _ = fit(fitted, views, None, search=False, show_progress=False)
    tip = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="tip-adapter")
    tip.set_cache(views.embeds.mean(dim=0), views.labels)
    for model in (built, fitted):
        assert torch.equal(model.cache_embeds, tip.cache_embeds), "the keys: the mean of the views, as before"
        assert torch.equal(model.method.gaussian_weight, expected.weight.float())
        assert torch.equal(model.method.gaussian_bias, expected.bias.float())
        assert torch.equal(model.method.precision, expected.precision.float())

    one = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    one.set_cache(views.embeds[0], views.labels)  # (NK, C): one view per image
    single = gaussian_discriminant(views.embeds[:1], views.labels, 4, dtype=torch.float64)
    assert torch.equal(one.method.gaussian_weight, single.weight.float())


def test_degenerate_support_is_refused_before_any_state_changes(clip_and_processor):
    clip, processor = clip_and_processor
    data = tiny_image_dataset(num_classes=4, shots=2, noise=0.8)
    views = extract_embeddings(clip, processor, data, augment_views=2, seed=0, show_progress=False)
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    model.set_cache(views.embeds, views.labels)
    saved = copy.deepcopy(model.state_dict())
    config = copy.deepcopy(model.config.__dict__)
    first = torch.stack([torch.nonzero(views.labels == c)[0, 0] for c in range(4)])  # 1 shot per class
    with pytest.raises(ValueError, match="no spread: every class has a single view"):
        model.set_cache(views.embeds[0, first], views.labels[first])  # 1 shot, no augmented views
    with pytest.raises(ValueError, match="no spread"):
        model.set_cache(views.embeds[:1, first].expand(3, -1, -1), views.labels[first])  # identical views
    with pytest.raises(ValueError, match="support images of every class"):
        gaussian_discriminant(views.embeds, views.labels, 5)  # a class without support images
    with pytest.raises(ValueError, match="at least one cache image"):
        model.set_cache(views.embeds[:, :6], views.labels[:6])  # the model's own check names the classes
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items()) and model.config.__dict__ == config
    one_shot = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    one_shot.set_cache(views.embeds[:, first], views.labels[first])  # 1 shot with 2 views: there is spread
    assert one_shot.method.precision.abs().sum() > 0


def test_add_classes_keeps_the_covariance_and_gives_new_classes_their_means(clip_and_processor):
    """The shared covariance is an estimate from the classes the adapter was built on: `add_classes` keeps it bit for
    bit, the new classes' means come from their support views (1 shot with one view is enough), and the uniform prior
    takes the grown N."""
    clip, processor = clip_and_processor
    base = extract_embeddings(clip, processor, tiny_image_dataset(4, shots=3), augment_views=2, show_progress=False)
    new = extract_embeddings(
        clip, processor, tiny_image_dataset(3, shots=2, seed=5), augment_views=2, show_progress=False
    )
    model = XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method="gda", gaussian_ratio=2.0
    )
    model.set_cache(base.embeds, base.labels)
    precision, weight, bias = (t.clone() for t in (model.method.precision, model.method.gaussian_weight,
                                                   model.method.gaussian_bias))  # fmt: skip
    model.add_classes(NEW, embeds=new.embeds, labels=new.labels)  # (V, M, C): every view
    assert torch.equal(model.method.precision, precision)
    assert torch.equal(model.method.gaussian_weight[:4], weight)
    prior = torch.log(torch.tensor(4 / 7))
    torch.testing.assert_close(model.method.gaussian_bias[:4], bias + prior, rtol=0, atol=1e-3)
    views = F.normalize(new.embeds.double(), dim=-1)
    means = torch.stack([views[:, new.labels == c].reshape(-1, views.shape[-1]).mean(0) for c in range(3)])
    expected_weight = means @ precision.double()
    expected_bias = -torch.log(torch.tensor(7.0, dtype=torch.float64)) - 0.5 * (expected_weight * means).sum(-1)
    torch.testing.assert_close(model.method.gaussian_weight[4:], expected_weight.float(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(model.method.gaussian_bias[4:], expected_bias.float(), rtol=1e-5, atol=1e-3)
    one = torch.stack([torch.nonzero(new.labels == c)[0, 0] for c in range(3)])
    grown = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    grown.set_cache(base.embeds, base.labels)
    grown.add_classes(NEW, embeds=new.embeds[0, one], labels=new.labels[one])  # 1 shot, one view: no spread needed
    assert torch.equal(grown.method.precision, precision) and grown.method.gaussian_weight[4:].abs().sum() > 0


def test_other_classes_forget_the_statistics_and_build_cache_estimates_them_again(clip_and_processor, tmp_path):
    clip, processor = clip_and_processor
    data = tiny_image_dataset(4, shots=3)
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="gda")
    model.build_cache(data, augment_views=2, show_progress=False)
    model.save_pretrained(tmp_path)
    other = XMAdapterForImageClassification.from_pretrained(
        tmp_path, clip_model=clip, processor=processor, class_names=NEW
    )
    assert other.method.gaussian_weight.shape == (3, clip.config.projection_dim)
    assert not other.method.precision.any() and not other.method.gaussian_bias.any()
    support = tiny_image_dataset(3, shots=2, seed=5)
    other.build_cache(support, augment_views=2, show_progress=False)
    fresh = XMAdapterForImageClassification.from_clip(clip, NEW, processor=processor, method="gda")
    fresh.build_cache(support, augment_views=2, show_progress=False)
    for name in ("gaussian_weight", "gaussian_bias", "precision"):
        assert torch.equal(getattr(other.method, name), getattr(fresh.method, name)), name


def test_statistics_keep_their_float32_values_in_a_bf16_model(clip_and_processor, cache_embeds):
    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(  # a backbone of its own: the cast must not reach the shared one
        copy.deepcopy(clip), CLASS_NAMES, processor=processor, method="gda"
    )
    model.set_cache(*cache_embeds)
    before = {k: v.clone() for k, v in model.method.state_dict().items()}
    model.to(torch.bfloat16)
    assert model.class_embeds.dtype == torch.bfloat16
    assert all(torch.equal(v, before[k]) and v.dtype == torch.float32 for k, v in model.method.state_dict().items())


def test_the_official_grid_is_the_paper_grid_on_the_backbone_s_scale(make_model, cache_embeds):
    model = make_model("gda")
    space = model.method.search_space(F.normalize(cache_embeds[0], dim=-1), model.cache_state())
    assert space.terms == [] and [t.weight_field for t in space.logit_terms] == ["gaussian_ratio"]
    scale = model.logit_scale / 100.0
    assert space.logit_terms[0].paper_grid == pytest.approx([a * scale for a in OFFICIAL_ALPHA_GRID])
    assert OFFICIAL_ALPHA_GRID == (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def test_the_automatic_weight_grid_follows_the_balance_and_a_switchable_term_may_be_off():
    """`search_grid="auto"`: the weight on a log grid around the weight at which the term's logits spread across
    classes as the zero-shot logits do; the search picks the first best weight on validation; a term that may be
    switched off tries 0 first, so that a term that only hurts is left out."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(10)
    zero_shot = 5.0 * torch.randn(40, 4, generator=gen)
    helpful = 0.01 * F.one_hot(labels, 4).float() + 0.001 * torch.randn(40, 4, generator=gen)
    space = SearchSpace(zero_shot, labels, [], logit_terms=[LogitTerm(helpful, "gaussian_ratio")])
    reference = float(zero_shot.std(dim=1).mean() / helpful.std(dim=1).mean())
    assert weight_balance(space, space.logit_terms[0]) == pytest.approx(reference)
    grid = logit_term_grid(space, space.logit_terms[0], "auto")
    assert len(grid) == AUTO_WEIGHT_STEPS and grid[0] == pytest.approx(reference / 100) and grid[-1] == pytest.approx(
        reference * 1000)  # fmt: skip
    result = search_space_grid(space, labels, 100.0, search_grid="auto")
    logits = zero_shot[None] + torch.tensor(grid)[:, None, None] * helpful[None]
    correct = (logits.argmax(-1) == labels).sum(-1)
    assert result.fields["gaussian_ratio"] == grid[int((correct == correct.max()).nonzero()[0])]
    assert result.accuracy == float(correct.max()) / 40 == 1.0
    harmful = -helpful  # it ranks the right class last
    space = SearchSpace(zero_shot, labels, [], logit_terms=[LogitTerm(harmful, "w", can_switch_off=True)])
    result = search_space_grid(space, labels, 100.0, search_grid="auto", starting_weights=[3.0])
    assert result.fields == {"w": 0.0} and result.weight_grids["w"][0] == 0.0
    assert result.accuracy == float((zero_shot.argmax(-1) == labels).float().mean())


def test_a_logit_term_beside_a_cache_is_searched_after_it():
    """A space with a cache and a logit term (as XMAdapter could hold one beside its caches): the cache's (beta,
    alpha) are searched with the term at its starting weight, then the term's weight with the cache at its choice."""
    from xmadapter_hf.methods import CacheTerm
    from xmadapter_hf.methods.cache import affinity_, class_sums

    gen = torch.Generator().manual_seed(1)
    labels, cache_labels = torch.arange(3).repeat(8), torch.arange(3).repeat_interleave(2)
    zero_shot, cosines = torch.randn(24, 3, generator=gen), torch.rand(24, 6, generator=gen)
    extra = torch.randn(24, 3, generator=gen) + 2.0 * F.one_hot(labels, 3)
    term = LogitTerm(extra, "gaussian_ratio", paper_grid=(0.1, 1.0, 10.0))
    space = SearchSpace(zero_shot, cache_labels, [CacheTerm(cosines, "sharpness")], logit_terms=[term])
    kwargs = dict(search_grid="paper", search_scale=(5.0, 3.0), search_step=(5, 4))
    result = search_space_grid(space, labels, 100.0, starting_weights=[0.5], **kwargs)
    alone = search_space_grid(SearchSpace(zero_shot + 0.5 * extra, cache_labels, [CacheTerm(cosines, "sharpness")]),
                              labels, 100.0, **kwargs)  # fmt: skip
    assert (result.sharpness, result.residual_ratio) == (alone.sharpness, alone.residual_ratio)
    cache = class_sums(affinity_(1.0 - cosines, alone.sharpness), cache_labels, 3, None)
    base = zero_shot + alone.residual_ratio * cache
    correct = [int(((base + w * extra).argmax(-1) == labels).sum()) for w in (0.1, 1.0, 10.0)]
    assert result.fields["gaussian_ratio"] == (0.1, 1.0, 10.0)[correct.index(max(correct))]
    assert result.accuracy == max(correct) / 24
    assert set(result.fields) == {"residual_ratio", "sharpness", "gaussian_ratio"}
