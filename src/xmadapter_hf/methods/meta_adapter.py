"""Meta-Adapter (Cheng et al., NeurIPS 2023; docs/methods.md): the class text embedding attends to its few-shot
support features, and the attended feature is added to it through a learned gate.

Everything Meta-Adapter is lives in this file: its config fields, its module, its recipe. Its weights are
class-agnostic (``C x C`` projections and a gate over one class at a time), so an adapter meta-trained on some
classes is applied to other classes from their support images alone: `from_pretrained(path, class_names=new)`, then
`build_cache(support_set)`, then predict (docs/add-classes.md).
"""

import math
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict, validated_field
from torch import nn

from .. import functional as Fn
from ..validation import at_least
from .base import AdapterMethod, CacheState, MethodOutput, TrainingRecipe, as_input_of, register_method

__all__ = ["MetaAdapter", "MetaAdapterFields", "support_tokens"]


@strict
@dataclass(kw_only=True)
class MetaAdapterFields:
    r"""Meta-Adapter's fields of [`XMAdapterConfig`].

    Args:
        meta_adapter_class_chunk_size (`int`, *optional*, defaults to 1024):
            Classes per chunk of the attention (its memory grows as chunk * (K + 1) * C).
    """

    meta_adapter_class_chunk_size: int = validated_field(at_least("meta_adapter_class_chunk_size", 1), default=1024)


def support_tokens(state: CacheState) -> tuple[torch.Tensor, torch.Tensor]:
    """The cache as per-class support sets: ``F`` `(N, K_max, C)` float32 and a mask `(N, K_max)` of real entries.

    A cache of K entries per class sorted by class (`state.shots`) is a view; any other layout (unequal K, unsorted)
    is scattered into zero-padded rows, in cache order within each class, and the mask marks the real ones.
    """
    n, keys, labels = state.num_classes, state.cache_embeds, state.cache_labels
    if state.shots is not None:
        support = keys.float().view(n, state.shots, -1)
        return support, torch.ones(n, state.shots, dtype=torch.bool, device=keys.device)
    counts = torch.bincount(labels, minlength=n)  # (N,)
    order = torch.sort(labels, stable=True).indices  # cache positions grouped by class, cache order within a class
    starts = torch.cumsum(counts, 0) - counts  # (N,) where each class's group begins in `order`
    sorted_labels = labels[order]
    slot = torch.arange(labels.shape[0], device=labels.device) - starts[sorted_labels]  # position within its class
    k_max = int(counts.max()) if counts.numel() else 0
    support = keys.new_zeros(n, k_max, keys.shape[1], dtype=torch.float32)
    mask = torch.zeros(n, k_max, dtype=torch.bool, device=keys.device)
    support[sorted_labels, slot] = keys[order].float()
    mask[sorted_labels, slot] = True
    return support, mask


@register_method("meta-adapter")
class MetaAdapter(AdapterMethod):
    r"""Meta-Adapter: per class, the text embedding attends over itself and its support features.

    For class ``c`` with text embedding ``w_c`` (C,) and support features ``F_c`` (K x C, the cache keys):

    ```
    X_c   = [w_c; F_c]                                  # (K+1, C): the text embedding is itself a token
    a     = softmax_j((W_q w_c) . (W_k X_cj) / sqrt(C)) # (K+1,); padded entries (unequal K) masked out
    F^_c  = sum_j a_j X_cj                              # values: the raw X_c (no value or output projection)
    g_c   = sigmoid(w_g . w_c + b_g)                    # the gate, one scalar per class
    w^_c  = normalise(w_c + g_c F^_c)
    logits = s f W^T                                    # no cache term
    ```
    ``W_q``, ``W_k`` (C x C, no bias) and ``w_g`` are Xavier-uniform, ``b_g = 1``, as in the official `main.py`
    (`MetaAdapter._reset_parameters`). The adapted classifier ``W^`` depends on the weights and the cache only: it is
    computed once per forward, in chunks of `meta_adapter_class_chunk_size` classes.

    Recipe: the official code's AdamW (lr 1e-4, eps 1e-4, torch's default weight decay 0.01), cosine per step to 0,
    5 epochs, batch 64 (no minimum of steps per epoch).

    Args:
        config ([`XMAdapterConfig`]): reads `meta_adapter_class_chunk_size`.
        embed_dim (`int`): ``C``, the backbone's projection dim.
    """

    trainable = True
    uses_cache = True
    config_fields = MetaAdapterFields
    recipe = TrainingRecipe(
        optimizer="adamw", learning_rate=1e-4, eps=1e-4, weight_decay=0.01, epochs=5, batch_size=64,
        min_steps_per_epoch=1,
    )  # fmt: skip

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        # Plain `nn.Linear`s: `reset_own_parameters` gives them the official initialisation.
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=False)  # W_q
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False)  # W_k
        self.alpha_proj = nn.Linear(embed_dim, 1, bias=True)  # the gate (w_g, b_g)
        self.reset_own_parameters()

    def reset_own_parameters(self) -> None:
        """Xavier-uniform ``W_q``, ``W_k``, ``w_g``; ``b_g = 1`` (the model's `_init_weights` calls this)."""
        nn.init.xavier_uniform_(self.q_proj.weight)
        nn.init.xavier_uniform_(self.k_proj.weight)
        nn.init.xavier_uniform_(self.alpha_proj.weight)
        nn.init.constant_(self.alpha_proj.bias, 1.0)

    def adapt_classes(self, class_embeds: torch.Tensor, support: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``W^`` for a chunk of classes: `(n, C)`, `(n, K, C)`, `(n, K)` -> `(n, C)` float32, normalised."""
        text = class_embeds.float()  # (n, C)
        tokens = torch.cat([text.unsqueeze(1), support], dim=1)  # X = [w; F], (n, K+1, C)
        valid = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)  # the text token is always there
        query = self.q_proj(as_input_of(self.q_proj, text)).float()  # (n, C)
        keys = self.k_proj(as_input_of(self.k_proj, tokens)).float()  # (n, K+1, C)
        with Fn.full_precision(query):
            scores = torch.einsum("nc,nkc->nk", query, keys) / math.sqrt(self.embed_dim)  # (n, K+1)
            weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=-1)
            attended = torch.einsum("nk,nkc->nc", weights, tokens)  # values: the raw tokens, (n, C)
        gate = torch.sigmoid(self.alpha_proj(as_input_of(self.alpha_proj, text)).float())  # (n, 1)
        return Fn.l2_normalize(text + gate * attended)

    def adapted_class_embeds(self, state: CacheState) -> torch.Tensor:
        """``W^`` `(N, C)` float32 for every class, in chunks of classes."""
        support, mask = support_tokens(state)
        chunk = self.config.meta_adapter_class_chunk_size
        parts = [
            self.adapt_classes(state.class_embeds[s : s + chunk], support[s : s + chunk], mask[s : s + chunk])
            for s in range(0, state.num_classes, chunk)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        image = image_embeds.float()  # (B, C)
        zs = Fn.zero_shot_logits(image, state.class_embeds, state.logit_scale)  # (B, N)
        adapted = self.adapted_class_embeds(state)  # (N, C)
        with Fn.full_precision(image):
            logits = state.logit_scale * (image @ adapted.t())  # (B, N)
        return MethodOutput(logits=logits, zero_shot_logits=zs)
