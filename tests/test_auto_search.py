"""The default (`"auto"`) validation search: against a straightforward nested-loop implementation of its definition,
and against a dense reference grid on the tiny random CLIP and on the demo CLIP (issue 15, done-when 3)."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from test_search import POSITIONAL, random_task

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf import functional as Fn
from xmadapter_hf.training.search import (
    AUTO_COARSE_STEPS,
    AUTO_FINE_STEPS,
    search_hyperparameters,
    search_space_grid,
)


def _log(low, high, steps):
    return [low * (high / low) ** (i / (steps - 1)) for i in range(steps)]


def reference_auto(zs, image_cos, cache_labels, labels, num_classes, text_cos=None, gamma=None, text_start=1.0):
    """The auto search written out: dense one-hot L, plain loops, `acc > best` (first strict maximum)."""
    one_hot = F.one_hot(cache_labels, num_classes).double()
    zs, image_cos = zs.double(), image_cos.double()

    def fused(beta, beta_txt, rows=slice(None)):
        affinity = torch.exp(-beta * (1 - image_cos[rows]))
        if text_cos is not None:
            g = gamma if not torch.is_tensor(gamma) or gamma.numel() == 1 else gamma[rows]
            affinity = g * affinity + (1 - g) * torch.exp(-beta_txt * (1 - text_cos[rows].double()))
        return affinity @ one_hot

    def accuracy(beta, alpha, beta_txt):
        return ((zs + alpha * fused(beta, beta_txt)).argmax(1) == labels).sum().item()

    betas = _log(0.1, 100.0, AUTO_COARSE_STEPS[0])
    factors = _log(1e-2, 1e2, AUTO_COARSE_STEPS[1])
    rows = slice(0, 512)
    target = zs[rows].std(dim=1).mean().item()
    best = (-1, None, None)
    for beta in betas:
        reference = target / fused(beta, text_start, rows).std(dim=1).mean().item()
        for factor in factors:
            acc = accuracy(beta, reference * factor, text_start)
            if acc > best[0]:
                best = (acc, beta, reference * factor)
    beta_step, ratio_step = betas[1] / betas[0], factors[1] / factors[0]
    fine_betas = [b for b in _log(best[1] / beta_step, best[1] * beta_step, AUTO_FINE_STEPS) if b <= 100.0]
    fine_ratios = _log(best[2] / ratio_step, best[2] * ratio_step, AUTO_FINE_STEPS)
    for beta in fine_betas:
        for alpha in fine_ratios:
            acc = accuracy(beta, alpha, text_start)
            if acc > best[0]:
                best = (acc, beta, alpha)
    if text_cos is None:
        return best[1], best[2], None, best[0] / len(labels)
    text_best = (-1, None)
    for beta_txt in betas:
        acc = accuracy(best[1], best[2], beta_txt)
        if acc > text_best[0]:
            text_best = (acc, beta_txt)
    for beta_txt in [b for b in _log(text_best[1] / beta_step, text_best[1] * beta_step, AUTO_FINE_STEPS) if b <= 100]:
        acc = accuracy(best[1], best[2], beta_txt)
        if acc > text_best[0]:
            text_best = (acc, beta_txt)
    return best[1], best[2], text_best[1], text_best[0] / len(labels)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_auto_search_matches_its_definition(seed, chunk_size) -> None:
    task = random_task(seed)
    result = search_hyperparameters(*[task[k] for k in POSITIONAL], 100.0, search_grid="auto", chunk_size=chunk_size)
    beta, alpha, _, acc = reference_auto(*[task[k] for k in POSITIONAL])
    assert result.accuracy == acc
    assert math.isclose(result.sharpness, beta, rel_tol=1e-9)
    assert math.isclose(result.residual_ratio, alpha, rel_tol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_auto_search_with_a_text_cache_matches_its_definition(seed) -> None:
    task = random_task(seed)
    gamma = task["gamma_rows"]
    result = search_hyperparameters(
        *[task[k] for k in POSITIONAL], 100.0, text_cos=task["text_cos"], affinity_ratio=gamma, search_grid="auto"
    )
    beta, alpha, beta_txt, acc = reference_auto(
        *[task[k] for k in POSITIONAL], text_cos=task["text_cos"], gamma=gamma.double()
    )
    assert result.accuracy == acc
    assert math.isclose(result.sharpness, beta, rel_tol=1e-9)
    assert math.isclose(result.residual_ratio, alpha, rel_tol=1e-4)
    assert math.isclose(result.text_sharpness, beta_txt, rel_tol=1e-9)


def test_the_default_grid_is_auto_unless_a_scale_or_step_is_given() -> None:
    task = random_task(0)
    args = [task[k] for k in POSITIONAL]
    assert (
        search_hyperparameters(*args, 100.0).sharpness_grid
        == search_hyperparameters(*args, 100.0, search_grid="auto").sharpness_grid
    )
    assert len(search_hyperparameters(*args, 100.0, search_step=(12, 6)).sharpness_grid) == 12
    with pytest.raises(ValueError, match="search_grid"):
        search_hyperparameters(*args, 100.0, search_grid="dense")


def dense_reference_accuracy(space, labels, logit_scale: float) -> float:
    """Issue 15's dense grid: sharpness log 0.1-100 x 60, residual ratio log 0.01-100 times s/100 x 40 (text
    sharpness, if any, at its starting value 1)."""
    ratios = [r * logit_scale / 100 for r in _log(0.01, 100.0, 40)]
    best = 0
    with torch.no_grad():
        zs = space.zero_shot_logits.double()
        for beta in _log(0.1, 100.0, 60):
            affinity = sum(
                (1.0 if term.weight is None else term.weight.double())
                * torch.exp(-(beta if i == 0 else 1.0) * (1 - term.cosines.double()))
                for i, term in enumerate(space.terms)
            )
            cache = affinity @ F.one_hot(space.cache_labels, zs.shape[1]).double()
            logits = zs[None] + torch.tensor(ratios, dtype=torch.float64)[:, None, None] * cache[None]
            best = max(best, int((logits.argmax(-1) == labels[None]).sum(1).max()))
    return best / labels.shape[0]


def _timed(fn, repeats=3):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _compare_with_dense(model, val_embeds, val_labels):
    model.eval()
    space = model.method.search_space(Fn.l2_normalize(val_embeds.float()), model.cache_state())
    starting = [1.0] * (len(space.terms) - 1)
    auto = search_space_grid(space, val_labels, float(model.logit_scale), search_grid="auto",
                             starting_sharpness=starting)  # fmt: skip
    # the (beta, alpha) stage is what the dense grid covers: compare before the text step
    first_stage = auto.grid_accuracy.max().item() if len(space.terms) == 1 else None
    dense = dense_reference_accuracy(space, val_labels, float(model.logit_scale))
    t_auto = _timed(lambda: search_space_grid(space, val_labels, float(model.logit_scale), search_grid="auto",
                                              starting_sharpness=starting))  # fmt: skip
    t_tip = _timed(lambda: search_space_grid(space, val_labels, float(model.logit_scale),
                                             search_grid="tip-adapter-grid", starting_sharpness=starting))  # fmt: skip
    return auto, first_stage, dense, t_auto, t_tip


@pytest.mark.parametrize("method", ["tip-adapter", "xmadapter"])
def test_auto_search_reaches_the_dense_grid_on_the_tiny_random_clip(method) -> None:
    from xmadapter_hf.data.extraction import extract_embeddings
    from xmadapter_hf.testing import tiny_clip, tiny_image_dataset

    torch.manual_seed(0)
    clip, processor = tiny_clip()
    names = [f"class {i}" for i in range(6)]
    model = XMAdapterForImageClassification.from_clip(clip, names, processor=processor, method=method)
    train = extract_embeddings(clip, processor, tiny_image_dataset(6, shots=8, noise=0.85), augment_views=0,
                               show_progress=False)  # fmt: skip
    val = extract_embeddings(clip, processor, tiny_image_dataset(6, shots=16, noise=0.85, start_index=1000),
                             augment_views=0, show_progress=False)  # fmt: skip
    model.set_cache(train.embeds[0], train.labels)
    auto, _, dense, t_auto, t_tip = _compare_with_dense(model, val.embeds[0], val.labels)
    assert auto.accuracy >= dense - 0.01, (auto.accuracy, dense)
    assert t_auto <= 2 * t_tip, (t_auto, t_tip)


@pytest.fixture(scope="module")
def demo_embeddings():
    from transformers import AutoProcessor, CLIPModel

    from xmadapter_hf.data.extraction import extract_embeddings
    from xmadapter_hf.demo import demo_clip_path, demo_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: one thread is fastest, and a loaded machine is not slowed further
    try:
        path = demo_clip_path()
        clip, processor = CLIPModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)
        train = extract_embeddings(clip, processor, demo_task("train", shots=8, seed=0), augment_views=0,
                                   show_progress=False)  # fmt: skip
        val = extract_embeddings(clip, processor, demo_task("validation"), augment_views=0, show_progress=False)
        yield clip, processor, train, val
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["tip-adapter", "xmadapter"])
def test_auto_search_reaches_the_dense_grid_on_the_demo_clip(method, demo_embeddings) -> None:
    from xmadapter_hf.demo import DEMO_CLASSES

    clip, processor, train, val = demo_embeddings
    model = XMAdapterForImageClassification.from_clip(clip, list(DEMO_CLASSES), processor=processor, method=method)
    model.set_cache(train.embeds[0], train.labels)
    auto, _, dense, t_auto, t_tip = _compare_with_dense(model, val.embeds[0], val.labels)
    assert auto.accuracy >= dense - 0.01, (auto.accuracy, dense)
    assert t_auto <= 2 * t_tip, (t_auto, t_tip)
