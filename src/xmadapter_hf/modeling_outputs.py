"""`XMAdapterImageClassifierOutput`: what `XMAdapterForImageClassification.forward` returns.

The fields of a method's [`~xmadapter_hf.methods.MethodOutput`] under the same names (a mechanical mapping), plus the
loss and the normalised image embeddings the adapter saw.
"""

import dataclasses
from dataclasses import dataclass

import torch
from transformers.modeling_outputs import ImageClassifierOutput

from .methods import MethodOutput

__all__ = ["METHOD_OUTPUT_FIELDS", "XMAdapterImageClassifierOutput"]

#: A method's output fields, which the model's output carries under the same names.
METHOD_OUTPUT_FIELDS = tuple(field.name for field in dataclasses.fields(MethodOutput))


@dataclass
class XMAdapterImageClassifierOutput(ImageClassifierOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*):
        ``sum_i(w_i * CE_i) / n_items`` when `labels` are given.
    logits (`torch.FloatTensor` of shape `(B, N)`):
        The method's final logits.
    zero_shot_logits (`torch.FloatTensor` of shape `(B, N)`):
        ``s * f W^T``, zero-shot CLIP's logits.
    cache_logits (`torch.FloatTensor` of shape `(B, N)`, *optional*):
        The (fused) cache term ``A L`` before the residual ratio: ``logits = zero_shot_logits + alpha *
        cache_logits`` for the cache methods; `None` for methods without a cache.
    image_cache_logits (`torch.FloatTensor` of shape `(B, N)`, *optional*):
        ``A_img L``, the image cache's contribution.
    text_cache_logits (`torch.FloatTensor` of shape `(B, N)`, *optional*):
        ``A_txt L``, XMAdapter's text cache's contribution.
    affinity_ratio (`torch.FloatTensor` of shape `(B,)`, *optional*):
        XMAdapter's ``gamma`` per image (the weight of the image cache).
    disagreement (`torch.FloatTensor` of shape `(B,)`, *optional*):
        XMAdapter's cross-modal disagreement ``d`` (training with labels and `hard_sample_strength > 0`).
    gaussian_logits (`torch.FloatTensor` of shape `(B, N)`, *optional*):
        GDA's Gaussian discriminant ``f W_g^T + b`` before its weight: ``logits = zero_shot_logits + alpha *
        gaussian_logits``; `None` for the other methods.
    image_embeds (`torch.FloatTensor` of shape `(B, C)`):
        The normalised image embeddings the adapter saw.
    """

    zero_shot_logits: torch.FloatTensor | None = None
    cache_logits: torch.FloatTensor | None = None
    image_cache_logits: torch.FloatTensor | None = None
    text_cache_logits: torch.FloatTensor | None = None
    affinity_ratio: torch.FloatTensor | None = None
    disagreement: torch.FloatTensor | None = None
    gaussian_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
