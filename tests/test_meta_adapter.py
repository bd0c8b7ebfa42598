"""Meta-Adapter (issue 17): its forward against independent restatements of the official module, unequal K masked,
its initialisation and recipe, and its online use: meta-trained on base classes, applied to novel classes from their
support images alone (pushed, then loaded with other classes in a fresh process: `tests/test_hub.py`)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.methods import CacheState
from xmadapter_hf.methods.meta_adapter import MetaAdapter
from xmadapter_hf.testing import tiny_image_dataset
from xmadapter_hf.training import build_optimizer, recipe_values

BASE = ["red apple", "green leaf", "blue sky", "yellow sun"]
NOVEL = ["purple grape", "white cloud", "black night"]


def _method(dim=16, chunk=1024, seed=0):
    from xmadapter_hf import XMAdapterConfig

    config = XMAdapterConfig(method="meta-adapter", class_names=["x"], meta_adapter_class_chunk_size=chunk)
    torch.manual_seed(seed)
    method = MetaAdapter(config, dim)
    with torch.no_grad():  # weights away from the init, so that every term matters
        method.alpha_proj.bias.fill_(0.3)
    return method


def _official(method, text, support):
    """The official `MetaAdapter.forward(query, key, value)` (ArsenalCheng/Meta-Adapter `main.py`, one head), restated
    with the same reshapes, on `query = W` (N, C) and `key = value = F` (N, K, C)."""
    query, key, value = text, support, support
    B, K, C = key.shape
    res = query
    query = query.reshape(B, 1, C)
    key = torch.cat([query, key], dim=1)
    value = torch.cat([query, value], dim=1)
    query = F.linear(query, method.q_proj.weight).reshape(B, 1, C)
    key = F.linear(key, method.k_proj.weight)
    query = query.reshape(B, 1, 1, -1).permute(0, 2, 1, 3)
    key = key.reshape(B, K + 1, 1, -1).permute(0, 2, 1, 3)
    value = value.reshape(B, K + 1, 1, -1).permute(0, 2, 1, 3)
    attn_weight = (query @ key.transpose(-1, -2) / torch.sqrt(torch.tensor(C, dtype=torch.float))).softmax(-1)
    attn = attn_weight @ value
    alpha = torch.sigmoid(F.linear(res, method.alpha_proj.weight, method.alpha_proj.bias).reshape(B, -1, 1, 1))
    attn = (alpha * attn).reshape(B, C)  # the official `.squeeze()`, which would also drop N = 1
    return F.normalize(res + attn, p=2, dim=-1)


def _per_class(method, text, supports):
    """The formula, one class at a time: ``X = [w; F]``, ``a = softmax((W_q w).(W_k X_j) / sqrt(C))``,
    ``w^ = normalise(w + sigmoid(w_g . w + b_g) * sum_j a_j X_j)``."""
    rows = []
    for w, support in zip(text, supports):
        tokens = torch.cat([w[None], support])  # (K_c + 1, C)
        q = method.q_proj.weight @ w
        k = tokens @ method.k_proj.weight.t()
        a = torch.softmax(k @ q / math.sqrt(w.shape[0]), dim=0)
        gate = torch.sigmoid(method.alpha_proj.weight[0] @ w + method.alpha_proj.bias[0])
        rows.append(F.normalize(w + gate * (a @ tokens), dim=0))
    return torch.stack(rows)


def _state(text, keys, labels, shots):
    return CacheState(text, keys, labels, 100.0, shots)


def test_forward_equals_the_official_module_and_the_formula():
    n, k, c = 5, 4, 16
    method = _method(c, chunk=2)  # chunks of 2 classes: the chunking is covered too
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(n, c, generator=g), dim=-1)
    support = F.normalize(torch.randn(n, k, c, generator=g), dim=-1)
    labels = torch.arange(n).repeat_interleave(k)
    with torch.no_grad():
        ours = method.adapted_class_embeds(_state(text, support.reshape(n * k, c), labels, k))
        official = _official(method, text, support)
        loops = _per_class(method, text, list(support))
    torch.testing.assert_close(ours, official, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, loops, atol=1e-5, rtol=0)
    images = F.normalize(torch.randn(7, c, generator=g), dim=-1)
    with torch.no_grad():
        out = method(images, _state(text, support.reshape(n * k, c), labels, k))
    torch.testing.assert_close(out.logits, 100.0 * images @ official.t(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.zero_shot_logits, 100.0 * images @ text.t(), atol=1e-4, rtol=0)
    # the text token is among the keys and values: without it the result differs
    with torch.no_grad():
        without = _per_class(method, text, [s[1:] for s in support])
    assert (without - loops).abs().max() > 1e-3


def test_unequal_shots_equal_per_class_loops_and_compile_without_host_syncs():
    c = 16
    method = _method(c)
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([2, 0, 1, 2, 0, 2, 3, 2, 1])  # unsorted; K = 2, 2, 4, 1
    keys = F.normalize(torch.randn(len(labels), c, generator=g), dim=-1)
    text = F.normalize(torch.randn(4, c, generator=g), dim=-1)
    state = _state(text, keys, labels, None)
    with torch.no_grad():
        ours = method.adapted_class_embeds(state)
        loops = _per_class(method, text, [keys[labels == i] for i in range(4)])
        balanced = method.adapted_class_embeds(_state(text, keys[:8], torch.arange(4).repeat_interleave(2), None))
        reshaped = method.adapted_class_embeds(_state(text, keys[:8], torch.arange(4).repeat_interleave(2), 2))
    torch.testing.assert_close(ours, loops, atol=1e-5, rtol=0)
    torch.testing.assert_close(balanced, reshaped, atol=1e-6, rtol=0)  # the two paths agree
    # the per-entry path has no shape that depends on the labels' values: one graph, no `.item()`
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(method.adapted_class_embeds, fullgraph=True, backend=counter)
    with torch.no_grad():
        torch.testing.assert_close(compiled(state), ours, atol=1e-6, rtol=0)
    ops = {str(node.target) for graph in counter.graphs for node in graph.graph.nodes}
    assert not [op for op in ops if op in ("item", "tolist") or "local_scalar" in op]


def test_initialisation_and_recipe_are_the_official_code_s(clip_and_processor, cache_embeds):
    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(clip, BASE, processor=processor, method="meta-adapter")
    method = model.method
    c = model.embed_dim
    assert torch.all(method.alpha_proj.bias == 1.0), "b_g = 1"
    bound = math.sqrt(6.0 / (c + c))  # Xavier-uniform over a C x C weight
    assert method.q_proj.bias is None and method.k_proj.bias is None
    for weight in (method.q_proj.weight, method.k_proj.weight):
        assert weight.abs().max() <= bound and weight.std() > bound / 3
    assert method.alpha_proj.weight.abs().max() <= math.sqrt(6.0 / (c + 1))
    model.set_cache(*cache_embeds)
    values = recipe_values(model, num_items=11_200)  # ImageNet's 700 base classes x 16 shots
    assert values["learning_rate"] == 1e-4 and values["adam_epsilon"] == 1e-4 and values["weight_decay"] == 0.01
    assert values["num_train_epochs"] == 5 and values["per_device_train_batch_size"] == 64
    assert values["lr_scheduler_type"] == "cosine" and values["warmup_steps"] == 0
    assert recipe_values(model, num_items=100)["per_device_train_batch_size"] == 64  # no minimum of steps
    assert model.search_hyperparameters is not None and method.search_space(None, None) is None  # nothing to search


def test_the_adapted_classifier_is_remembered_and_current_after_every_change(clip_and_processor, cache_embeds):
    """Without autograd `W^` comes from the memo: computed once for any number of calls, and after a change of any
    input the forward's logits are those of a fresh computation, bit for bit."""
    clip, processor = clip_and_processor
    # a backbone of its own: the bf16 cast must not reach the shared one
    model = XMAdapterForImageClassification.from_clip(copy.deepcopy(clip), BASE, processor=processor,
                                                      method="meta-adapter")  # fmt: skip
    raw, labels = cache_embeds
    model.set_cache(raw, labels)
    method, memo = model.method, model.method.classifier_memo
    queries, g = raw[:6] + 0.1, torch.Generator().manual_seed(0)

    def data_write():
        method.q_proj.weight.data.add_(0.2 * torch.randn(method.q_proj.weight.shape, generator=g))

    def optimizer_step():
        model.train()
        optimizer, _ = build_optimizer(model, num_training_steps=1, learning_rate=1e-2)
        model(image_embeds=queries, labels=labels[:6]).loss.backward()
        optimizer.step()
        model.eval()

    def new_cache():  # half the entries: the memo takes the new size
        model.set_cache(raw[::2] + 0.1 * torch.randn(raw[::2].shape, generator=g), labels[::2])

    def add_classes():
        model.add_classes(NOVEL, embeds=raw[:6] + 0.1, labels=torch.tensor([0, 0, 1, 1, 2, 2]))

    model.eval()
    previous = None
    for change in (None, data_write, optimizer_step, new_cache, add_classes, lambda: model.to(torch.bfloat16)):
        if change is not None:
            change()
        inputs = queries.to(model.class_embeds.dtype)
        with torch.no_grad():
            count = memo.computations
            logits = model(image_embeds=inputs).logits
            assert torch.equal(model(image_embeds=inputs).logits, logits)
            assert memo.computations == count + 1, "computed after the change, then remembered"
            assert torch.equal(memo.value, method.adapted_class_embeds(model.cache_state()))
        assert torch.equal(model(image_embeds=inputs).logits.detach(), logits), "under autograd: computed anew"
        assert previous is None or not torch.equal(logits, previous), "each change must change the logits"
        previous = logits
    assert memo.value.dtype == torch.float32 and not any("memo" in key for key in model.state_dict())


