"""Zero-shot CLIP (docs/methods.md): the floor every method must beat."""

from .. import functional as Fn
from .base import AdapterMethod, CacheState, MethodOutput, register_method

__all__ = ["ZeroShot"]


@register_method("zero-shot")
class ZeroShot(AdapterMethod):
    """Zero-shot CLIP: ``logits = s * f W^T``. Training-free; no field of its own."""

    colour = "#7f7f7f"  # tab10

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)  # (B, N)
        return MethodOutput(logits=zs, zero_shot_logits=zs)
