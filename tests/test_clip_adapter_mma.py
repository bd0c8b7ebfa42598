"""CLIP-Adapter and the Multi-Modal Adapter equal line-by-line references; gradients, chunking, the full model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CLASS_NAMES

from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification
from xmadapter_hf.methods import CacheState, ClipAdapter, MultiModalAdapter
from xmadapter_hf.methods.multimodal import mma_attention_mask, mma_dims

C, N, B, SCALE = 32, 7, 5, 37.5


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _state(seed: int = 0) -> tuple[torch.Tensor, CacheState]:
    """Random normalised image embeddings (B, C) and class embeddings (N, C) in a cache state without a cache."""
    gen = torch.Generator().manual_seed(seed)
    f = _normalise(torch.randn(B, C, generator=gen))
    W = _normalise(torch.randn(N, C, generator=gen))
    state = CacheState(W, torch.zeros(0, C), torch.zeros(0, dtype=torch.long), SCALE)
    return f, state


def _config(method: str, **overrides) -> XMAdapterConfig:
    return XMAdapterConfig(method=method, class_names=[f"class {i}" for i in range(N)], **overrides)


def _randomise(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial values everywhere (biases included), so the references check every term."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


# ------------------------------------------------------------------------------------------------- CLIP-Adapter
def _reference_clip_adapter(f, W, s, A, Bw, r):
    """Gao et al.: f' = r * ReLU(ReLU(f A^T) B^T) + (1 - r) * f; logits = s * normalise(f') W^T."""
    hidden = torch.clamp(f @ A.t(), min=0.0)
    mlp = torch.clamp(hidden @ Bw.t(), min=0.0)
    adapted = r * mlp + (1 - r) * f
    adapted = adapted / adapted.norm(dim=-1, keepdim=True)
    return s * adapted @ W.t()


@pytest.mark.parametrize("ratio", [0.2, 0.6, 1.0])
def test_clip_adapter_equals_reference(ratio):
    f, state = _state()
    method = ClipAdapter(_config("clip-adapter", clip_adapter_ratio=ratio), C)
    _randomise(method)
    out = method(f, state)
    A, Bw = method.adapter[0].weight, method.adapter[2].weight
    assert A.shape == (C // 4, C) and Bw.shape == (C, C // 4)
    assert method.adapter[0].bias is None and method.adapter[2].bias is None
    expected = _reference_clip_adapter(f, state.class_embeds, SCALE, A.detach(), Bw.detach(), ratio)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.zero_shot_logits, SCALE * f @ state.class_embeds.t(), atol=1e-5, rtol=1e-5)
    assert out.cache_logits is None


def test_clip_adapter_reduction_sets_the_bottleneck():
    method = ClipAdapter(_config("clip-adapter", clip_adapter_reduction=8), C)
    assert method.adapter[0].weight.shape == (C // 8, C)


def test_clip_adapter_ratio_zero_is_zero_shot():
    f, state = _state()
    method = ClipAdapter(_config("clip-adapter", clip_adapter_ratio=0.0), C)
    _randomise(method)
    out = method(f, state)
    torch.testing.assert_close(out.logits, out.zero_shot_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, SCALE * f @ state.class_embeds.t(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------- Multi-Modal Adapter
def _reference_mask(n: int, kind: str) -> torch.Tensor:
    """Additive: the authors' 0/1 float matrix. Cross-modal: -inf where a query may not look."""
    mask = torch.zeros(n + 1, n + 1)
    for i in range(n + 1):
        for j in range(n + 1):
            text_image_pair = (i < n and j == n) or (i == n and j < n)
            if kind == "additive":
                mask[i, j] = 1.0 if text_image_pair else 0.0
            else:
                allowed = i == n or j == n or i == j
                mask[i, j] = 0.0 if allowed else -math.inf
    return mask


def _linear(x, layer):
    return x @ layer.weight.t() + layer.bias


def _reference_mma(method: MultiModalAdapter, f, W, s, lam, kind):
    """One image at a time, the attention by hand: q/k/v from in_proj, softmax(QK^T / sqrt(d) + mask) V, out_proj."""
    attn = method.attention
    heads = attn.num_heads
    n = W.shape[0]
    mask = _reference_mask(n, kind)
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    rows = []
    for b in range(f.shape[0]):
        x = torch.cat([W, f[b : b + 1]])  # (N+1, C): text tokens first, image last
        h = _linear(_linear(x, method.downsampler[0]), method.downsampler[1])  # (N+1, A)
        width = h.shape[1]
        d = width // heads
        q = (h @ w_q.t() + b_q).reshape(n + 1, heads, d).transpose(0, 1)  # (H, N+1, d)
        k = (h @ w_k.t() + b_k).reshape(n + 1, heads, d).transpose(0, 1)
        v = (h @ w_v.t() + b_v).reshape(n + 1, heads, d).transpose(0, 1)
        scores = q @ k.transpose(1, 2) / math.sqrt(d) + mask  # (H, N+1, N+1)
        attended = torch.softmax(scores, dim=-1) @ v  # (H, N+1, d)
        attended = attended.transpose(0, 1).reshape(n + 1, width)
        o = _linear(attended, attn.out_proj)
        y = _linear(torch.nn.functional.gelu(_linear(o, method.upsampler[0])), method.upsampler[2])  # (N+1, C)
        y = y / y.norm(dim=-1, keepdim=True)
        blended = lam * y + (1 - lam) * x
        blended = blended / blended.norm(dim=-1, keepdim=True)
        rows.append(s * blended[:n] @ blended[n])  # (N,)
    return torch.stack(rows)