def test_a_compiled_forward_reads_the_memo_until_an_input_changes(make_model, cache_embeds):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = make_model("meta-adapter").eval()
    memo = model.method.classifier_memo
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    queries = cache_embeds[0][:5] + 0.05

    def check():
        """The compiled forward equals the eager one, and then reads the memo: negating it negates the logits."""
        eager = model(image_embeds=queries).logits
        logits = compiled(image_embeds=queries).logits
        torch.testing.assert_close(logits, eager, atol=1e-5, rtol=1e-5)
        memo.value.neg_()
        assert torch.equal(compiled(image_embeds=queries).logits, -logits)
        memo.value.neg_()

    with torch.no_grad():
        check()
        model.method.k_proj.weight.data.mul_(1.5)
        check()
        model.add_classes(NOVEL, embeds=cache_embeds[0][:3] + 0.1, labels=torch.tensor([0, 1, 2]))
        check()  # another graph (N changed), which finds the memo resized by `add_classes`
        memo.resize((1, 1), [], 1, 1)  # shapes that fit no graph: computed without the memo
        torch.testing.assert_close(compiled(image_embeds=queries).logits, model(image_embeds=queries).logits)
    ops = {str(node.target) for graph in counter.graphs for node in graph.graph.nodes}
    assert "cond" in ops and counter.frame_count == 3


