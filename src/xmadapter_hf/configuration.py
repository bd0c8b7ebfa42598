"""`XMAdapterConfig`: every hyperparameter of every method, under the names of docs/methods.md."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import field
from typing import Any

from transformers import PreTrainedConfig

from . import __version__

__all__ = ["METHODS", "XMAdapterConfig"]

#: The methods this library ships; `config.method` may also name any method registered with `register_method`.
METHODS = ("zero-shot", "tip-adapter", "tip-adapter-f", "clip-adapter", "multimodal-adapter", "xmadapter")
#: Every output field but the final logits: `Trainer.evaluate`/`predict` then gather the logits alone as
#: `predictions` (what the image-classification guide's `compute_metrics` expects); calling the model still returns
#: them all.
OUTPUTS_IGNORED_AT_INFERENCE = [
    "zero_shot_logits", "cache_logits", "image_cache_logits", "text_cache_logits", "affinity_ratio", "disagreement",
    "image_embeds",
]  # fmt: skip
_MMA_MASKS = ("additive", "cross-modal")
_HARD_SAMPLE_CRITERIA = ("disagreement", "focal")
_CACHE_DTYPES = ("float32", "float16", "bfloat16")
#: Sharpness above this makes exp(-beta * (1 - cos)) underflow to 0 in float32 for dissimilar entries.
MAX_SHARPNESS = 100.0


def _method_class(name: str):
    """The registered method class named ``name``; `ValueError` listing the registered names otherwise."""
    from .methods.base import get_method_class  # the registry imports this module: look it up at call time

    return get_method_class(name)


def _check_type(name: str, value: Any, types: tuple[type, ...], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    # bool is an int subclass: a flag given where a number is expected (or the reverse) is a mistake
    if isinstance(value, bool) and bool not in types:
        raise TypeError(f"`{name}` must be of type {'/'.join(t.__name__ for t in types)}, got bool ({value!r}).")
    if not isinstance(value, types):
        expected = "/".join(t.__name__ for t in types) + (" or None" if allow_none else "")
        raise TypeError(f"`{name}` must be of type {expected}, got {type(value).__name__} ({value!r}).")


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = True, high_open: bool = False):
    if value is None:
        return
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")
        raise ValueError(f"`{name}` must lie in {interval}, got {value!r}.")


class XMAdapterConfig(PreTrainedConfig):
    r"""
    Configuration of [`XMAdapterForImageClassification`]: which method runs on top of the frozen CLIP backbone and
    all of its hyperparameters. Field names follow docs/methods.md; `class_names` is authoritative and `id2label`,
    `label2id` and `num_labels` are derived from it.

    Args:
        method (`str`, *optional*, defaults to `"xmadapter"`):
            One of `zero-shot`, `tip-adapter`, `tip-adapter-f`, `clip-adapter`, `multimodal-adapter`, `xmadapter`, or
            a method registered with [`~xmadapter_hf.register_method`] (validated through the registry).
        class_names (`list[str]`, *optional*, defaults to `[]`):
            The class names, in label order. Must be non-empty and unique to build a model.
        prompt_templates (`list[str]`, *optional*, defaults to `["a photo of a {}."]`):
            Prompt templates, each containing `{}`; class text embeddings average over them.
        logit_scale (`float`, *optional*):
            `s`, the zero-shot logit scale. `None` uses the backbone's `logit_scale.exp()` (100 for OpenAI CLIP).
        residual_ratio (`float`, *optional*, defaults to 1.0):
            `alpha`, the weight of the cache logits: `logits = zero_shot + alpha * A L`.
        sharpness (`float`, *optional*, defaults to 1.0):
            `beta`, image-cache sharpness in `exp(-beta * (1 - f F^T))`, in (0, 100].
        text_sharpness (`float`, *optional*, defaults to 1.0):
            `beta_txt`, the text cache's sharpness (XMAdapter), in (0, 100].
        text_dim (`int`, *optional*):
            `D`, the dimension of XMAdapter's shared text space. `None` = projection dim // 4.
        meta_reduction (`int`, *optional*, defaults to 16):
            `r`, MetaNet's bottleneck `C -> max(C/r, 8) -> C` (as CoCoOp's meta-net; at least 8 hidden units so that
            a tiny backbone's ReLUs cannot all be dead).
        use_text_cache (`bool`, *optional*, defaults to `True`):
            XMAdapter's text cache. `False` builds none of the text-side modules and reduces XMAdapter to
            Tip-Adapter-F.
        affinity_ratio_init (`float`, *optional*, defaults to 0.5):
            `gamma_0`, the initial affinity ratio between the image and the text cache, in (0, 1).
        dynamic_affinity_ratio (`bool`, *optional*, defaults to `False`):
            When `True`, `gamma = sigmoid(gamma_logit + gate(f))` with a linear gate on the query embedding.
        affinity_ratio_lr_multiplier (`float`, *optional*, defaults to 10.0):
            Learning-rate multiplier of the affinity-ratio logit (a single scalar barely moves at the base rate).
        hard_sample_strength (`float`, *optional*):
            `lambda_hard`; per-item loss weights `1 + lambda_hard * d`. `0` switches the weighting off. `None`
            resolves to 1.0 for `xmadapter` with its text cache and to 0.0 otherwise.
        hard_sample_temperature (`float`, *optional*, defaults to 1.0):
            `tau`, the temperature of `p_img = softmax(A_img L / tau)` and `p_txt`.
        hard_sample_criterion (`str`, *optional*, defaults to `"disagreement"`):
            `disagreement`: `d = |p_img[y] - p_txt[y]|` (needs the text cache); `focal`: `d = (1 - p[y]) ** k`
            with `p` the softmax of the final logits.
        hard_sample_focal_power (`float`, *optional*, defaults to 2.0):
            `k` of the `focal` criterion.
        normalize_keys (`bool`, *optional*, defaults to `False`):
            Renormalise learned cache keys in forward. The reference Tip-Adapter-F does not (its keys are a linear
            layer), so affinities may exceed 1 after training; `True` keeps them in (0, 1].
        clip_adapter_ratio (`float`, *optional*, defaults to 0.2):
            `r_clip`, CLIP-Adapter's residual blend `f' = r * MLP(f) + (1 - r) * f`, in [0, 1].
        clip_adapter_reduction (`int`, *optional*, defaults to 4):
            CLIP-Adapter's bottleneck `C -> C/4 -> C`.
        mma_blend (`float`, *optional*, defaults to 0.2):
            `lambda_mma`, the Multi-Modal Adapter's blend, in [0, 1].
        mma_mask (`str`, *optional*, defaults to `"additive"`):
            `additive` (the authors' code: a float 0/1 mask added to the attention scores, nothing blocked) or
            `cross-modal` (the image token sees all tokens; each text token sees itself and the image token).
        mma_chunk_size (`int`, *optional*, defaults to 32):
            Images per chunk in the Multi-Modal Adapter's attention (its memory grows as B * (N + 1)^2).
        cache_size (`int`, *optional*, defaults to 0):
            `NK`, the number of cache entries; fixes the shapes of the cache parameters. Set by `build_cache`.
        cache_chunk_size (`int`, *optional*, defaults to 8192):
            Cache entries per chunk when computing affinities, so that memory stays bounded for huge caches. The
            temporaries are a few (B, chunk) float32 tensors; 8192 keeps them small enough to be reused by the CPU
            allocator (65536 was twice as slow on a 1.6M-entry cache at B = 256, page-faulting fresh 64 MB buffers).
        cache_dtype (`str`, *optional*, defaults to `"float32"`):
            Storage dtype of the frozen cache tensors (`float32`, `float16`, `bfloat16`); the maths stays float32.
            It decides what `save_pretrained` writes for the cache (`cache_embeds`, and the learned keys after
            `half_cache()`; every other floating tensor is written in float32). In memory, a `dtype` given to
            `from_pretrained` (or `model.to(dtype)`) wins: the whole model is cast to it, the cache included.
        augment_views (`int`, *optional*, defaults to 10):
            Augmented views per image averaged into the cache keys (recorded by `build_cache`); 0 = the plain view.
        shots (`int`, *optional*):
            `K`, images per class in the cache (recorded by `build_cache`).
        seed (`int`, *optional*):
            The seed of the adapter's initial weights (`None` = 0) and of the cache's augmentation draws (recorded
            by `build_cache`).
        search_result (`dict`, *optional*):
            What the last validation search chose and measured (values, grid, validation size, accuracy).
        evaluation (`dict`, *optional*):
            Metrics of the last evaluation, shown on the model card.
        base_model_name_or_path (`str`, *optional*):
            The backbone to load (a Hub id or a local path).
        base_model_revision (`str`, *optional*):
            The backbone's revision (a commit sha pins it).
        projection_dim (`int`, *optional*):
            `C`, the backbone's projection dim; checked on load.
        backbone_config (`dict`, *optional*):
            The backbone's architecture: its config's non-default entries with its `model_type` (for CLIP, the
            `CLIPConfig`). `XMAdapterForImageClassification(config)` and `AutoModelForImageClassification.from_config`
            build a randomly initialised backbone from it; `from_pretrained` always loads the real one. Recorded by
            `from_clip`; `None` in configs written by version 0.1.0.
        backbone_fingerprint (`dict`, *optional*):
            What identifies the backbone (architecture hash); checked on load together with the stored probe
            embeddings of a fixed text and a fixed image.
        xmadapter_version (`str`, *optional*):
            The library version that wrote this config (stamped on save).
        save_id (`str`, *optional*):
            A fresh id written by every `save_pretrained` into both the config and the weights' metadata; a load
            whose two files disagree (an interrupted save) is refused.
    """

    model_type = "xmadapter"
    has_no_defaults_at_init = True
    keys_to_ignore_at_inference = OUTPUTS_IGNORED_AT_INFERENCE

    method: str = "xmadapter"
    class_names: list[str] = field(default_factory=list)
    prompt_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    logit_scale: float | None = None
    residual_ratio: float = 1.0
    sharpness: float = 1.0
    text_sharpness: float = 1.0
    text_dim: int | None = None
    meta_reduction: int = 16
    use_text_cache: bool = True
    affinity_ratio_init: float = 0.5
    dynamic_affinity_ratio: bool = False
    affinity_ratio_lr_multiplier: float = 10.0
    hard_sample_strength: float | None = None
    hard_sample_temperature: float = 1.0
    hard_sample_criterion: str = "disagreement"
    hard_sample_focal_power: float = 2.0
    normalize_keys: bool = False
    clip_adapter_ratio: float = 0.2
    clip_adapter_reduction: int = 4
    mma_blend: float = 0.2
    mma_mask: str = "additive"
    mma_chunk_size: int = 32
    cache_size: int = 0
    cache_chunk_size: int = 8192
    cache_dtype: str = "float32"
    augment_views: int = 10
    shots: int | None = None
    seed: int | None = None
    search_result: dict | None = None
    evaluation: dict | None = None
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    projection_dim: int | None = None
    backbone_config: dict | None = None
    backbone_fingerprint: dict | None = None
    xmadapter_version: str | None = None
    save_id: str | None = None

    def __post_init__(self, **kwargs):
        # Validate and derive the label maps before the parent constructor sees them.
        self._validate_fields()
        num_labels = kwargs.pop("num_labels", None)
        self._derive_labels(num_labels)
        if self.hard_sample_strength is None:
            measures = _method_class(self.method).measures_disagreement(self)
            self.hard_sample_strength = 1.0 if measures and self.hard_sample_criterion == "disagreement" else 0.0
        self._validate_combinations()
        if self.xmadapter_version is None:
            self.xmadapter_version = __version__
        super().__post_init__(**kwargs)

    # ----------------------------------------------------------------------------------------------- validation
    def _validate_fields(self) -> None:
        _check_type("method", self.method, (str,))
        _method_class(self.method)  # raises for a name the registry does not know
        _check_type("class_names", self.class_names, (list, tuple))
        for name in self.class_names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"`class_names` must hold non-empty strings; got {name!r}.")
        # a Counter, not list.count per name: quadratic in N, that takes hours for 100k class names
        duplicates = sorted(name for name, count in Counter(self.class_names).items() if count > 1)
        if duplicates:
            raise ValueError(f"`class_names` must be unique; duplicated: {duplicates}.")
        self.class_names = list(self.class_names)
        _check_type("prompt_templates", self.prompt_templates, (list, tuple))
        if not self.prompt_templates:
            raise ValueError("`prompt_templates` must hold at least one template containing '{}'.")
        for template in self.prompt_templates:
            if not isinstance(template, str) or "{}" not in template:
                raise ValueError(f"`prompt_templates` entries must be strings containing '{{}}'; got {template!r}.")
        self.prompt_templates = list(self.prompt_templates)
        for name in ("use_text_cache", "dynamic_affinity_ratio", "normalize_keys"):
            _check_type(name, getattr(self, name), (bool,))
        number = (int, float)
        _check_type("logit_scale", self.logit_scale, number, allow_none=True)
        _check_range("logit_scale", self.logit_scale, 0.0, math.inf, high_open=True)
        _check_type("residual_ratio", self.residual_ratio, number)
        _check_range("residual_ratio", self.residual_ratio, 0.0, math.inf, low_open=False, high_open=True)
        for name in ("sharpness", "text_sharpness"):
            _check_type(name, getattr(self, name), number)
            _check_range(name, getattr(self, name), 0.0, MAX_SHARPNESS)
        _check_type("affinity_ratio_init", self.affinity_ratio_init, number)
        _check_range("affinity_ratio_init", self.affinity_ratio_init, 0.0, 1.0, high_open=True)
        for name in ("affinity_ratio_lr_multiplier", "hard_sample_temperature", "hard_sample_focal_power"):
            _check_type(name, getattr(self, name), number)
            _check_range(name, getattr(self, name), 0.0, math.inf, high_open=True)
        _check_type("hard_sample_strength", self.hard_sample_strength, number, allow_none=True)
        _check_range("hard_sample_strength", self.hard_sample_strength, 0.0, math.inf, low_open=False, high_open=True)
        for name in ("clip_adapter_ratio", "mma_blend"):
            _check_type(name, getattr(self, name), number)
            _check_range(name, getattr(self, name), 0.0, 1.0, low_open=False)
        for name in ("meta_reduction", "clip_adapter_reduction", "mma_chunk_size", "cache_chunk_size"):
            _check_type(name, getattr(self, name), (int,))
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)!r}.")
        for name in ("text_dim", "projection_dim", "shots"):
            _check_type(name, getattr(self, name), (int,), allow_none=True)
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer or None, got {getattr(self, name)!r}.")
        for name in ("cache_size", "augment_views"):
            _check_type(name, getattr(self, name), (int,))
        if self.cache_size < 0:
            raise ValueError(f"`cache_size` must be >= 0, got {self.cache_size!r}.")
        if self.augment_views < 0:
            raise ValueError(f"`augment_views` must be >= 0 (0 = no augmentation), got {self.augment_views!r}.")
        _check_type("seed", self.seed, (int,), allow_none=True)
        for name, allowed in (
            ("mma_mask", _MMA_MASKS),
            ("hard_sample_criterion", _HARD_SAMPLE_CRITERIA),
            ("cache_dtype", _CACHE_DTYPES),
        ):
            _check_type(name, getattr(self, name), (str,))
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {', '.join(allowed)}; got {getattr(self, name)!r}.")
        for name in ("base_model_name_or_path", "base_model_revision", "xmadapter_version", "save_id"):
            _check_type(name, getattr(self, name), (str,), allow_none=True)
        for name in ("search_result", "evaluation", "backbone_config", "backbone_fingerprint"):
            _check_type(name, getattr(self, name), (dict,), allow_none=True)

    def _derive_labels(self, num_labels: int | None) -> None:
        derived = dict(enumerate(self.class_names))
        if self.id2label is not None:
            given = {int(k): v for k, v in self.id2label.items()}
            if not self.class_names:  # a config written by hand with only id2label: take the names from it
                if sorted(given) != list(range(len(given))):
                    raise ValueError(f"`id2label` keys must be 0..N-1; got {sorted(given)}.")
                self.class_names = [given[i] for i in range(len(given))]
                self._validate_fields()
                derived = dict(enumerate(self.class_names))
            elif given != derived:
                raise ValueError(
                    f"`id2label` contradicts `class_names` (which is authoritative): expected {derived}, got {given}."
                )
        if self.label2id is not None:
            given = {str(k): int(v) for k, v in self.label2id.items()}
            expected = {name: i for i, name in derived.items()}
            if given != expected:
                raise ValueError(f"`label2id` contradicts `class_names`: expected {expected}, got {given}.")
        if num_labels is not None and num_labels != len(self.class_names):
            raise ValueError(f"`num_labels` ({num_labels}) must equal len(class_names) ({len(self.class_names)}).")
        self.id2label = derived
        self.label2id = {name: i for i, name in derived.items()}

    def _validate_combinations(self) -> None:
        if self.hard_sample_strength == 0:
            return
        method = _method_class(self.method)
        if not method.trainable:
            raise ValueError(
                f"`hard_sample_strength` must be 0 for the training-free method {self.method!r}; "
                f"got {self.hard_sample_strength!r}."
            )
        if self.hard_sample_criterion == "disagreement" and not method.measures_disagreement(self):
            raise ValueError(
                "`hard_sample_strength` > 0 with `hard_sample_criterion='disagreement'` needs XMAdapter's text "
                "cache (d compares the image- and text-cache predictions): set `use_text_cache=True`, "
                "`hard_sample_strength=0`, or `hard_sample_criterion='focal'`."
            )

    # -------------------------------------------------------------------------------------------------- helpers
    @property
    def num_classes(self) -> int:
        """`N`, the number of classes (`len(class_names)`)."""
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["xmadapter_version"] = __version__  # stamped on every save
        return output
