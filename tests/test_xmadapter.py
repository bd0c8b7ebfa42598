"""Core II: XMAdapter and Tip-Adapter-F equal docs/methods.md line by line; the reductions; the weighted loss."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES

from xmadapter_hf import XMAdapterConfig
from xmadapter_hf.training import build_optimizer


def _randomise_adapter(model, seed=0, scale=0.2):
    """Non-zero weights everywhere (MetaNet's last layer starts at zero; the test must not hide behind it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.method.named_parameters():
            if name == "cache_keys":
                p.add_(scale * 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def _mlp(x, first, second):
    """Linear -> ReLU -> Linear with explicit weights."""
    hidden = torch.relu(x @ first.weight.t() + first.bias)
    return hidden @ second.weight.t() + (second.bias if second.bias is not None else 0)


def _norm(x):
    return x / x.norm(dim=-1, keepdim=True)


def reference_xmadapter(model, raw, labels, cache_index=None, params=None):
    """docs/methods.md (XMAdapter) line by line, dense one-hot L, no chunking; ``params`` overrides module weights."""
    c = model.config
    m = model.method
    p = params or dict(m.named_parameters())
    f = _norm(raw)
    W, E = model.class_embeds, model.cache_embeds.float()
    y_cache = model.cache_labels
    L = F.one_hot(y_cache, len(CLASS_NAMES)).float()  # (NK, N)
    s = model.clip.logit_scale.exp().item()
    zs = s * f @ W.t()
    keys = p["cache_keys"]
    if c.normalize_keys:
        keys = _norm(keys)
    A_img = torch.exp(-c.sharpness * (1 - f @ keys.t()))
    # ours (use_gaussian_term): + alpha_g (f W_g^T + b), the statistics as estimated (tests/test_gaussian_term.py)
    gaussian = c.gaussian_ratio * (f @ m.gaussian_weight.t() + m.gaussian_bias) if c.use_gaussian_term else 0.0
    if not c.use_text_cache:
        logits = zs + c.residual_ratio * A_img @ L + gaussian
        return logits, F.cross_entropy(logits, labels), None

    def lin(prefix, x, relu_between=True):
        return _mlp(x, _Lin(p, prefix + ".0"), _Lin(p, prefix + ".2"))

    t = _norm(W[y_cache] + lin("meta_net", E))
    T = _norm(t @ p["text_projection.weight"].t())
    if c.text_query == "residual":  # g = normalise(P_t f + Img2TxtNet(f))
        g = _norm(f @ p["text_projection.weight"].t() + lin("img2txt", f))
    else:  # 0.1.0: g = normalise(Img2TxtNet(f))
        g = _norm(lin("img2txt", f))
    A_txt = torch.exp(-c.text_sharpness * (1 - g @ T.t()))
    gamma_logit = p["affinity_ratio_logit"] + (
        f @ p["affinity_gate.weight"].t() + p["affinity_gate.bias"] if c.dynamic_affinity_ratio else 0
    )
    gamma = torch.sigmoid(gamma_logit).reshape(-1, 1) if c.dynamic_affinity_ratio else torch.sigmoid(gamma_logit)
    A = gamma * A_img + (1 - gamma) * A_txt
    logits = zs + c.residual_ratio * A @ L + gaussian

    with torch.no_grad():
        A_img_d, A_txt_d = A_img.clone(), A_txt.clone()
        if cache_index is not None:
            for i, ci in enumerate(cache_index.tolist()):
                if ci >= 0:
                    A_img_d[i, ci] = 0.0
                    A_txt_d[i, ci] = 0.0
        p_img = torch.softmax(A_img_d @ L / c.hard_sample_temperature, dim=-1)
        p_txt = torch.softmax(A_txt_d @ L / c.hard_sample_temperature, dim=-1)
        d = (p_img[torch.arange(len(labels)), labels] - p_txt[torch.arange(len(labels)), labels]).abs()
        w = 1 + c.hard_sample_strength * d
    ce = F.cross_entropy(logits, labels, reduction="none")
    loss = (w * ce).sum() / len(labels)
    return logits, loss, d


class _Lin:
    def __init__(self, params, prefix):
        self.weight = params[prefix + ".weight"]
        self.bias = params.get(prefix + ".bias")


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("with_cache_index", [False, True])
def test_xmadapter_equals_the_formula_with_its_gradients(make_model, cache_embeds, dynamic, with_cache_index):
    model = make_model(
        "xmadapter", dynamic_affinity_ratio=dynamic, hard_sample_strength=2.0, hard_sample_temperature=0.5,
        sharpness=6.0, text_sharpness=4.0, residual_ratio=1.7,
    )  # fmt: skip
    _randomise_adapter(model)
    model.train()
    raw, labels = cache_embeds[0][:8] + 0.05 * torch.randn(8, 32), cache_embeds[1][:8]
    cache_index = torch.tensor([0, 1, 2, 3, -1, 5, 6, 7]) if with_cache_index else None

    out = model(image_embeds=raw, labels=labels, cache_index=cache_index)
    out.loss.backward()
    params = {n: p.detach().clone().requires_grad_() for n, p in model.method.named_parameters()}
    logits, loss, d = reference_xmadapter(model, raw, labels, cache_index, params)
    loss.backward()

    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.disagreement, d, atol=1e-5, rtol=1e-5)
    assert (d > 0).all(), "the disagreement must be exercised for the test to mean anything"
    for name, p in model.method.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    # per-modality readout: logits = zero-shot + alpha * (gamma * image + (1 - gamma) * text)
    gamma = out.affinity_ratio[:, None]
    fused = gamma * out.image_cache_logits + (1 - gamma) * out.text_cache_logits
    gaussian = model.config.gaussian_ratio * out.gaussian_logits  # ours: use_gaussian_term (on by default)
    torch.testing.assert_close(out.logits, out.zero_shot_logits + 1.7 * fused + gaussian, atol=1e-4, rtol=1e-5)
    assert sum(model.method.logit_parts(out).values()).sub(out.logits).abs().max() < 1e-3


def test_leave_one_out_changes_the_disagreement(make_model, cache_embeds):
    model = make_model("xmadapter", hard_sample_strength=1.0, sharpness=8.0)
    _randomise_adapter(model)
    raw, labels = cache_embeds[0][:6], cache_embeds[1][:6]
    plain = model(image_embeds=raw, labels=labels).disagreement
    loo = model(image_embeds=raw, labels=labels, cache_index=torch.arange(6)).disagreement
    assert not torch.allclose(plain, loo)


def test_normalize_keys_option(make_model, cache_embeds):
    model = make_model("tip-adapter-f", normalize_keys=True, sharpness=3.0)
    with torch.no_grad():
        model.method.cache_keys.mul_(3.0)  # drifted keys: renormalised in forward
    reference = make_model("tip-adapter", sharpness=3.0)
    raw = cache_embeds[0][:5]
    torch.testing.assert_close(model(image_embeds=raw).logits, reference(image_embeds=raw).logits)
    out = model(image_embeds=raw)
    assert out.image_cache_logits.max() <= 4 * (1 + 1e-5)  # each affinity <= 1, 4 entries per class


def test_reductions_text_cache_off_equals_tip_adapter_f(make_model, cache_embeds):
    # the paper's formula (no Gaussian term: ours, use_gaussian_term) without its text cache and hard-sample weighting
    xm = make_model("xmadapter", use_text_cache=False, use_gaussian_term=False, hard_sample_strength=0.0,
                    sharpness=5.0, residual_ratio=2.0)  # fmt: skip
    tip_f = make_model("tip-adapter-f", sharpness=5.0, residual_ratio=2.0)
    tip = make_model("tip-adapter", sharpness=5.0, residual_ratio=2.0)
    raw, labels = cache_embeds[0][:8] + 0.05, cache_embeds[1][:8]
    # untrained: XMAdapter without its text cache is Tip-Adapter
    assert torch.equal(xm(image_embeds=raw).logits, tip(image_embeds=raw).logits)
    # nothing of the text side is built
    assert {n for n, _ in xm.method.named_parameters()} == {"cache_keys"}
    _randomise_adapter(xm, seed=1)
    tip_f.method.cache_keys.data.copy_(xm.method.cache_keys.data)
    xm.train(), tip_f.train()
    a, b = xm(image_embeds=raw, labels=labels), tip_f(image_embeds=raw, labels=labels)
    a.loss.backward(), b.loss.backward()
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert torch.equal(xm.method.cache_keys.grad, tip_f.method.cache_keys.grad)


def test_text_cache_off_with_hard_samples_is_a_config_error():
    with pytest.raises(ValueError, match="needs XMAdapter's text cache"):
        XMAdapterConfig(class_names=["a", "b"], use_text_cache=False, hard_sample_strength=1.0)


_COMBINATIONS = [
    (text, dynamic, strength)
    for text, dynamic, strength in itertools.product([True, False], [False, True], [0.0, 1.0])
    if text or strength == 0.0
]


@pytest.mark.parametrize("text,dynamic,strength", _COMBINATIONS)
def test_every_trainable_parameter_gets_a_gradient(make_model, cache_embeds, text, dynamic, strength):
    # meta_reduction 4: the tiny C = 32 with the default r = 16 leaves MetaNet 2 hidden ReLUs, which can both be dead
    # on every cache entry; at C = 512 (r = 16) it has 32.
    model = make_model(
        "xmadapter", use_text_cache=text, dynamic_affinity_ratio=dynamic, hard_sample_strength=strength,
        sharpness=5.0, meta_reduction=4,
    )  # fmt: skip
    model.train()
    raw, labels = cache_embeds[0][:8], cache_embeds[1][:8]
    optimizer, _ = build_optimizer(model, num_training_steps=10, learning_rate=0.05)
    for step in range(2):
        optimizer.zero_grad()
        model(image_embeds=raw, labels=labels).loss.backward()
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert all(not n.startswith("clip.") for n in trainable)
        assert all(p.grad is not None for p in trainable.values()), "every parameter is in the graph (DDP)"
        if step == 1:
            # MetaNet's last layer starts at zero, so its first layer's gradient is exactly zero until one step has
            # moved it; from the second step on every parameter must get a non-zero gradient.
            zero = [n for n, p in trainable.items() if not p.grad.abs().sum() > 0]
            assert not zero, f"zero gradients: {zero}"
        optimizer.step()
    assert all(p.grad is None for p in model.clip.parameters())


def test_text_keys_are_computed_once_at_inference(make_model, cache_embeds):
    model = make_model("xmadapter")
    raw = cache_embeds[0][:4]
    with torch.no_grad():
        first = model(image_embeds=raw).logits
        count = model.method.text_key_computations
        for _ in range(3):
            model(image_embeds=raw)
        assert model.method.text_key_computations == count
        model.method.meta_net[2].weight.add_(0.5)  # the weights change: the keys must be rebuilt
        changed = model(image_embeds=raw).logits
    assert model.method.text_key_computations == count + 1
    assert not torch.equal(first, changed)


def test_affinity_ratio_logit_has_a_larger_learning_rate(make_model):
    model = make_model("xmadapter")
    optimizer, _ = build_optimizer(model, num_training_steps=5, learning_rate=1e-3)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rates[id(model.method.affinity_ratio_logit)] == pytest.approx(1e-2)
    assert rates[id(model.method.cache_keys)] == pytest.approx(1e-3)


def test_training_free_methods_cannot_train(make_model, cache_embeds):
    model = make_model("tip-adapter")
    model.train()
    with pytest.raises(ValueError, match="training-free"):
        model(image_embeds=cache_embeds[0][:2], labels=cache_embeds[1][:2])
    with pytest.raises(ValueError, match="training-free"):
        build_optimizer(model, num_training_steps=1)


@pytest.mark.parametrize("method", ["tip-adapter-f", "xmadapter", "clip-adapter"])
def test_focal_criterion_weights_each_item_by_its_difficulty(make_model, cache_embeds, method):
    model = make_model(
        method, hard_sample_criterion="focal", hard_sample_strength=1.5, hard_sample_focal_power=2.0, sharpness=5.0
    )
    model.train()
    raw, labels = cache_embeds[0][:8] + 0.05, cache_embeds[1][:8]
    out = model(image_embeds=raw, labels=labels, num_items_in_batch=torch.tensor(10))
    p = torch.softmax(out.logits.detach(), dim=-1)[torch.arange(8), labels]
    weights = 1 + 1.5 * (1 - p) ** 2
    expected = (weights * F.cross_entropy(out.logits, labels, reduction="none")).sum() / 10
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("text_query", ["residual", "independent"])
def test_both_text_queries_equal_their_formula(make_model, cache_embeds, text_query):
    model = make_model("xmadapter", text_query=text_query, sharpness=6.0, text_sharpness=4.0, residual_ratio=1.7)
    with torch.no_grad():  # the query side trains: give Img2TxtNet's zero layer values, so that both terms count
        for parameter in model.method.img2txt.parameters():
            parameter.normal_(0.0, 0.3)
    raw, labels = cache_embeds[0][:5] + 0.1, cache_embeds[1][:5]
    out = model(image_embeds=raw)
    logits, _, _ = reference_xmadapter(model, raw, labels)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)


def test_the_residual_query_starts_as_the_key_projection(make_model, cache_embeds):
    """At step 0, g = normalise(P_t f): the text cache compares the query and the keys through the same map."""
    model = make_model("xmadapter")
    assert model.config.text_query == "residual"
    f = F.normalize(cache_embeds[0][:4].float(), dim=-1)
    expected = F.normalize(f @ model.method.text_projection.weight.t(), dim=-1)
    torch.testing.assert_close(model.method.query_text_embeds(f), expected)
    assert torch.count_nonzero(model.method.img2txt[2].weight) == 0


def test_text_query_survives_a_save_and_a_save_without_it_means_0_1_0(make_model, tmp_path):
    from xmadapter_hf import XMAdapterConfig

    model = make_model("xmadapter")
    model.config.save_pretrained(tmp_path)
    assert XMAdapterConfig.from_pretrained(tmp_path).text_query == "residual"
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["text_query"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert XMAdapterConfig.from_pretrained(tmp_path).text_query == "independent"
    assert XMAdapterConfig(method="xmadapter", class_names=["a", "b"]).text_query == "residual"
