"""XMAdapter (Yang et al., ICME 2024; docs/methods.md): an image and a text cache, fused with an adaptive ratio."""

import dataclasses
import math
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict, validated_field
from torch import nn

from .. import functional as Fn
from ..validation import at_least, in_interval, one_of
from . import cache
from .base import CacheState, CacheTerm, MethodOutput, SearchSpace, adapter_linear, as_input_of, register_method
from .gda import GaussianStatistics, GDAFields
from .memo import Memo
from .tip_adapter import TipAdapterF, TipAdapterFFields, sharpness_validator

__all__ = ["TEXT_QUERIES", "XMAdapter", "XMAdapterFields"]

#: The query maps into the text space (`text_query`): the residual one (the default) and 0.1.0's independent one.
TEXT_QUERIES = ("residual", "independent")


@strict
@dataclass(kw_only=True)
class XMAdapterFields(TipAdapterFFields, GDAFields):
    r"""XMAdapter's fields of [`XMAdapterConfig`]: Tip-Adapter-F's, GDA's `gaussian_ratio` (the weight of the
    Gaussian term), and

    Args:
        text_sharpness (`float`, *optional*, defaults to 1.0):
            `beta_txt`, the text cache's sharpness, in (0, 100]. Searched on validation after (beta, alpha).
        text_dim (`int`, *optional*):
            `D`, the dimension of the shared text space. `None` = projection dim // 4.
        meta_reduction (`int`, *optional*, defaults to 16):
            `r`, MetaNet's bottleneck `C -> max(C / r, 8) -> C` (as CoCoOp's meta-net; at least 8 hidden units so that
            a tiny backbone's ReLUs cannot all be dead).
        use_text_cache (`bool`, *optional*, defaults to `True`):
            The text cache. `False` builds none of the text-side modules: XMAdapter is then Tip-Adapter-F.
        affinity_ratio_init (`float`, *optional*, defaults to 0.5):
            `gamma_0`, the initial weight of the image cache, in (0, 1).
        dynamic_affinity_ratio (`bool`, *optional*, defaults to `False`):
            `gamma = sigmoid(gamma_logit + gate(f))` with a linear gate on the query embedding.
        affinity_ratio_lr_multiplier (`float`, *optional*, defaults to 10.0):
            Learning-rate multiplier of the affinity-ratio logit (a single scalar barely moves at the base rate).
        text_query (`str`, *optional*, defaults to `"residual"`):
            The query map into the text space. `"residual"`: ``g = normalise(P_t f + Img2TxtNet(f))`` with
            Img2TxtNet's last layer zero-initialised, so that at step 0 the query is projected by the same map as the
            keys and the text cache is informative. `"independent"`: ``g = normalise(Img2TxtNet(f))``, the formula of
            0.1.0 (a saved config without this field loads with it, so its logits do not change).
        use_gaussian_term (`bool`, *optional*, defaults to `True`):
            Ours, not the paper's (docs/methods.md): adds GDA's Gaussian discriminant to the logits,
            ``+ alpha_g (f W_g^T + b)`` with ``alpha_g`` = `gaussian_ratio`, estimated in closed form from every
            augmented view of the support images (a shared, shrunk covariance: the whitening the cosine caches lack).
            The search chooses ``alpha_g`` first with the caches off, then the caches with a residual ratio of 0
            allowed, so the searched space contains GDA. `False` is the paper's formula (and a saved config without
            this field, written before it existed, loads with `False`, so its logits do not change).
    """

    text_sharpness: int | float = validated_field(
        sharpness_validator("text_sharpness"), default=1.0, metadata={"symbol": "beta_txt"}
    )
    text_dim: int | None = validated_field(at_least("text_dim", 1), default=None, metadata={"symbol": "D"})
    meta_reduction: int = validated_field(at_least("meta_reduction", 1), default=16)
    use_text_cache: bool = True
    affinity_ratio_init: int | float = validated_field(
        in_interval("affinity_ratio_init", 0.0, 1.0, low_open=True, high_open=True),
        default=0.5,
        metadata={"symbol": "gamma_0"},
    )
    dynamic_affinity_ratio: bool = False
    affinity_ratio_lr_multiplier: int | float = validated_field(
        in_interval("affinity_ratio_lr_multiplier", 0.0, math.inf, low_open=True, high_open=True), default=10.0
    )
    # A saved config without this field was written before it existed (0.1.0): its adapter keeps that formula.
    text_query: str = validated_field(
        one_of("text_query", TEXT_QUERIES), default="residual", metadata={"saved_without": "independent"}
    )
    # Ours (issue 24); a saved config without this field was written before it existed: its adapter keeps that formula.
    use_gaussian_term: bool = dataclasses.field(default=True, metadata={"saved_without": False})


