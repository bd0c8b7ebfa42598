"""The cache term ``A L``: the one implementation that every cache method's forward and the validation search use.

``A = exp(-beta (1 - q K^T))`` are the affinities of the queries with the cache keys and ``L`` the one-hot matrix of
the cache labels, so ``A L`` sums, for each class, the affinities of its cache entries. Never a dense (NK, N) ``L``:

- a cache sorted by class with K entries each (what `build_cache` gives for a K-shot split; `CacheState.shots`) sums
  each class by a reshape, ``A.view(B, N, K).sum(-1)``: no scatter, and deterministic on CUDA too;
- any other layout (unequal K, unsorted) adds each entry into its class column (`index_add_`), and so does the
  leave-one-out of `cache_index`.

Memory and speed: the cosines are computed over chunks of `chunk_size` cache entries, each chunk one (B, C) x (C, n)
matmul whose (B, n) output is turned into affinities in place (``cos - 1``, ``* beta``, ``exp``: bit for bit the
formula's floats, so logits do not depend on the chunking) and reduced to its classes
while it is still in the CPU's cache. The result costs about one (B, C) x (C, NK) matmul (docs/benchmarks.md); memory
is O(B chunk + B N). The loop runs over cache entries only, whose count is fixed by the parameters' shapes: no Python
branch depends on tensor values, so `torch.compile(fullgraph=True)` and `torch.onnx.export` trace it.

The affinity maths runs in float32, also under `torch.autocast` and for half-precision caches (each chunk of keys is
cast up as it is used): an error of 0.4% in a cosine of 0.97 becomes one of about 20% in ``exp(-beta (1 - cos))`` at
beta = 50.
"""

import torch

from .. import functional as Fn

__all__ = ["affinity", "affinity_", "cache_logits", "class_sums", "cosine_affinity_", "remove_own_entries"]


def cosine_affinity_(cosines: torch.Tensor, sharpness: float) -> torch.Tensor:
    """``exp(-beta * (1 - cos))`` in place, in three passes: ``beta * (cos - 1)`` is the same float as
    ``-beta * (1 - cos)`` (each factor is the other's exact negation), so the result is bit for bit the formula's."""
    return cosines.sub_(1.0).mul_(sharpness).exp_()


def affinity_(distance: torch.Tensor, sharpness: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(-beta * distance)`` with ``distance = 1 - cos``: in place, or into ``out`` (a buffer the search reuses
    across sharpness values; `out=` works without autograd only)."""
    if out is None:
        return distance.mul_(-sharpness).exp_()
    return torch.mul(distance, -sharpness, out=out).exp_()


def affinity(queries: torch.Tensor, keys: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Tip-Adapter's affinity ``exp(-beta * (1 - q K^T))``, float32: `(B, C)`, `(NK, C)` -> `(B, NK)`."""
    with Fn.full_precision(queries):  # autocast would run this matmul (and so the exponential) in bf16/fp16
        cosines = queries.float() @ keys.float().t()  # (B, C) @ (C, NK) -> (B, NK)
        return cosine_affinity_(cosines, sharpness)


def class_sums(
    affinities: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    shots: int | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``A L``: for each class, the sum of its entries' affinities, `(B, n)` -> `(B, N)`.

    With ``shots`` = K the entries are K per class, sorted by class: the result covers their n / K classes. Otherwise
    ``labels`` (n,) say each entry's class, and the sums are added into ``out`` (`(B, N)`, zeros if not given), so
    that the chunks of a cache accumulate into one tensor.
    """
    if shots is not None:
        return affinities.view(affinities.shape[0], -1, shots).sum(-1)  # (B, n / K, K) -> (B, n / K)
    if out is None:
        out = affinities.new_zeros(affinities.shape[0], num_classes)
    # in place: autograd supports it (it keeps only the index), and no (B, N) tensor is allocated per chunk
    return out.index_add_(1, labels, affinities)  # (B, n) -> (B, N)


def cache_logits(
    queries: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    sharpness: float,
    chunk_size: int,
    *,
    shots: int | None = None,
    normalize_keys: bool = False,
) -> torch.Tensor:
    """``exp(-beta (1 - q K^T)) L`` over chunks of cache entries, float32.

    Args:
        queries (`torch.Tensor` of shape `(B, C)`): normalised queries.
        keys (`torch.Tensor` of shape `(NK, C)`): cache keys, any floating dtype; ``normalize_keys`` renormalises
            each chunk first (learned keys drift).
        labels (`torch.LongTensor` of shape `(NK,)`): each entry's class.
        num_classes (`int`): N.
        sharpness (`float`): beta.
        chunk_size (`int`): cache entries per chunk (rounded down to a multiple of ``shots``, at least ``shots``).
        shots (`int`, *optional*): K of a cache sorted by class with K entries each (see [`class_sums`]).

    Returns:
        `torch.Tensor` of shape `(B, N)`.
    """
    if shots is not None:
        chunk_size = max(shots, chunk_size // shots * shots)  # whole classes per chunk
    parts, out = [], None
    with Fn.full_precision(queries):
        q = queries.float()
        for start in range(0, keys.shape[0], chunk_size):
            k = keys[start : start + chunk_size].float()  # (n, C), cast up chunk by chunk
            if normalize_keys:
                k = Fn.l2_normalize(k)
            scores = cosine_affinity_(q @ k.t(), sharpness)  # (B, C) @ (C, n) -> (B, n), then in place
            if shots is None:
                out = class_sums(scores, labels[start : start + chunk_size], num_classes, None, out)
            else:
                parts.append(class_sums(scores, labels[start : start + chunk_size], num_classes, shots))
    if shots is None:
        return out
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # the chunks cover consecutive classes


def remove_own_entries(
    class_scores: torch.Tensor,
    queries: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
    cache_index: torch.Tensor,
    sharpness: float,
    *,
    normalize_keys: bool = False,
) -> torch.Tensor:
    """``A L`` without each query's own cache entry (leave-one-out): a training image is also a cache entry.

    Args:
        class_scores (`torch.Tensor` of shape `(B, N)`): ``A L`` over the whole cache.
        queries (`torch.Tensor` of shape `(B, C)`), keys (`(NK, C)`), labels (`(NK,)`), sharpness: as for
            [`cache_logits`].
        cache_index (`torch.LongTensor` of shape `(B,)`): each query's position in the cache; `-1` = not in it.

    Returns:
        `torch.Tensor` of shape `(B, N)`: a new tensor.
    """
    index = cache_index.long()
    inside = (index >= 0).float()  # (B,)
    safe = index.clamp(min=0)
    own = keys[safe].float()  # (B, C)
    if normalize_keys:
        own = Fn.l2_normalize(own)
    distance = 1 - (queries.float() * own).sum(-1)  # (B,)
    own_affinity = torch.exp(-sharpness * distance) * inside  # (B,): 0 where the query is not in the cache
    rows = torch.arange(index.shape[0], device=index.device)
    return class_scores.index_put((rows, labels[safe]), -own_affinity, accumulate=True)  # (B, N)
