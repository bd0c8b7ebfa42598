"""The one implementation of the cache term ``A L`` (`methods/cache.py`) against dense one-hot references, and the
remembered text keys of XMAdapter (every input is part of their fingerprint)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import CLASS_NAMES

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf.methods import cache


def _task(seed: int, classes: int, shots: int | list[int], dim: int = 16, rows: int = 9):
    gen = torch.Generator().manual_seed(seed)
    counts = [shots] * classes if isinstance(shots, int) else shots
    labels = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    queries = F.normalize(torch.randn(rows, dim, generator=gen), dim=-1)
    keys = F.normalize(torch.randn(len(labels), dim, generator=gen), dim=-1)
    return queries, keys, labels


def _dense(queries, keys, labels, classes, sharpness):
    """``exp(-beta (1 - q K^T)) @ one_hot(L)``, the formula as written."""
    return torch.exp(-sharpness * (1 - queries @ keys.t())) @ F.one_hot(labels, classes).float()


@pytest.mark.parametrize("shots", [1, 3, 16])
@pytest.mark.parametrize("chunk", [4, 7, 10_000])
def test_class_sums_by_reshape_equal_the_index_add_and_the_formula(shots, chunk):
    queries, keys, labels = _task(0, classes=6, shots=shots)
    balanced = cache.cache_logits(queries, keys, labels, 6, 5.0, chunk, shots=shots)
    fallback = cache.cache_logits(queries, keys, labels, 6, 5.0, chunk)
    torch.testing.assert_close(balanced, fallback, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(balanced, _dense(queries, keys, labels, 6, 5.0), atol=1e-5, rtol=1e-5)


def test_unequal_shots_and_unsorted_entries_take_the_index_add():
    queries, keys, labels = _task(1, classes=4, shots=[1, 5, 2, 3])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    got = cache.cache_logits(queries, keys[order], labels[order], 4, 3.0, chunk_size=4)
    torch.testing.assert_close(got, _dense(queries, keys, labels, 4, 3.0), atol=1e-5, rtol=1e-5)


def test_gradients_through_both_reductions_agree():
    queries, keys, labels = _task(2, classes=5, shots=4)
    grads = []
    for shots in (4, None):
        learned = keys.clone().requires_grad_()
        cache.cache_logits(queries, learned, labels, 5, 6.0, 8, shots=shots).square().sum().backward()
        grads.append(learned.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_leave_one_out_removes_each_query_s_own_entry():
    queries, keys, labels = _task(3, classes=3, shots=4, rows=5)
    index = torch.tensor([0, 5, -1, 11, 7])
    full = cache.cache_logits(queries, keys, labels, 3, 4.0, 64, shots=4)
    got = cache.remove_own_entries(full, queries, keys, labels, index, 4.0)
    for row, entry in enumerate(index.tolist()):
        mask = torch.ones(len(labels), dtype=torch.bool)
        if entry >= 0:
            mask[entry] = False
        expected = _dense(queries[row : row + 1], keys[mask], labels[mask], 3, 4.0)[0]
        torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)


def test_the_remembered_text_keys_see_a_data_write_to_any_input(make_model, cache_embeds):
    """Issue 12 compared the frozen cache E by version counter only; the fingerprint covers E, W and labels too."""
    model = make_model("xmadapter", sharpness=5.0).eval()
    queries = cache_embeds[0][:4] + 0.1
    with torch.no_grad():
        for name in ("cache_embeds", "class_embeds"):
            model(image_embeds=queries)
            count = model.method.text_key_computations
            model(image_embeds=queries)
            assert model.method.text_key_computations == count, "unchanged inputs: the keys are remembered"
            buffer = model.get_buffer(name)
            buffer.data.copy_(F.normalize(buffer.data + 0.05 * torch.randn_like(buffer), dim=-1))
            after = model(image_embeds=queries).logits
            assert model.method.text_key_computations == count + 1, f"a .data write to {name} must be seen"
            with torch.enable_grad():
                torch.testing.assert_close(after, model(image_embeds=queries).logits.detach(), atol=1e-6, rtol=1e-6)


def test_the_remembered_keys_stay_float32_and_unsaved(clip_and_processor, cache_embeds):
    clip, processor = clip_and_processor
    # a backbone of its own: the bf16 cast must not reach the shared one
    model = XMAdapterForImageClassification.from_clip(
        copy.deepcopy(clip), CLASS_NAMES, processor=processor, method="xmadapter", sharpness=5.0
    )
    model.set_cache(*cache_embeds)
    with torch.no_grad():
        model(image_embeds=cache_embeds[0][:2])
    model.to(torch.bfloat16)
    assert all(buffer.dtype == torch.float32 for buffer in model.method.text_key_memo.buffers())
    assert not any("memo" in key for key in model.state_dict())
    with torch.no_grad():
        assert model(image_embeds=cache_embeds[0][:2].bfloat16()).logits.dtype == torch.float32
