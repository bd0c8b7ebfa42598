"""Tests of the vectorised validation search against Tip-Adapter's plain nested loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xmadapter_hf.training.search import SearchResult, residual_ratio_grid, search_hyperparameters, sharpness_grid


def reference_search(
    zero_shot_logits: torch.Tensor,
    image_cos: torch.Tensor,
    cache_labels: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    sharpnesses: list[float],
    residual_ratios: list[float],
    text_cos: torch.Tensor | None = None,
    gamma: torch.Tensor | float | None = None,
    text_sharpness: float = 1.0,
    text_sharpnesses: list[float] | None = None,
) -> tuple[float, float, float | None, float]:
    """Tip-Adapter's `search_hp` loop (cosine matmul hoisted), then the coordinate-wise text-sharpness step."""
    one_hot = F.one_hot(cache_labels, num_classes).float()  # (NK, N), the dense L of the reference code

    def accuracy(beta: float, alpha: float, beta_txt: float) -> float:
        affinity = torch.exp(-beta * (1 - image_cos))
        if text_cos is not None:
            affinity = gamma * affinity + (1 - gamma) * torch.exp(-beta_txt * (1 - text_cos))
        logits = zero_shot_logits + alpha * (affinity @ one_hot)
        return (logits.argmax(dim=1) == labels).sum().item() / len(labels)

    best_acc, best_beta, best_alpha = -1.0, None, None
    for beta in sharpnesses:
        for alpha in residual_ratios:
            acc = accuracy(beta, alpha, text_sharpness)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    if text_cos is None:
        return best_beta, best_alpha, None, best_acc
    best_acc, best_text = -1.0, None
    for beta_txt in text_sharpnesses:
        acc = accuracy(best_beta, best_alpha, beta_txt)
        if acc > best_acc:
            best_acc, best_text = acc, beta_txt
    return best_beta, best_alpha, best_text, best_acc


