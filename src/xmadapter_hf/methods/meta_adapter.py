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
from .memo import Memo

__all__ = ["MetaAdapter", "MetaAdapterFields"]


@strict
@dataclass(kw_only=True)
class MetaAdapterFields:
    r"""Meta-Adapter's fields of [`XMAdapterConfig`].

    Args:
        meta_adapter_class_chunk_size (`int`, *optional*, defaults to 1024):
            Classes per chunk of the attention (its memory grows as chunk * (K + 1) * C).
    """

    meta_adapter_class_chunk_size: int = validated_field(at_least("meta_adapter_class_chunk_size", 1), default=1024)


@register_method("meta-adapter")
class MetaAdapter(AdapterMethod):
    r"""Meta-Adapter: per class, the text embedding attends over itself and its support features.

    For class ``c`` with text embedding ``w_c`` (C,) and support features ``F_c`` (K x C, the cache keys):

    ```
    X_c   = [w_c; F_c]                                  # (K+1, C): the text embedding is itself a token
    a     = softmax_j((W_q w_c) . (W_k X_cj) / sqrt(C)) # (K+1,), over the class's own entries (any K)
    F^_c  = sum_j a_j X_cj                              # values: the raw X_c (no value or output projection)
    g_c   = sigmoid(w_g . w_c + b_g)                    # the gate, one scalar per class
    w^_c  = normalise(w_c + g_c F^_c)
    logits = s f W^T                                    # no cache term
    ```
    ``W_q``, ``W_k`` (C x C, no bias) and ``w_g`` are Xavier-uniform, ``b_g = 1``, as in the official `main.py`
    (`MetaAdapter._reset_parameters`). The adapted classifier ``W^`` depends on the weights and the cache only: it is
    computed in the forward under autograd and remembered without it (a [`Memo`], `classifier_memo`: reused while
    the weights, ``W``, ``E`` and the labels are unchanged), so that predicting costs the (B, C) x (C, N) product and
    the memo's check. It is computed for a balanced cache sorted by class by a reshape to (N, K, C) as in the official
    code, for any other layout (unequal K) entry by entry with a per-class softmax (no padding).

    Recipe: the official code's AdamW (lr 1e-4, eps 1e-4, torch's default weight decay 0.01), cosine per step to 0,
    5 epochs, batch 64 (no minimum of steps per epoch).

    Args:
        config ([`XMAdapterConfig`]): reads `meta_adapter_class_chunk_size`.
        embed_dim (`int`): ``C``, the backbone's projection dim.
    """

    colour = "#8c564b"  # tab10
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
        self.classifier_memo = Memo(config)  # the remembered W^ (never saved; float32 whatever the model's dtype)
        self.resize_cache(config.cache_size)  # sizes the memo
        self.reset_own_parameters()

    def reset_own_parameters(self) -> None:
        """Xavier-uniform ``W_q``, ``W_k``, ``w_g``; ``b_g = 1`` (the model's `_init_weights` calls this)."""
        nn.init.xavier_uniform_(self.q_proj.weight)
        nn.init.xavier_uniform_(self.k_proj.weight)
        nn.init.xavier_uniform_(self.alpha_proj.weight)
        nn.init.constant_(self.alpha_proj.bias, 1.0)

    def attend_balanced(self, class_embeds: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``F^`` for a chunk of classes with K supports each: `(n, C)`, `(n, K, C)` -> `(n, C)` float32."""
        text = class_embeds.float()  # (n, C)
        tokens = torch.cat([text.unsqueeze(1), support.float()], dim=1)  # X = [w; F], (n, K+1, C)
        query = self.q_proj(as_input_of(self.q_proj, text)).float()  # (n, C)
        keys = self.k_proj(as_input_of(self.k_proj, tokens)).float()  # (n, K+1, C)
        with Fn.full_precision(query):
            scores = torch.einsum("nc,nkc->nk", query, keys) / math.sqrt(self.embed_dim)  # (n, K+1)
            return torch.einsum("nk,nkc->nc", scores.softmax(dim=-1), tokens)  # values: the raw tokens

    def attend_any_layout(self, state: CacheState) -> torch.Tensor:
        """``F^`` `(N, C)` float32 for a cache of any layout (unequal K, unsorted): a softmax per class over its text
        token and its own entries, computed entry by entry (scatter-max, exp, index-add) without padding, so that no
        shape depends on the labels' values (no host synchronisation, one graph under `torch.compile`)."""
        text, entries, labels = state.class_embeds.float(), state.cache_embeds.float(), state.cache_labels
        query = self.q_proj(as_input_of(self.q_proj, text)).float()  # (N, C)
        text_keys = self.k_proj(as_input_of(self.k_proj, text)).float()  # (N, C)
        entry_keys = self.k_proj(as_input_of(self.k_proj, entries)).float()  # (NK, C)
        scale = math.sqrt(self.embed_dim)
        with Fn.full_precision(query):
            text_scores = (query * text_keys).sum(-1) / scale  # (N,)
            entry_scores = (query[labels] * entry_keys).sum(-1) / scale  # (NK,): each entry against its class's query
            # per-class maximum for a stable exp (a constant per class: the softmax does not depend on it)
            peak = text_scores.detach().scatter_reduce(0, labels, entry_scores.detach(), "amax", include_self=True)
            text_weights = torch.exp(text_scores - peak)  # (N,)
            entry_weights = torch.exp(entry_scores - peak[labels])  # (NK,)
            total = text_weights.index_add(0, labels, entry_weights)  # (N,) the softmax's denominators
            attended = (text_weights[:, None] * text).index_add(0, labels, entry_weights[:, None] * entries)
            return attended / total[:, None]  # (N, C)

    def adapted_class_embeds(self, state: CacheState) -> torch.Tensor:
        """``W^ = normalise(W + g F^)`` `(N, C)` float32: a balanced sorted cache (`state.shots`) by a reshape, in
        chunks of `meta_adapter_class_chunk_size` classes; any other layout entry by entry."""
        text = state.class_embeds.float()  # (N, C)
        if state.shots is None:
            attended = self.attend_any_layout(state)
        else:
            support = state.cache_embeds.view(state.num_classes, state.shots, -1)  # (N, K, C), a view
            chunk = self.config.meta_adapter_class_chunk_size
            parts = [
                self.attend_balanced(text[s : s + chunk], support[s : s + chunk]) for s in range(0, len(text), chunk)
            ]
            attended = parts[0] if len(parts) == 1 else torch.cat(parts)
        gate = torch.sigmoid(self.alpha_proj(as_input_of(self.alpha_proj, text)).float())  # (N, 1)
        return Fn.l2_normalize(text + gate * attended)

    def resize_cache(self, num_entries: int) -> None:
        super().resize_cache(num_entries)
        classes = self.config.num_classes
        self.classifier_memo.resize((classes, self.embed_dim), self.parameters(), classes, num_entries)

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        image = image_embeds.float()  # (B, C)
        zs = Fn.zero_shot_logits(image, state.class_embeds, state.logit_scale)  # (B, N)
        adapted = self.classifier_memo(self.adapted_class_embeds, state, self.parameters())  # (N, C)
        with Fn.full_precision(image):
            logits = state.logit_scale * (image @ adapted.t())  # (B, N)
        return MethodOutput(logits=logits, zero_shot_logits=zs)

    def export_constants(self, state: CacheState) -> dict[str, torch.Tensor]:
        """The adapted classifier ``W^`` (N, C): it depends on the weights and the cache only, so an exported graph
        holds it as a constant instead of rebuilding it at every call."""
        return {"adapted_class_embeds": self.adapted_class_embeds(state).detach()}

    def export_forward(self, image_embeds, state: CacheState, constants: dict[str, torch.Tensor]) -> MethodOutput:
        image = image_embeds.float()  # (B, C)
        zs = Fn.zero_shot_logits(image, state.class_embeds, state.logit_scale)  # (B, N)
        logits = state.logit_scale * (image @ constants["adapted_class_embeds"].t())  # (B, N)
        return MethodOutput(logits=logits, zero_shot_logits=zs)