@pytest.fixture(scope="module")
def base_to_novel(clip_and_processor):
    """A miniature base-to-novel split of seven generated classes: supports, training and test embeddings."""
    clip, processor = clip_and_processor
    support = extract_embeddings(clip, processor, tiny_image_dataset(7, shots=4), augment_views=2,
                                 show_progress=False)  # fmt: skip
    train = extract_embeddings(clip, processor, tiny_image_dataset(7, shots=8, start_index=100), augment_views=0,
                               show_progress=False)  # fmt: skip
    test = extract_embeddings(clip, processor, tiny_image_dataset(7, shots=6, start_index=1000), augment_views=0,
                              show_progress=False)  # fmt: skip
    return support.embeds.mean(0), support.labels, train.embeds[0], train.labels, test.embeds[0], test.labels


def _meta_train(clip_and_processor, data, seed):
    clip, processor = clip_and_processor
    support, support_labels, train, train_labels = data[:4]
    base, train_base = support_labels < 4, train_labels < 4
    model = XMAdapterForImageClassification.from_clip(
        clip, BASE, processor=processor, method="meta-adapter", seed=seed
    )
    model.set_cache(support[base], support_labels[base])
    model.train()
    optimizer, scheduler = build_optimizer(model, num_training_steps=30, learning_rate=1e-2)
    order = torch.Generator().manual_seed(seed)
    for _ in range(30):
        batch = torch.randperm(int(train_base.sum()), generator=order)[:16]
        optimizer.zero_grad()
        model(image_embeds=train[train_base][batch], labels=train_labels[train_base][batch]).loss.backward()
        optimizer.step()
        scheduler.step()
    return model.eval()


def test_meta_trained_on_base_classes_beats_zero_shot_on_novel_classes_online(clip_and_processor, base_to_novel):
    clip, processor = clip_and_processor
    support, support_labels, _, _, test, test_labels = base_to_novel
    novel, test_novel = support_labels >= 4, test_labels >= 4
    accuracies, zero_shot = [], []
    for seed in range(3):
        model = _meta_train(clip_and_processor, base_to_novel, seed)
        model.add_classes(NOVEL, embeds=support[novel], labels=support_labels[novel] - 4)  # no training step
        with torch.no_grad():
            out = model(image_embeds=test[test_novel])
        target = test_labels[test_novel]
        accuracies.append((out.logits.argmax(-1) == target).float().mean().item())
        zero_shot.append((out.zero_shot_logits.argmax(-1) == target).float().mean().item())
    mean, zs = sum(accuracies) / 3, sum(zero_shot) / 3
    print(f"novel classes over all 7, mean of 3 seeds: Meta-Adapter {mean:.3f}, zero-shot {zs:.3f}")
    assert mean > zs, (accuracies, zero_shot)
