"""Multi-Modal Adapter (Seputis et al., 2024; docs/methods.md): attention over the class texts and the image."""

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict, validated_field
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import functional as Fn
from ..validation import at_least, in_interval, one_of
from .base import AdapterMethod, CacheState, MethodOutput, TrainingRecipe, as_input_of, register_method

__all__ = [
    "MMA_MASKS",
    "MMA_NUM_HEADS",
    "MultiModalAdapter",
    "MultiModalAdapterFields",
    "mma_attention_mask",
    "mma_dims",
]

#: Attention heads of the authors' code.
MMA_NUM_HEADS = 4
#: The attention masks `mma_mask` can name (see [`mma_attention_mask`]).
MMA_MASKS = ("additive", "cross-modal")


@strict
@dataclass(kw_only=True)
class MultiModalAdapterFields:
    r"""The Multi-Modal Adapter's fields of [`XMAdapterConfig`].

    Args:
        mma_blend (`float`, *optional*, defaults to 0.2):
            `lambda`, the blend `x' = normalise(lambda * adapter(x) + (1 - lambda) * x)`, in [0, 1].
        mma_mask (`str`, *optional*, defaults to `"additive"`):
            `additive` (the authors' code: a float 0/1 mask added to the attention scores, nothing blocked) or
            `cross-modal` (the image token sees all tokens; each text token sees itself and the image token).
        mma_chunk_size (`int`, *optional*, defaults to 32):
            Images per chunk of the attention (its memory grows as B * (N + 1)^2).
    """

    mma_blend: int | float = validated_field(
        in_interval("mma_blend", 0.0, 1.0), default=0.2, metadata={"symbol": "lambda"}
    )
    mma_mask: str = validated_field(one_of("mma_mask", MMA_MASKS), default="additive")
    mma_chunk_size: int = validated_field(at_least("mma_chunk_size", 1), default=32)