def test_mma_dims_scale_with_the_projection_dim():
    assert mma_dims(512) == (32, 128)  # the authors' sizes for ViT-B/16
    assert mma_dims(768) == (48, 192)
    assert mma_dims(1024) == (64, 256)
    assert mma_dims(32) == (4, 8)  # tiny: at least one dim per head
    bottleneck, width = mma_dims(100)
    assert width % 4 == 0 and bottleneck >= 4


def test_mma_masks():
    additive = mma_attention_mask(2, "additive")
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert additive.dtype == torch.float32 and torch.equal(additive, expected)
    blocked = mma_attention_mask(3, "cross-modal")
    assert blocked.dtype == torch.bool
    expected_blocked = torch.tensor(
        [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool
    )  # True = may not attend: text i sees i and the image; the image sees all
    assert torch.equal(blocked, expected_blocked)
    with pytest.raises(ValueError, match="mma_mask"):
        mma_attention_mask(3, "causal")


@pytest.mark.parametrize("kind", ["additive", "cross-modal"])
@pytest.mark.parametrize("train", [True, False])
def test_mma_equals_reference(kind, train):
    f, state = _state()
    method = MultiModalAdapter(_config("multimodal-adapter", mma_mask=kind, mma_blend=0.3), C)
    _randomise(method)
    method.train(train)
    with torch.set_grad_enabled(train):  # eval + no_grad may take nn.MultiheadAttention's fused fast path
        out = method(f, state)
    with torch.no_grad():
        expected = _reference_mma(method, f, state.class_embeds, SCALE, 0.3, kind)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.zero_shot_logits, SCALE * f @ state.class_embeds.t(), atol=1e-5, rtol=1e-5)
    assert out.cache_logits is None


def test_mma_blend_zero_is_zero_shot():
    f, state = _state()
    method = MultiModalAdapter(_config("multimodal-adapter", mma_blend=0.0), C)
    out = method(f, state)
    torch.testing.assert_close(out.logits, out.zero_shot_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["additive", "cross-modal"])
def test_mma_chunking_changes_nothing(kind):
    f, state = _state()
    whole = MultiModalAdapter(_config("multimodal-adapter", mma_mask=kind, mma_chunk_size=64), C)
    chunked = MultiModalAdapter(_config("multimodal-adapter", mma_mask=kind, mma_chunk_size=2), C)
    _randomise(whole)
    chunked.load_state_dict(whole.state_dict())
    labels = torch.arange(B) % N
    grads = []
    for method in (whole, chunked):
        with torch.no_grad():
            no_grad_logits = method(f, state).logits
        logits = method(f, state).logits  # with autograd: the chunks are checkpointed
        torch.testing.assert_close(logits, no_grad_logits, atol=1e-6, rtol=1e-6)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        grads.append({name: p.grad.clone() for name, p in method.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------------ full model
def _model(clip_and_processor, method: str, **overrides) -> XMAdapterForImageClassification:
    clip, processor = clip_and_processor
    return XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method=method, **overrides
    )


def test_mma_attention_is_initialised_by_the_model(clip_and_processor):
    model = _model(clip_and_processor, "multimodal-adapter")
    attention = model.method.attention
    for p in (attention.in_proj_weight, attention.out_proj.weight):
        assert p.abs().sum() > 0 and torch.isfinite(p).all()
    # The model's _init_weights must (re)initialise the attention, which is no `adapter_linear`.
    with torch.no_grad():
        for p in model.method.parameters():
            p.zero_()
    model._init_weights(model.method)
    assert attention.in_proj_weight.abs().sum() > 0 and attention.out_proj.weight.abs().sum() > 0
    for layer in (*model.method.downsampler, model.method.upsampler[0], model.method.upsampler[2]):
        assert layer.weight.abs().sum() > 0


@pytest.mark.parametrize("method", ["clip-adapter", "multimodal-adapter"])
@pytest.mark.parametrize("chunk", [64, 2])
def test_gradient_reaches_every_adapter_parameter_and_no_backbone_parameter(clip_and_processor, method, chunk):
    model = _model(clip_and_processor, method, mma_chunk_size=chunk).train()
    torch.manual_seed(0)
    raw = torch.randn(B, C)
    out = model(image_embeds=raw, labels=torch.arange(B) % len(CLASS_NAMES))
    out.loss.backward()
    trainable = dict(model.method.named_parameters())
    assert trainable
    for name, p in trainable.items():
        assert p.requires_grad, name
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"
    for name, p in model.clip.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None or not p.grad.any(), f"gradient reached backbone parameter {name}"
    model.zero_grad()


@pytest.mark.parametrize("method", ["clip-adapter", "multimodal-adapter"])
def test_full_model_forward_and_loss(clip_and_processor, method):
    model = _model(clip_and_processor, method)
    torch.manual_seed(1)
    raw = 3.0 * torch.randn(B, C)  # raw embeddings: the model normalises them
    f = _normalise(raw)
    with torch.no_grad():
        out = model(image_embeds=raw)
        expected = model.method(f, model.cache_state()).logits
    assert out.logits.shape == (B, len(CLASS_NAMES)) and out.loss is None and out.cache_logits is None
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.zero_shot_logits, model.logit_scale * f @ model.class_embeds.t(), atol=1e-5, rtol=1e-5
    )
    labels = torch.arange(B) % len(CLASS_NAMES)
    loss = model.train()(image_embeds=raw, labels=labels).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(out.logits, labels), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["clip-adapter", "multimodal-adapter"])
def test_save_and_load_round_trip(tmp_path, clip_and_processor, method):
    model = _model(clip_and_processor, method, mma_mask="cross-modal")
    _randomise(model.method)
    raw = torch.randn(B, C)
    model.save_pretrained(tmp_path)
    loaded = XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=clip_and_processor[0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(image_embeds=raw).logits, model(image_embeds=raw).logits)