@register_method("xmadapter")
class XMAdapter(GaussianStatistics, TipAdapterF):
    r"""XMAdapter: Tip-Adapter-F's learnable image cache plus a text cache in a shared low-dimensional space.

    ```
    t_i    = normalise(W[y_i] + MetaNet(E_i))        # E_i: the frozen initial cache embedding
    T      = normalise(P_t t_i)                       # (NK, D) text keys
    g      = normalise(P_t f + Img2TxtNet(f))         # (B, D) query; Img2TxtNet's last layer starts at zero
    gamma  = sigmoid(gamma_logit [+ gate(f)])
    logits = s f W^T + alpha * (gamma * A_img L + (1 - gamma) * A_txt L) [+ alpha_g (f W_g^T + b)]
    ```
    The last term is ours, not the paper's (`use_gaussian_term`, on by default for new models; docs/methods.md): GDA's
    Gaussian discriminant ([`GaussianStatistics`]: class means and a shared, shrunk covariance of every augmented
    view of the support, fixed buffers that `save_pretrained` writes), its weight ``alpha_g`` (`gaussian_ratio`)
    searched before the caches. With `use_gaussian_term=False` this is the paper's XMAdapter; with the text cache off
    too (`use_text_cache=False`) none of the text-side modules exist and it is exactly Tip-Adapter-F. Since ``L`` is
    linear, the fused cache logits are the fusion of the per-modality cache logits, which the output reports.

    The text keys depend on weights and buffers only. Without autograd they are remembered (`text_keys`, a [`Memo`]):
    kept in a buffer with a fingerprint of what they were built from, and rebuilt when the fingerprint changes, in
    eager mode and inside `torch.compile` alike. Recipe: Tip-Adapter-F's, the affinity-ratio logit at
    `affinity_ratio_lr_multiplier` times the learning rate.
    """

    colour = "#d62728"  # tab10
    config_fields = XMAdapterFields
    gaussian_required = False  # a support without spread leaves the term at zero (with a warning)

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        if config.use_gaussian_term:
            self.register_statistics(config.num_classes, embed_dim)
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
        residual = config.text_query == "residual"  # its last layer starts at zero: g starts as normalise(P_t f)
        self.img2txt = nn.Sequential(
            adapter_linear(embed_dim, text_dim), nn.ReLU(), adapter_linear(text_dim, text_dim, zero_init=residual)
        )
        self.affinity_ratio_logit = nn.Parameter(torch.tensor(0.0))
        self.affinity_gate = adapter_linear(embed_dim, 1, zero_init=True) if config.dynamic_affinity_ratio else None
        self.text_key_memo = Memo(config)  # the remembered text keys (never saved; float32 whatever the model's dtype)
        self.resize_cache(config.cache_size)  # sizes the memo
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

    def parameter_groups(self, learning_rate: float, weight_decay: float) -> list[dict]:
        ratio = [p for n, p in self.named_parameters() if n == "affinity_ratio_logit" and p.requires_grad]
        rest = [p for n, p in self.named_parameters() if n != "affinity_ratio_logit" and p.requires_grad]
        groups = [{"params": rest, "lr": learning_rate, "weight_decay": weight_decay}]
        if ratio:
            multiplier = self.config.affinity_ratio_lr_multiplier
            groups.append({"params": ratio, "lr": learning_rate * multiplier, "weight_decay": weight_decay})
        return groups

    # ----------------------------------------------------------------------------------------------- text keys
    @property
    def text_key_computations(self) -> int:
        """How often the text keys were computed in eager mode (the memo's count)."""
        return self.text_key_memo.computations if self.config.use_text_cache else 0

    def compute_text_keys(self, state: CacheState) -> torch.Tensor:
        """``T = normalise(P_t normalise(W[y] + MetaNet(E)))``, (NK, D) float32, always recomputed.

        MetaNet and ``P_t`` run in their weights' dtype; the sums and normalisations in float32. In chunks of entries:
        float32 (NK, C) intermediates of a 1.6M-entry cache would take 3 GiB each, the keys themselves (NK, D).
        """
        class_embeds = state.class_embeds.float()  # (N, C)
        chunk, keys = self.config.cache_chunk_size, []
        for start in range(0, state.cache_embeds.shape[0], chunk):
            entries = state.cache_embeds[start : start + chunk].float()  # (chunk, C)
            class_text = class_embeds[state.cache_labels[start : start + chunk]]  # (chunk, C)
            conditioned = Fn.l2_normalize(class_text + self.meta_net(as_input_of(self.meta_net, entries)).float())
            projected = self.text_projection(as_input_of(self.text_projection, conditioned))  # (chunk, D)
            keys.append(Fn.l2_normalize(projected.float()))
        return keys[0] if len(keys) == 1 else torch.cat(keys)  # (NK, D)

    def text_keys(self, state: CacheState) -> torch.Tensor:
        """The text keys `(NK, D)`: computed in the forward under autograd, remembered without it ([`Memo`]: reused
        while the text-side weights, ``W``, ``E`` and the labels are unchanged, which it checks at every call). Under
        `torch.export` (ONNX) they are computed in the graph, from constants."""
        return self.text_key_memo(self.compute_text_keys, state, self._text_side_weights())

    def _text_side_weights(self) -> list[torch.Tensor]:
        return [*self.meta_net.parameters(), *self.text_projection.parameters()]

    def resize_cache(self, num_entries: int) -> None:
        super().resize_cache(num_entries)
        if self.config.use_text_cache:
            keys = (num_entries, self.text_projection.out_features)
            self.text_key_memo.resize(keys, self._text_side_weights(), self.config.num_classes, num_entries)

    # --------------------------------------------------------------------------------------------- the query side
    def affinity_ratio(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``gamma`` per query, (B, 1), float32."""
        logit = self.affinity_ratio_logit.float().expand(image_embeds.shape[0], 1)
        if self.affinity_gate is not None:
            gate = self.affinity_gate(as_input_of(self.affinity_gate, image_embeds))  # (B, C) -> (B, 1)
            logit = logit + gate.float()
        return torch.sigmoid(logit)

    def query_text_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``g = normalise(P_t f + Img2TxtNet(f))`` (`text_query="residual"`) or ``normalise(Img2TxtNet(f))``
        (`"independent"`, 0.1.0), (B, C) -> (B, D) float32."""
        mapped = self.img2txt(as_input_of(self.img2txt, image_embeds.float())).float()
        if self.config.text_query == "residual":
            mapped = self.text_projection(as_input_of(self.text_projection, image_embeds.float())).float() + mapped
        return Fn.l2_normalize(mapped)

    # -------------------------------------------------------------------------------------------------- forward
    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        if not self.config.use_text_cache:
            return self._with_gaussian_term(super().forward(image_embeds, state), image_embeds)
        return self._fused_forward(image_embeds, state, self.text_keys(state), labels, cache_index)

    def _with_gaussian_term(self, output: MethodOutput, image_embeds: torch.Tensor) -> MethodOutput:
        """``output`` with ``alpha_g (f W_g^T + b)`` added to its logits (and its `gaussian_logits` set) when the
        Gaussian term is on."""
        if self.has_gaussian_term:
            output.gaussian_logits = self.gaussian_logits(image_embeds)  # (B, N)
            output.logits = output.logits + self.config.gaussian_ratio * output.gaussian_logits
        return output

    def export_constants(self, state: CacheState) -> dict[str, torch.Tensor]:
        """The text keys, computed once: inside `torch.export` they would be rebuilt at every call."""
        return {"text_keys": self.text_keys(state).detach()} if self.config.use_text_cache else {}

    def export_forward(self, image_embeds, state: CacheState, constants: dict[str, torch.Tensor]) -> MethodOutput:
        if not self.config.use_text_cache:
            return self(image_embeds, state)
        return self._fused_forward(image_embeds, state, constants["text_keys"])

    def _fused_forward(self, image_embeds, state: CacheState, text_keys, labels=None, cache_index=None):
        """The forward with both caches, given the text keys `(NK, D)`."""
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)  # (B, N)
        image_cache = self.image_cache_logits(image_embeds, state)  # (B, N)
        query = self.query_text_embeds(image_embeds)  # (B, D)
        text_cache = cache.cache_logits(
            query, text_keys, state.cache_labels, state.num_classes, self.config.text_sharpness,
            self.config.cache_chunk_size, shots=state.shots,
        )  # fmt: skip
        gamma = self.affinity_ratio(image_embeds)  # (B, 1)
        fused = Fn.fuse_affinities(image_cache, text_cache, gamma)  # fusing A then L == fusing A L (L is linear)
        logits = zs + self.config.residual_ratio * fused
        disagreement = None
        if labels is not None and self.config.hard_sample_strength > 0:
            if self.config.hard_sample_criterion == "disagreement":
                disagreement = self.disagreement(
                    image_embeds, query, text_keys, image_cache, text_cache, state, labels, cache_index
                )
        output = MethodOutput(logits, zs, fused, image_cache, text_cache, gamma.squeeze(-1), disagreement)
        return self._with_gaussian_term(output, image_embeds)

    def logit_parts(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        """Zero-shot, ``alpha gamma A_img L`` (the image cache), ``alpha (1 - gamma) A_txt L`` (the text cache) and
        ``alpha_g (f W_g^T + b)`` (the Gaussian term, when on)."""
        if not self.config.use_text_cache:
            parts = super().logit_parts(output)
        else:
            alpha, gamma = self.config.residual_ratio, output.affinity_ratio.float().unsqueeze(-1)  # (B, 1)
            parts = {
                "zero_shot": output.zero_shot_logits.float(),
                "image_cache": alpha * gamma * output.image_cache_logits.float(),
                "text_cache": alpha * (1 - gamma) * output.text_cache_logits.float(),
            }
        if self.has_gaussian_term and output.gaussian_logits is not None:
            parts["gaussian"] = self.config.gaussian_ratio * output.gaussian_logits.float()
        return parts

    @torch.no_grad()
    def disagreement(self, image_embeds, query, text_keys, image_cache, text_cache, state, labels, cache_index):
        """``d = |p_img[y] - p_txt[y]|`` with ``p = softmax(A L / tau)``; leave-one-out when ``cache_index`` is given.

        A training image is also a cache entry, so its own entry (affinity close to 1) is removed from both caches'
        class scores before comparing them. Entries with ``cache_index < 0`` are not in the cache.
        """
        image_cache, text_cache = image_cache.detach(), text_cache.detach()
        if cache_index is not None:
            labels_of = state.cache_labels
            image_cache = cache.remove_own_entries(
                image_cache, image_embeds, self.keys(state), labels_of, cache_index, self.config.sharpness,
                normalize_keys=self.normalizes_keys,
            )  # fmt: skip
            text_cache = cache.remove_own_entries(
                text_cache, query, text_keys, labels_of, cache_index, self.config.text_sharpness
            )
        tau = self.config.hard_sample_temperature
        valid = labels.clamp(min=0)[:, None]
        p_img = torch.softmax(image_cache / tau, dim=-1).gather(1, valid).squeeze(1)
        p_txt = torch.softmax(text_cache / tau, dim=-1).gather(1, valid).squeeze(1)
        return (p_img - p_txt).abs()

    @classmethod
    def searched_fields(cls, config) -> tuple[str, ...]:
        caches = (
            ("residual_ratio", "sharpness", "text_sharpness")
            if config.use_text_cache
            else ("residual_ratio", "sharpness")
        )
        return (("gaussian_ratio",) if config.use_gaussian_term else ()) + caches

    def search_space(self, image_embeds: torch.Tensor, state: CacheState) -> SearchSpace:
        """The Gaussian term's weight first with the caches off (when on), then the residual ratio (0 allowed when
        the Gaussian term is on) and the image cache's sharpness jointly, then the text cache's sharpness."""
        space = super().search_space(image_embeds, state)
        if self.has_gaussian_term:
            space.logit_terms.append(dataclasses.replace(self.gaussian_term(image_embeds, state), searched_first=True))
        if not self.config.use_text_cache:
            return space
        gamma = self.affinity_ratio(image_embeds).float()  # (M, 1)
        with Fn.full_precision(image_embeds):
            text_cosines = self.query_text_embeds(image_embeds) @ self.text_keys(state).t()  # (M, NK)
        space.terms[0].weight = gamma
        space.terms.append(CacheTerm(text_cosines, "text_sharpness", 1.0 - gamma))
        return space