def mma_dims(embed_dim: int, num_heads: int = MMA_NUM_HEADS) -> tuple[int, int]:
    """The adapter's bottleneck and attention widths for a backbone of projection dim ``C``.

    The authors' code fixes 32 and 128 for C = 512 (ViT-B/16); we keep the ratios, ``C / 16`` and ``C / 4``, so
    that C = 768 gives (48, 192) and C = 1024 gives (64, 256). The attention width is rounded down to a multiple of
    ``num_heads`` (each head gets the same share) and both widths are at least ``num_heads`` (tiny backbones).

    Returns:
        `tuple[int, int]`: ``(bottleneck, attention_dim)``.
    """
    bottleneck = max(embed_dim // 16, num_heads)
    attention_dim = max((embed_dim // 4) // num_heads * num_heads, num_heads)
    return bottleneck, attention_dim


def mma_attention_mask(num_classes: int, kind: str, device: torch.device | str | None = None) -> torch.Tensor:
    """The (N+1, N+1) attention mask over the sequence ``[W_1, ..., W_N, f]`` (text tokens first, image last).

    Args:
        num_classes (`int`): ``N``.
        kind (`str`): `additive` (the authors' code): a float matrix with 1.0 on every text<->image pair and 0
            elsewhere. `nn.MultiheadAttention` *adds* a float mask to the scores, so this boosts text<->image
            attention by +1 and blocks nothing. `cross-modal`: a boolean mask (`True` = may not attend) where the
            image token attends to every token and each text token attends only to itself and the image token.
        device: where to build the mask.

    Returns:
        `torch.Tensor` of shape `(N+1, N+1)`: float32 for `additive`, bool for `cross-modal`.
    """
    n = num_classes
    if kind == "additive":
        mask = torch.zeros(n + 1, n + 1, device=device)
        mask[:n, n] = 1.0  # text queries -> image key
        mask[n, :n] = 1.0  # image query -> text keys
        return mask
    if kind == "cross-modal":
        blocked = ~torch.eye(n + 1, dtype=torch.bool, device=device)  # every token sees itself
        blocked[:, n] = False  # every token sees the image
        blocked[n, :] = False  # the image sees every token
        return blocked
    raise ValueError(f"`mma_mask` must be one of {', '.join(MMA_MASKS)}; got {kind!r}.")


@register_method("multimodal-adapter")
class MultiModalAdapter(AdapterMethod):
    r"""Multi-Modal Adapter: one attention layer over the N class text embeddings and the image embedding.

    For each image the sequence is ``x = [W_1, ..., W_N, f]`` ((N+1) tokens of C dims) and

    ```
    h            = MHA(Linear_2(Linear_1(x)), mask)         # C -> C/16 -> C/4; attention over the N+1 tokens
    adapter(x)   = Linear_4(GELU(Linear_3(h)))              # C/4 -> C/16 -> C
    x'           = normalise(lambda * normalise(adapter(x)) + (1 - lambda) * x)   # per token; lambda = mma_blend
    logits[b, n] = s * <f'_b, W'_{b,n}>                     # f' = x'[N], W'_b = x'[:N]
    ```
    so the text embeddings ``W'_b`` are adapted per image. The attention mask is `config.mma_mask` (see
    [`mma_attention_mask`]); the widths scale with ``C`` (see [`mma_dims`]).

    Memory: the sequence holds (N+1) tokens per image, so the activations grow as B * (N+1) * C and, where the
    attention kernel materialises its scores, as B * heads * (N+1)^2. The batch is processed in chunks of
    `mma_chunk_size` images; when gradients are recorded, each chunk is checkpointed (its activations are recomputed
    in backward), since chunking alone would still keep every chunk's activations alive for backward. Peak memory is
    then about one chunk's forward and backward.

    Note: the key bias of the attention's input projection gets no gradient (a per-query constant added to every
    score leaves the softmax unchanged); this is a property of attention, not of this implementation. In floats its
    gradient is rounding noise, which Adam (it divides by the gradient's own scale) would turn into steps of up to the
    learning rate, different from run to run: the noise is dropped (a gradient hook zeroes that slice).

    Recipe: the authors' Adam (weight decay added to the gradient) at lr 5e-3, weight decay 1e-4, constant rate, 200
    epochs, batch 256, the best validation epoch restored. Two departures (docs/accuracy.md): the training embeddings
    are drawn from augmented views (on plain 16-shot images the adapter memorised its 256 embeddings within ~15 epochs
    and stalled there), and all 200 epochs run (no early stopping at patience 20: on the demo task the best validation
    epoch came after a 20-epoch plateau on every seed tried, and the full run was better by about a point).

    Args:
        config ([`XMAdapterConfig`]): reads `mma_blend` (``lambda``), `mma_mask` and `mma_chunk_size`.
        embed_dim (`int`): ``C``, the backbone's projection dim.
    """

    colour = "#9467bd"  # tab10
    trainable = True
    config_fields = MultiModalAdapterFields
    # dqmis/clip-mma (notebooks/extension.ipynb, fomo/pipelines/train.py): Adam(lr 5e-3, weight decay 1e-4), the
    # scheduler call commented out (a constant rate), 200 epochs, batch 256, early stopping on validation accuracy with
    # patience 20 and the best checkpoint restored, CLIP's plain preprocessing (no augmentation). Departures
    # (docs/accuracy.md): augmented training embeddings (`augment=True`; plain 16-shot embeddings were memorised and
    # the run stalled: seed 0 of the demo task 49.8 test against 61.3 with views) and no early stopping (every epoch
    # runs; the best validation epoch is restored, `keep_best_epoch`): patience 20 stopped before the best epoch.
    recipe = TrainingRecipe(
        optimizer="adam",
        learning_rate=5e-3,
        eps=1e-8,
        weight_decay=1e-4,
        epochs=200,
        lr_scheduler_type="constant",
    )

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        bottleneck, attention_dim = mma_dims(embed_dim)
        # Plain `nn.Linear`s, not `adapter_linear`s: see `reset_own_parameters` for their initialisation.
        # The authors' down-sampler is two linear layers without an activation between them.
        self.downsampler = nn.Sequential(nn.Linear(embed_dim, bottleneck), nn.Linear(bottleneck, attention_dim))
        self.attention = nn.MultiheadAttention(attention_dim, MMA_NUM_HEADS, batch_first=True)
        keys = torch.zeros(3 * attention_dim, dtype=torch.bool)
        keys[attention_dim : 2 * attention_dim] = True  # in_proj_bias = [query bias, key bias, value bias]
        self.attention.in_proj_bias.register_hook(lambda grad: grad.masked_fill(keys.to(grad.device), 0.0))
        self.upsampler = nn.Sequential(
            nn.Linear(attention_dim, bottleneck), nn.GELU(), nn.Linear(bottleneck, embed_dim)
        )
        self.reset_own_parameters()

    def reset_own_parameters(self) -> None:
        """Initialises every layer as PyTorch does at construction, which is the authors' initialisation.

        Why not the model's normal(0, 0.02) for `adapter_linear`s: the adapter's output is L2-normalised, so its
        gradient scales as 1 / |adapter(x)|. Through four normal(0, 0.02) layers with zero biases |adapter(x)| is about
        1e-4 at C = 512 (gradients about 1e4 times larger and a different training regime from the authors' Adam at
        lr 5e-3), against about 2 with PyTorch's default init. The model's `_init_weights` calls this method, so the
        layers, the attention's `in_proj`/`out_proj` included, are initialised however the model was built (under
        transformers' `no_init_weights` the construction-time init is a no-op).
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):  # the attention's out_proj included: kaiming-uniform weight and bias
                module.reset_parameters()
        self.attention._reset_parameters()  # xavier-uniform in_proj; zero in_proj and out_proj biases, as torch does

    def adapt(
        self, image_embeds: torch.Tensor, class_embeds: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapted image and per-image text embeddings of one chunk.

        Args:
            image_embeds (`torch.Tensor` of shape `(b, C)`): normalised image embeddings ``f``.
            class_embeds (`torch.Tensor` of shape `(N, C)`): normalised class text embeddings ``W``.
            mask (`torch.Tensor` of shape `(N+1, N+1)`): from [`mma_attention_mask`].

        Returns:
            `tuple`: ``f'`` of shape `(b, C)` and ``W'`` of shape `(b, N, C)`, both normalised.
        """
        b, n = image_embeds.shape[0], class_embeds.shape[0]
        lam = self.config.mma_blend
        # The layers run in their weights' dtype (bf16 after `model.to(torch.bfloat16)`); the blend stays float32.
        # The text tokens are the same for every image until the attention mixes them in: project them once.
        text = self.downsampler(as_input_of(self.downsampler, class_embeds))  # (N, C) -> (N, A)
        image = self.downsampler(as_input_of(self.downsampler, image_embeds))  # (b, C) -> (b, A)
        hidden = torch.cat([text.unsqueeze(0).expand(b, -1, -1), image.unsqueeze(1)], dim=1)  # (b, N+1, A)
        hidden = as_input_of(self.attention, hidden)
        mask = mask.to(hidden.dtype) if mask.is_floating_point() else mask  # an additive mask matches the scores
        hidden, _ = self.attention(hidden, hidden, hidden, attn_mask=mask, need_weights=False)  # (b, N+1, A)
        delta = Fn.l2_normalize(self.upsampler(as_input_of(self.upsampler, hidden)))  # (b, N+1, C), float32
        # Blend with the inputs by broadcasting, so the (b, N, C) copies of W are never materialised.
        adapted_text = Fn.l2_normalize(lam * delta[:, :n] + (1.0 - lam) * class_embeds)  # (b, N, C)
        adapted_image = Fn.l2_normalize(lam * delta[:, n] + (1.0 - lam) * image_embeds)  # (b, C)
        return adapted_image, adapted_text

    def _chunk_cosines(
        self, image_embeds: torch.Tensor, class_embeds: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        image, text = self.adapt(image_embeds, class_embeds, mask)
        with Fn.full_precision(image):  # the cosines stay float32 under autocast, like the other methods' logits
            return torch.bmm(text.float(), image.float().unsqueeze(-1)).squeeze(-1)  # (b, N, C) @ (b, C, 1) -> (b, N)

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        return self._forward(image_embeds, state, self.config.mma_chunk_size)

    def export_forward(self, image_embeds, state: CacheState, constants: dict[str, torch.Tensor]) -> MethodOutput:
        """The whole batch at once: the loop over chunks of it would make `torch.export` fix the batch size. The mask
        is built in the graph (as a constant it would take (N+1)^2 floats: 400 MB at N = 10k)."""
        return self._forward(image_embeds, state, None)

    def _forward(self, image_embeds, state: CacheState, chunk: int | None) -> MethodOutput:
        """The forward over chunks of ``chunk`` images (`None`: the whole batch in one)."""
        image = image_embeds.float()  # (B, C)
        class_embeds = Fn.l2_normalize(state.class_embeds.float())  # (N, C)
        zs = Fn.zero_shot_logits(image, class_embeds, state.logit_scale)  # (B, N)
        mask = mma_attention_mask(class_embeds.shape[0], self.config.mma_mask, device=image.device)
        if chunk is None:
            cosines = self._chunk_cosines(image, class_embeds, mask)  # (B, N)
            return MethodOutput(logits=state.logit_scale * cosines, zero_shot_logits=zs)
        # Without checkpointing, every chunk's activations would stay alive until backward: no memory saved.
        trainable = any(p.requires_grad for p in self.parameters())
        recompute = torch.is_grad_enabled() and trainable and image.shape[0] > chunk
        parts = []
        for start in range(0, image.shape[0], chunk):
            part = image[start : start + chunk]  # (b, C)
            if recompute:
                parts.append(checkpoint(self._chunk_cosines, part, class_embeds, mask, use_reentrant=False))
            else:
                parts.append(self._chunk_cosines(part, class_embeds, mask))
        return MethodOutput(logits=state.logit_scale * torch.cat(parts, dim=0), zero_shot_logits=zs)  # (B, N)