def random_task(seed: int, rows: int = 48, classes: int = 5, shots: int = 4, dim: int = 16):
    """Normalised embeddings with class structure, so that accuracy varies over the grid."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=gen), dim=-1)
    text = F.normalize(centres + 0.8 * torch.randn(classes, dim, generator=gen), dim=-1)
    labels = torch.randint(0, classes, (rows,), generator=gen)
    cache_labels = torch.arange(classes).repeat_interleave(shots)
    queries = F.normalize(centres[labels] + 0.5 * torch.randn(rows, dim, generator=gen), dim=-1)
    keys = F.normalize(centres[cache_labels] + 0.5 * torch.randn(len(cache_labels), dim, generator=gen), dim=-1)
    text_queries = F.normalize(queries + 0.7 * torch.randn(rows, dim, generator=gen), dim=-1)
    text_keys = F.normalize(keys + 0.7 * torch.randn(len(cache_labels), dim, generator=gen), dim=-1)
    return {
        "zero_shot_logits": 100.0 * queries @ text.t(),
        "image_cos": queries @ keys.t(),
        "cache_labels": cache_labels,
        "labels": labels,
        "num_classes": classes,
        "text_cos": text_queries @ text_keys.t(),
        "gamma_rows": torch.rand(rows, 1, generator=gen),
    }


GRID = {"search_scale": (7.0, 3.0), "search_step": (12, 6)}
POSITIONAL = ("zero_shot_logits", "image_cos", "cache_labels", "labels", "num_classes")


def positional(task: dict) -> list:
    return [task[key] for key in POSITIONAL]


def check_against_reference(result: SearchResult, expected: tuple) -> None:
    beta, alpha, beta_txt, acc = expected
    assert result.sharpness == beta
    assert result.residual_ratio == alpha
    assert result.text_sharpness == beta_txt
    assert result.accuracy == acc


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("logit_scale", [100.0, 30.0])
def test_tip_adapter_mode_matches_nested_loop(seed: int, chunk_size: int | None, logit_scale: float) -> None:
    task = random_task(seed)
    task["zero_shot_logits"] = task["zero_shot_logits"] * (logit_scale / 100.0)
    betas, alphas = sharpness_grid(7.0, 12), residual_ratio_grid(3.0, 6, logit_scale)
    expected = reference_search(*positional(task), betas, alphas)
    result = search_hyperparameters(*positional(task), logit_scale, chunk_size=chunk_size, **GRID)
    check_against_reference(result, expected)
    assert result.num_validation == 48
    assert result.text_sharpness_grid is None and result.text_grid_accuracy is None
    assert result.grid_accuracy.shape == (12, 6)
    assert result.grid_accuracy.max().item() == pytest.approx(result.accuracy)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("per_row_gamma", [False, True])
def test_xmadapter_mode_matches_nested_loop(seed: int, chunk_size: int | None, per_row_gamma: bool) -> None:
    task = random_task(seed)
    gamma = task["gamma_rows"] if per_row_gamma else 0.3
    betas, alphas, text_betas = sharpness_grid(7.0, 12), residual_ratio_grid(3.0, 6), sharpness_grid(5.0, 9)
    base = positional(task)
    expected = reference_search(*base, betas, alphas, task["text_cos"], gamma, 2.0, text_betas)
    result = search_hyperparameters(
        *base,
        100.0,
        text_cos=task["text_cos"],
        affinity_ratio=gamma,
        text_sharpness=2.0,
        text_search_scale=5.0,
        text_search_step=9,
        chunk_size=chunk_size,
        **GRID,
    )
    check_against_reference(result, expected)
    assert result.text_sharpness_grid == text_betas
    assert result.text_grid_accuracy.shape == (9,)


def test_text_grid_defaults_to_the_sharpness_grid() -> None:
    task = random_task(0)
    result = search_hyperparameters(*positional(task), 100.0, text_cos=task["text_cos"], affinity_ratio=0.5, **GRID)
    assert result.text_sharpness_grid == sharpness_grid(7.0, 12)


def test_half_precision_inputs_are_searched_in_float32() -> None:
    task = random_task(1)
    half = [x.half() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in positional(task)]
    upcast = [x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in half]
    result, expected = search_hyperparameters(*half, 100.0), search_hyperparameters(*upcast, 100.0)
    assert (result.sharpness, result.residual_ratio, result.accuracy) == (
        expected.sharpness,
        expected.residual_ratio,
        expected.accuracy,
    )


def test_inputs_with_gradients_are_accepted() -> None:
    # A learned gamma (or learned keys) may arrive with requires_grad; the search runs without autograd.
    task = random_task(2)
    gamma = torch.full((48, 1), 0.4, requires_grad=True)
    result = search_hyperparameters(
        *positional(task), 100.0, text_cos=task["text_cos"].requires_grad_(), affinity_ratio=gamma, **GRID
    )
    expected = search_hyperparameters(
        *positional(task), 100.0, text_cos=task["text_cos"].detach(), affinity_ratio=0.4, **GRID
    )
    assert (result.sharpness, result.residual_ratio, result.text_sharpness, result.accuracy) == (
        expected.sharpness,
        expected.residual_ratio,
        expected.text_sharpness,
        expected.accuracy,
    )


# Known maxima. Grids with round values: sharpness_grid(7.1, 7) = [0.1, 1.1, 2.1, 3.1, 4.1, 5.1, 6.1] and
# residual_ratio_grid(3.1, 6) = [0.1, 0.6, 1.1, 1.6, 2.1, 2.6] (at s = 100).
ROUND_GRID = {"search_scale": (7.1, 3.1), "search_step": (7, 6)}
# Two classes; class 0 has one cache entry at cosine 0.9 with the query, class 1 has five at 0.5. Cache logits:
# class 0 exp(-0.1 beta), class 1 5 exp(-0.5 beta): class 0 wins iff beta > ln(5) / 0.4 = 4.02, first at 4.1.
IMBALANCED_COS = torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.5, 0.5]])
IMBALANCED_LABELS = torch.tensor([0, 1, 1, 1, 1, 1])


def test_round_grids() -> None:
    assert sharpness_grid(7.1, 7) == pytest.approx([0.1, 1.1, 2.1, 3.1, 4.1, 5.1, 6.1])
    assert residual_ratio_grid(3.1, 6) == pytest.approx([0.1, 0.6, 1.1, 1.6, 2.1, 2.6])


def test_known_maximum_from_the_sharpness() -> None:
    # Uninformative zero-shot logits: only the cache decides, and any alpha > 0 gives the same prediction.
    result = search_hyperparameters(
        torch.zeros(1, 2), IMBALANCED_COS, IMBALANCED_LABELS, torch.tensor([0]), 2, 100.0, **ROUND_GRID
    )
    assert result.sharpness == sharpness_grid(7.1, 7)[4] == pytest.approx(4.1)
    assert result.residual_ratio == pytest.approx(0.1)
    assert result.accuracy == 1.0
    assert result.grid_accuracy[:4].sum() == 0 and bool((result.grid_accuracy[4:] == 1).all())


@pytest.mark.parametrize(("logit_scale", "beta_index", "alpha_index"), [(100.0, 1, 3), (50.0, 2, 5)])
def test_known_maximum_from_both_values(logit_scale: float, beta_index: int, alpha_index: int) -> None:
    # Zero-shot favours the wrong class by 1; the cache favours the right one by 1 - exp(-beta) (entries at cosine
    # 1 and 0), so the query is classified iff alpha * (1 - exp(-beta)) > 1. At s = 100: beta = 0.1 needs
    # alpha > 10.5 (none), beta = 1.1 needs alpha > 1.50 -> 1.6. At s = 50 alpha's grid halves to [0.05, ..., 1.3]:
    # beta = 1.1 needs 1.50 (none), beta = 2.1 needs alpha > 1.14 -> 1.3.
    result = search_hyperparameters(
        torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([0]), 2,
        logit_scale, **ROUND_GRID,
    )  # fmt: skip
    betas, alphas = sharpness_grid(7.1, 7), residual_ratio_grid(3.1, 6, logit_scale)
    assert (result.sharpness, result.residual_ratio) == (betas[beta_index], alphas[alpha_index])
    assert result.accuracy == 1.0
    first_hit = int(result.grid_accuracy.flatten().nonzero()[0, 0])
    assert first_hit == beta_index * 6 + alpha_index
    assert alphas[alpha_index] * (1 - math.exp(-betas[beta_index])) > 1 > alphas[-1] * (1 - math.exp(-betas[0]))


def test_known_maximum_of_the_text_sharpness() -> None:
    # gamma = 0: only the text cache counts. At the starting beta_txt = 1 every (beta, alpha) cell scores 0, so the
    # first cell is kept (the best starts below 0); the text step then finds the first beta_txt above 4.02.
    result = search_hyperparameters(
        torch.zeros(1, 2), torch.zeros(1, 6), IMBALANCED_LABELS, torch.tensor([0]), 2, 100.0, **ROUND_GRID,
        text_cos=IMBALANCED_COS, affinity_ratio=0.0, text_sharpness=1.0,
    )  # fmt: skip
    assert (result.sharpness, result.residual_ratio) == (0.1, 0.1)
    assert result.accuracy == 1.0 and bool((result.grid_accuracy == 0).all())
    assert result.text_sharpness == sharpness_grid(7.1, 7)[4]
    assert result.text_grid_accuracy.tolist() == [0.0] * 4 + [1.0] * 3


def test_text_step_keeps_the_first_text_maximum_even_below_the_start() -> None:
    # Documented choice: the text step starts afresh, so a worse grid value replaces a better starting beta_txt.
    # Here beta_txt = 5 (off the grid [0.1, 1.1, 2.1]) classifies the query, no grid value does.
    result = search_hyperparameters(
        torch.zeros(1, 2), torch.zeros(1, 6), IMBALANCED_LABELS, torch.tensor([0]), 2, 100.0, **ROUND_GRID,
        text_cos=IMBALANCED_COS, affinity_ratio=0.0, text_sharpness=5.0, text_search_scale=3.1, text_search_step=3,
    )  # fmt: skip
    assert bool((result.grid_accuracy == 1).all())
    assert result.text_sharpness == 0.1 and result.accuracy == 0.0


def test_ties_keep_the_first_strict_maximum() -> None:
    # Zero-shot logits decide whatever the cache says: every cell ties at accuracy 1.
    task = random_task(3)
    labels = task["labels"]
    zero_shot = 1e6 * F.one_hot(labels, 5).float()
    result = search_hyperparameters(
        zero_shot, task["image_cos"], task["cache_labels"], labels, 5, 100.0, text_cos=task["text_cos"],
        affinity_ratio=0.5, text_search_step=4, **GRID,
    )  # fmt: skip
    assert bool((result.grid_accuracy == 1).all())
    assert (result.sharpness, result.residual_ratio) == (sharpness_grid(7.0, 12)[0], residual_ratio_grid(3.0, 6)[0])
    assert result.text_sharpness == sharpness_grid(7.0, 4)[0]
    assert result.accuracy == 1.0


def test_grids_equal_tip_adapter_formula() -> None:
    for scale, step in [(7.0, 200), (50.0, 200), (12.0, 7)]:
        assert sharpness_grid(scale, step) == [i * (scale - 0.1) / step + 0.1 for i in range(step)]
    alphas = [i * (3.0 - 0.1) / 20 + 0.1 for i in range(20)]
    assert residual_ratio_grid(3.0, 20) == alphas
    assert residual_ratio_grid(3.0, 20, logit_scale=100.0) == alphas
    assert residual_ratio_grid(3.0, 20, logit_scale=14.3) == [a * (14.3 / 100) for a in alphas]
    assert residual_ratio_grid(3.0, 20, logit_scale=50.0) == pytest.approx([a / 2 for a in alphas])
    assert sharpness_grid(7.0, 4, start=1.0) == [1.0, 2.5, 4.0, 5.5]
    task = random_task(0)
    result = search_hyperparameters(*positional(task), 14.3, search_step=(5, 4))
    assert result.sharpness_grid == sharpness_grid(7.0, 5)
    assert result.residual_ratio_grid == residual_ratio_grid(3.0, 4, logit_scale=14.3)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: sharpness_grid(7.0, 0), ValueError),
        (lambda: sharpness_grid(7.0, 2.5), TypeError),
        (lambda: sharpness_grid(0.05, 10), ValueError),
        (lambda: sharpness_grid(-1.0, 10), ValueError),
        (lambda: sharpness_grid("7", 10), TypeError),
        (lambda: residual_ratio_grid(3.0, 20, logit_scale=0.0), ValueError),
        (lambda: residual_ratio_grid(3.0, 20, logit_scale=float("nan")), ValueError),
    ],
)
def test_bad_grid_arguments_raise(call, error) -> None:
    with pytest.raises(error):
        call()


def _args(**changes):
    task = random_task(0, rows=6, classes=3, shots=2)
    args = {key: task[key] for key in POSITIONAL} | {"logit_scale": 100.0}
    return args | changes


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"zero_shot_logits": torch.zeros(6, 4)}, ValueError, "zero_shot_logits"),
        (
            {"zero_shot_logits": torch.zeros(0, 3), "image_cos": torch.zeros(0, 6), "labels": torch.zeros(0).long()},
            ValueError,
            "empty",
        ),  # fmt: skip
        ({"zero_shot_logits": [[0.0] * 3] * 6}, TypeError, "zero_shot_logits"),
        ({"image_cos": torch.zeros(5, 6)}, ValueError, "image_cos"),
        ({"image_cos": torch.zeros(6, 6, dtype=torch.long)}, TypeError, "image_cos"),
        ({"image_cos": torch.zeros(6, 0), "cache_labels": torch.zeros(0).long()}, ValueError, "cache is empty"),
        ({"cache_labels": torch.zeros(5).long()}, ValueError, "cache_labels"),
        ({"cache_labels": torch.full((6,), 3)}, ValueError, r"\[0, 3\)"),
        ({"labels": torch.full((6,), -1)}, ValueError, "labels"),
        ({"labels": torch.zeros(6)}, TypeError, "integer"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"num_classes": 3.0}, TypeError, "num_classes"),
        ({"logit_scale": 0.0}, ValueError, "logit_scale"),
        ({"logit_scale": -100.0}, ValueError, "logit_scale"),
        ({"search_step": (0, 20)}, ValueError, "search_step"),
        ({"search_step": (200, 0)}, ValueError, "search_step"),
        ({"search_step": 200}, TypeError, "search_step"),
        ({"search_scale": (7.0, 0.05)}, ValueError, "search_scale"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"affinity_ratio": 0.5}, ValueError, "text_cos"),
        ({"text_cos": torch.zeros(6, 6)}, ValueError, "affinity_ratio"),
        ({"text_cos": torch.zeros(6, 5), "affinity_ratio": 0.5}, ValueError, "text_cos"),
        ({"text_cos": torch.zeros(6, 6), "affinity_ratio": 1.5}, ValueError, "affinity_ratio"),
        ({"text_cos": torch.zeros(6, 6), "affinity_ratio": torch.rand(5, 1)}, ValueError, "affinity_ratio"),
        ({"text_cos": torch.zeros(6, 6), "affinity_ratio": "0.5"}, TypeError, "affinity_ratio"),
        ({"text_cos": torch.zeros(6, 6), "affinity_ratio": 0.5, "text_sharpness": 0.0}, ValueError, "text_sharp"),
        ({"text_cos": torch.zeros(6, 6), "affinity_ratio": 0.5, "text_search_step": 0}, ValueError, "text_search"),
    ],
)
def test_bad_inputs_raise(changes, error, match) -> None:
    args = _args(**changes)
    leading = [args.pop(key) for key in POSITIONAL]
    with pytest.raises(error, match=match):
        search_hyperparameters(*leading, args.pop("logit_scale"), **args)
