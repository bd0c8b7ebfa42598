"""XMAdapter (docs/methods.md): an image cache and a text cache, fused with an adaptive affinity ratio."""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from .. import functional as Fn
from .base import CacheState, MethodOutput, adapter_linear, as_input_of, chunked_cache_logits, register_method
from .tip_adapter import TipAdapterF

__all__ = ["XMAdapter"]


@register_method("xmadapter")
class XMAdapter(TipAdapterF):
    r"""XMAdapter: Tip-Adapter-F's learnable image cache plus a text cache in a shared low-dimensional space.

    ```
    t_i    = normalise(W[y_i] + MetaNet(E_i))        # E_i: the frozen initial cache embedding
    T      = normalise(P_t t_i)                       # (NK, D) text keys
    g      = normalise(Img2TxtNet(f))                 # (B, D) query in the text space
    gamma  = sigmoid(gamma_logit [+ gate(f)])
    logits = s f W^T + alpha * (gamma * A_img L + (1 - gamma) * A_txt L)
    ```
    With `use_text_cache=False` none of the text-side modules exist and this is exactly Tip-Adapter-F. Since
    ``L`` is linear, the fused cache logits are computed as the fusion of the per-modality cache logits, which the
    output reports separately. The text keys depend only on weights and buffers: in an eager forward without autograd
    they are computed once and reused until a tensor they depend on changes (see [`text_keys`]); under autograd and
    inside `torch.compile` they are computed in the forward itself.
    """

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        self._text_keys_memo: _TextKeysMemo | None = None
        self.text_key_computations = 0  # how often the text keys were built in eager mode (tests check the memo)
        if not config.use_text_cache:
            return
        text_dim = config.text_dim or max(1, embed_dim // 4)
        # At least 8 hidden ReLUs: cache embeddings sit in a narrow cone, and with very few units all of them can be
        # dead on every entry (no gradient ever reaches MetaNet); C = 512 with r = 16 gives 32.
        hidden = min(embed_dim, max(8, embed_dim // config.meta_reduction))
        # Last MetaNet layer starts at zero so that training starts from the plain class text embedding.
        self.meta_net = nn.Sequential(
            adapter_linear(embed_dim, hidden), nn.ReLU(), adapter_linear(hidden, embed_dim, zero_init=True)
        )
        self.text_projection = adapter_linear(embed_dim, text_dim, bias=False)  # P_t
        self.img2txt = nn.Sequential(
            adapter_linear(embed_dim, text_dim), nn.ReLU(), adapter_linear(text_dim, text_dim)
        )
        self.affinity_ratio_logit = nn.Parameter(torch.tensor(0.0))
        self.affinity_gate = adapter_linear(embed_dim, 1, zero_init=True) if config.dynamic_affinity_ratio else None
        self.reset_own_parameters()

    def reset_own_parameters(self) -> None:
        """Initialises the parameters that are not in a linear layer: ``gamma_logit = logit(gamma_0)``."""
        if self.config.use_text_cache:
            gamma0 = self.config.affinity_ratio_init
            with torch.no_grad():
                self.affinity_ratio_logit.fill_(math.log(gamma0 / (1.0 - gamma0)))

    @classmethod
    def measures_disagreement(cls, config) -> bool:
        return config.use_text_cache

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        ratio = [p for n, p in self.named_parameters() if n == "affinity_ratio_logit" and p.requires_grad]
        rest = [p for n, p in self.named_parameters() if n != "affinity_ratio_logit" and p.requires_grad]
        groups = [{"params": rest, "lr": learning_rate}]
        if ratio:
            groups.append({"params": ratio, "lr": learning_rate * self.config.affinity_ratio_lr_multiplier})
        return groups

    # ------------------------------------------------------------------------------------------------ text side
    def compute_text_keys(self, state: CacheState) -> torch.Tensor:
        """``T = normalise(P_t normalise(W[y] + MetaNet(E)))``, (NK, D) float32, always recomputed.

        MetaNet and ``P_t`` run in their weights' dtype; the sums and normalisations in float32.
        """
        if not torch.compiler.is_compiling():  # a Python counter would be a recompiling guard under torch.compile
            self.text_key_computations += 1
        class_embeds = state.class_embeds.float()  # (N, C)
        chunk, keys = self.config.cache_chunk_size, []
        # In chunks of entries: float32 (NK, C) intermediates of a 1.6M-entry cache would take 3 GiB each, while the
        # keys themselves are (NK, D) with D = C / 4.
        for start in range(0, state.cache_embeds.shape[0], chunk):
            cache = state.cache_embeds[start : start + chunk].float()  # (chunk, C)
            class_text = class_embeds[state.cache_labels[start : start + chunk]]  # (chunk, C)
            conditioned = Fn.l2_normalize(class_text + self.meta_net(as_input_of(self.meta_net, cache)).float())
            projected = self.text_projection(as_input_of(self.text_projection, conditioned))  # (chunk, D)
            keys.append(Fn.l2_normalize(projected.float()))
        return keys[0] if len(keys) == 1 else torch.cat(keys)  # (NK, D)

    def text_keys(self, state: CacheState) -> torch.Tensor:
        """The text keys: recomputed under autograd and inside `torch.compile`, memoised in an eager no-grad forward.

        The memo is reused only while (a) every tensor it was built from is the same object, not modified in place
        (version counter), with the same dtype, device and shape, and (b) the text-side weights (MetaNet, ``P_t``),
        the class text embeddings ``W`` and the cache labels equal, value for value, a copy taken when it was built.
        (b) is what sees writes through `.data` (an EMA update), which bypass version counters. The frozen cache ``E``
        is checked by (a) only (a copy would double its memory): `set_cache`, `load_state_dict` and in-place ops on it
        are seen, a write through `cache_embeds.data` is not. The check costs one comparison of about
        C * (2 C / r + D) + N * C + NK values, against NK * C * (2 C / r + D) multiply-adds to rebuild the keys; on
        a GPU the comparison is one host synchronisation. Compiled code skips the memo (a data-dependent branch
        would break the graph or synchronise with the device) and computes the keys in the graph, always current.
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.compute_text_keys(state)
        memo = self._text_keys_memo
        if memo is None or not memo.matches(self, state):
            self._text_keys_memo = memo = _TextKeysMemo(self, state, self.compute_text_keys(state))
        return memo.keys

    def affinity_ratio(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``gamma`` per query, (B, 1), float32."""
        logit = self.affinity_ratio_logit.float().expand(image_embeds.shape[0], 1)
        if self.affinity_gate is not None:
            gate = self.affinity_gate(as_input_of(self.affinity_gate, image_embeds))  # (B, C) -> (B, 1)
            logit = logit + gate.float()
        return torch.sigmoid(logit)

    def query_text_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``g = normalise(Img2TxtNet(f))``, (B, C) -> (B, D) float32."""
        return Fn.l2_normalize(self.img2txt(as_input_of(self.img2txt, image_embeds.float())).float())

    # ------------------------------------------------------------------------------------------------- forward
    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)
        image_cache = self.image_cache_logits(image_embeds, state)  # (B, N)
        if not self.config.use_text_cache:
            logits = zs + self.config.residual_ratio * image_cache
            return MethodOutput(logits, zs, cache_logits=image_cache, image_cache_logits=image_cache)
        text_keys = self.text_keys(state)
        query = self.query_text_embeds(image_embeds)
        n, chunk = state.num_classes, self.config.cache_chunk_size
        text_cache = chunked_cache_logits(query, text_keys, state.cache_labels, n, self.config.text_sharpness, chunk)
        gamma = self.affinity_ratio(image_embeds)  # (B, 1)
        cache = Fn.fuse_affinities(image_cache, text_cache, gamma)  # fusing A then L == fusing A L (L is linear)
        logits = zs + self.config.residual_ratio * cache
        disagreement = None
        if labels is not None and self.config.hard_sample_strength > 0:
            if self.config.hard_sample_criterion == "disagreement":
                disagreement = self.disagreement(
                    image_embeds, query, text_keys, image_cache, text_cache, state, labels, cache_index
                )
        return MethodOutput(logits, zs, cache, image_cache, text_cache, gamma.squeeze(-1), disagreement)

    @torch.no_grad()
    def disagreement(self, image_embeds, query, text_keys, image_cache, text_cache, state, labels, cache_index):
        """``d = |p_img[y] - p_txt[y]|`` with ``p = softmax(A L / tau)``; leave-one-out when ``cache_index`` is given.

        A training image is also a cache entry, so its own entry (affinity close to 1) is removed from both caches'
        class scores before comparing them. Entries with ``cache_index < 0`` are not in the cache.
        """
        image_cache, text_cache = image_cache.detach().clone(), text_cache.detach().clone()
        if cache_index is not None:
            index = cache_index.long()
            inside = index >= 0
            safe = index.clamp(min=0)
            keys = self.keys(state)[safe].float()
            if self.config.normalize_keys:
                keys = Fn.l2_normalize(keys)
            self_img = torch.exp(-self.config.sharpness * (1 - (image_embeds.float() * keys).sum(-1)))
            self_txt = torch.exp(-self.config.text_sharpness * (1 - (query * text_keys[safe]).sum(-1)))
            own = F.one_hot(state.cache_labels[safe], state.num_classes).float() * inside[:, None].float()
            image_cache = image_cache - own * self_img[:, None]
            text_cache = text_cache - own * self_txt[:, None]
        tau = self.config.hard_sample_temperature
        valid = labels.clamp(min=0)[:, None]
        p_img = torch.softmax(image_cache / tau, dim=-1).gather(1, valid).squeeze(1)
        p_txt = torch.softmax(text_cache / tau, dim=-1).gather(1, valid).squeeze(1)
        return (p_img - p_txt).abs()


class _TextKeysMemo:
    """XMAdapter's text keys with what they were built from (see `XMAdapter.text_keys`).

    Every input is compared by identity, version counter, dtype, device and shape; the text-side weights, the class
    text embeddings and the cache labels also by value, with a copy (writes through `.data` bypass version counters).
    The frozen cache ``E`` is too large to copy: it is compared by identity and version only. Tensors are held by weak
    reference, so that a replaced cache is freed rather than kept alive by the memo.
    """

    def __init__(self, method: XMAdapter, state: CacheState, keys: torch.Tensor):
        self.keys = keys
        tensors = self._inputs(method, state)
        self.described = [self._describe(t) for t in tensors]
        self.values = [t.detach().clone() for t in tensors[1:]]  # all but E

    @staticmethod
    def _inputs(method: XMAdapter, state: CacheState) -> list[torch.Tensor]:
        weights = [*method.meta_net.parameters(), *method.text_projection.parameters()]
        return [state.cache_embeds, state.class_embeds, state.cache_labels, *weights]

    @staticmethod
    def _describe(tensor: torch.Tensor) -> tuple:
        # tensors made under `torch.inference_mode` have no version counter (and cannot change outside it)
        version = None if tensor.is_inference() else tensor._version
        return weakref.ref(tensor), version, tensor.dtype, tensor.device, tuple(tensor.shape)

    def matches(self, method: XMAdapter, state: CacheState) -> bool:
        tensors = self._inputs(method, state)
        if len(tensors) != len(self.described):
            return False
        for described, tensor in zip(self.described, tensors):
            if described[0]() is not tensor or described[1:] != self._describe(tensor)[1:]:
                return False
        return all(torch.equal(t, copy) for t, copy in zip(tensors[1:], self.values))
