"""`XMAdapterConfig`: the fields every adapter shares, plus the fields of every registered method.

The config is a `huggingface_hub.dataclasses.strict` dataclass, as transformers 5 configs are: each field has a type
and validators, checked at construction *and* at every assignment (`config.sharpness = "x"` raises). The fields of a
method are declared by the method (its `config_fields`, a strict dataclass in its own file under `methods/`) and
validated through the method registry the same way, so that a method registered with `register_method` is a
first-class method of the config.

This module has no `from __future__ import annotations`: `strict` validates against the annotations, and a string
annotation is not checked at all.
"""

import copy
import dataclasses
import types
import typing
from collections import Counter
from typing import Any

from huggingface_hub.dataclasses import strict, type_validator, validated_field
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers import PreTrainedConfig

from . import __version__
from .methods import get_method_class, method_config_fields
from .selection import AUTO, is_pending
from .validation import at_least, in_interval, one_of

__all__ = ["ConfigTypeError", "ConfigValueError", "XMAdapterConfig"]

#: Every output field but the final logits: `Trainer.evaluate`/`predict` then gather the logits alone as
#: `predictions` (what the image-classification guide's `compute_metrics` expects); calling the model still returns
#: them all.
OUTPUTS_IGNORED_AT_INFERENCE = [
    "zero_shot_logits", "cache_logits", "image_cache_logits", "text_cache_logits", "affinity_ratio", "disagreement",
    "gaussian_logits", "image_embeds",
]  # fmt: skip
HARD_SAMPLE_CRITERIA = ("disagreement", "focal")
CACHE_DTYPES = ("float32", "float16", "bfloat16")


class ConfigValueError(StrictDataclassFieldValidationError, ValueError):
    """A config field given a value it does not allow (both `huggingface_hub`'s strict error and a `ValueError`)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


class ConfigTypeError(StrictDataclassFieldValidationError, TypeError):
    """A config field given a value of the wrong type (both `huggingface_hub`'s strict error and a `TypeError`)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


class ConfigCombinationError(StrictDataclassClassValidationError, ValueError):
    """Config fields that do not go together (both `huggingface_hub`'s strict error and a `ValueError`)."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


def _field_error(name: str, value: Any, annotation: Any, cause: Exception) -> Exception:
    """Our error for a failed field validator: the type error names the field and the expected type."""
    if isinstance(cause, TypeError):
        kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
        names = ["None" if kind is type(None) else getattr(kind, "__name__", str(kind)) for kind in kinds]
        expected = " or ".join(names)
        return ConfigTypeError(f"`{name}` must be of type {expected}, got {type(value).__name__} ({value!r:.80}).")
    message = str(cause)
    return ConfigValueError(message if f"`{name}`" in message else f"`{name}`: {message}")


def _python_errors(cls):
    """`strict` raises `StrictDataclass*ValidationError`, which is neither a `ValueError` nor a `TypeError`; this
    library's errors are (docs/errors.md), so the config re-raises them as exceptions that are both."""
    strict_setattr, strict_validate = cls.__setattr__, cls.validate
    annotations = {field.name: field.type for field in dataclasses.fields(cls)}

    def __setattr__(self, name, value):
        try:
            strict_setattr(self, name, value)
        except StrictDataclassFieldValidationError as error:
            if isinstance(error, (ConfigValueError, ConfigTypeError)):
                raise
            raise _field_error(name, value, annotations.get(name), error.__cause__) from error.__cause__

    def validate(self):
        try:
            strict_validate(self)
        except StrictDataclassClassValidationError as error:
            if isinstance(error, ConfigCombinationError) or error.__cause__ is None:
                raise
            raise ConfigCombinationError(str(error.__cause__)) from error.__cause__

    cls.__setattr__, cls.validate = __setattr__, validate
    return cls


def _registered(value: str) -> None:
    if value == AUTO:  # chosen on validation by `fit` (selection.py)
        return
    try:
        get_method_class(value)
    except ValueError as error:  # the registered methods, and "auto"
        raise ValueError(f"{error} Or 'auto': `fit` chooses the method on a validation split.") from None


def _class_names(value: list) -> None:
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"`class_names` must hold non-empty strings; got {name!r}.")
    # a Counter, not list.count per name: quadratic in N, that takes hours for 100k class names
    duplicates = sorted(name for name, count in Counter(value).items() if count > 1)
    if duplicates:
        raise ValueError(f"`class_names` must be unique; duplicated: {duplicates}.")


def _templates(value: list) -> None:
    if not value:
        raise ValueError("`prompt_templates` must hold at least one template containing '{}'.")
    for template in value:
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"`prompt_templates` entries must be strings containing '{{}}'; got {template!r}.")


def _positive(name: str):
    return in_interval(name, 0.0, float("inf"), low_open=True, high_open=True)


@_python_errors
@strict
class XMAdapterConfig(PreTrainedConfig):
    r"""
    Configuration of [`XMAdapterForImageClassification`]: which method runs on top of the frozen CLIP backbone and
    its hyperparameters (docs/methods.md names them). `class_names` is authoritative: `id2label`, `label2id` and
    `num_labels` are derived from it. Besides the fields below, every registered method's fields are fields of the
    config (`XMAdapterConfig.method_fields()`; each documented in its method's file), validated the same way.

    Args:
        method (`str`, *optional*, defaults to `"xmadapter"`):
            A method of the registry (`xmadapter_hf.registered_methods()`), including one registered with
            [`~xmadapter_hf.register_method`]; or `"auto"`: `fit` fits every candidate method and keeps the one with
            the best validation accuracy (docs/training.md), which then is `method`.
        class_names (`list[str]`, *optional*, defaults to `[]`):
            The class names, in label order. Must be non-empty and unique to build a model.
        prompt_templates (`list[str]`, *optional*, defaults to `["a photo of a {}."]`):
            Prompt templates, each containing `{}`; class text embeddings average over them.
        logit_scale (`float`, *optional*):
            `s`, the zero-shot logit scale. `None` uses the backbone's `logit_scale.exp()` (100 for OpenAI CLIP).
        hard_sample_strength (`float`, *optional*):
            `lambda_hard`; per-item loss weights `1 + lambda_hard * d`. `0` switches the weighting off. `None` resolves
            to 1.0 for a method that measures the cross-modal disagreement (XMAdapter with its text cache), else 0.
        hard_sample_temperature (`float`, *optional*, defaults to 1.0):
            `tau`, the temperature of `p_img = softmax(A_img L / tau)` and `p_txt`.
        hard_sample_criterion (`str`, *optional*, defaults to `"disagreement"`):
            `disagreement`: `d = |p_img[y] - p_txt[y]|` (the method must measure it); `focal`: `d = (1 - p[y]) ** k`
            with `p` the softmax of the final logits (any trainable method).
        hard_sample_focal_power (`float`, *optional*, defaults to 2.0):
            `k` of the `focal` criterion.
        cache_size (`int`, *optional*, defaults to 0):
            `NK`, the number of cache entries; fixes the shapes of cache-shaped tensors. Set by `build_cache`.
        cache_chunk_size (`int`, *optional*, defaults to 2048):
            Cache entries per chunk of the affinity maths: memory stays bounded for huge caches, and a chunk's
            (B, chunk) affinities are reduced while they are in the CPU's cache (at B = 1024, NK = 160k
            Tip-Adapter's head costs 1.0-1.13x its matmul in CPU time; docs/benchmarks.md). Configs of 0.1.0
            record 8192.
        cache_dtype (`str`, *optional*, defaults to `"float32"`):
            Storage dtype of the frozen cache (`float32`, `float16`, `bfloat16`); the maths stays float32. It decides
            what `save_pretrained` writes for the cache (`cache_embeds`, and the learned keys after `half_cache()`);
            in memory a `dtype` given to `from_pretrained` (or `model.to(dtype)`) wins.
        augment_views (`int`, *optional*, defaults to 10):
            Augmented views per image averaged into the cache keys (recorded by `build_cache`); 0 = the plain view.
        shots (`int`, *optional*):
            `K`, images per class in the cache when every class has K (recorded by `build_cache`).
        classes_added (`int`, *optional*, defaults to 0):
            How many classes `add_classes` appended after the adapter was built (and, for a trainable method, trained):
            the last `classes_added` classes were never trained on.
        seed (`int`, *optional*):
            The seed of the adapter's initial weights (`None` = 0), of the cache's augmentation draws (recorded by
            `build_cache`) and the default training seed.
        search_result (`dict`, *optional*):
            What the last validation search chose and measured (values, grid, validation size, accuracy).
        method_selection (`dict`, *optional*):
            How `fit` chose `method` for a model built with `method="auto"`: the rule, the candidates and the
            validation table (each candidate's validation accuracy and NLL, or why it was skipped). `None`: the
            method was given.
        evaluation (`dict`, *optional*):
            Metrics of the last evaluation, shown on the model card.
        temperature (`float`, *optional*):
            `T` of the scores `softmax(logits / T)` that `xmadapter predict` and `XMAdapterImageClassificationPipeline`
            show; fitted by `fit` on the validation split after its final search (`xmadapter_hf.calibration`).
            `None` = not fitted: `T = 1`, the raw softmax, which saturates at 100 %/0 % for searched residual ratios.
            It never changes the logits, their argmax or training. `set_cache` resets it (it was fitted for another
            cache); `add_classes` keeps it (the logits' scale is unchanged).
        base_model_name_or_path (`str`, *optional*), base_model_revision (`str`, *optional*):
            The backbone to load (a Hub id or a local path) and its revision (a commit sha pins it).
        projection_dim (`int`, *optional*):
            `C`, the backbone's projection dim; checked on load.
        backbone_config (`dict`, *optional*):
            The backbone's architecture (its config's non-default entries with its `model_type`), so that
            `XMAdapterForImageClassification(config)` can build a randomly initialised backbone; `None` in 0.1.0
            configs.
        backbone_init_seed (`int`, *optional*):
            Set by `XMAdapterForImageClassification(config)` when it builds a randomly initialised backbone from
            `backbone_config` (the seed of its weights: the same config builds the same backbone), so that
            `from_pretrained` rebuilds that backbone instead of loading `base_model_name_or_path`; `None`: a loaded
            backbone.
        backbone_fingerprint (`dict`, *optional*):
            What identifies the backbone (architecture hash); checked on load with the stored probe embeddings.
        xmadapter_version (`str`, *optional*):
            The library version that wrote this config (stamped on save).
        save_id (`str`, *optional*):
            A fresh id written by every `save_pretrained` into the config and the weights' metadata; a load whose two
            files disagree (an interrupted save) is refused.
    """

    model_type = "xmadapter"
    has_no_defaults_at_init = True
    keys_to_ignore_at_inference = OUTPUTS_IGNORED_AT_INFERENCE

    method: str = validated_field(_registered, default="xmadapter")
    class_names: list[str] = validated_field(_class_names, default_factory=list)
    prompt_templates: list[str] = validated_field(_templates, default_factory=lambda: ["a photo of a {}."])
    logit_scale: int | float | None = validated_field(_positive("logit_scale"), default=None)
    hard_sample_strength: int | float | None = validated_field(
        in_interval("hard_sample_strength", 0.0, float("inf"), high_open=True), default=None
    )
    hard_sample_temperature: int | float = validated_field(_positive("hard_sample_temperature"), default=1.0)
    hard_sample_criterion: str = validated_field(
        one_of("hard_sample_criterion", HARD_SAMPLE_CRITERIA), default="disagreement"
    )
    hard_sample_focal_power: int | float = validated_field(_positive("hard_sample_focal_power"), default=2.0)
    cache_size: int = validated_field(at_least("cache_size", 0), default=0)
    cache_chunk_size: int = validated_field(at_least("cache_chunk_size", 1), default=2048)
    cache_dtype: str = validated_field(one_of("cache_dtype", CACHE_DTYPES), default="float32")
    augment_views: int = validated_field(at_least("augment_views", 0), default=10)
    shots: int | None = validated_field(at_least("shots", 1), default=None)
    classes_added: int = validated_field(at_least("classes_added", 0), default=0)
    seed: int | None = None
    search_result: dict | None = None
    method_selection: dict | None = None
    evaluation: dict | None = None
    temperature: int | float | None = validated_field(_positive("temperature"), default=None)
    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    projection_dim: int | None = validated_field(at_least("projection_dim", 1), default=None)
    backbone_config: dict | None = None
    backbone_init_seed: int | None = None
    backbone_fingerprint: dict | None = None
    xmadapter_version: str | None = None
    save_id: str | None = None

    def __post_init__(self, **kwargs):
        # The methods' fields: given ones validated on assignment (`__setattr__`), missing ones at their defaults.
        saved = self.xmadapter_version is not None  # read from a save: a field it lacks did not exist then
        for name, (_, field) in method_config_fields().items():
            if name in kwargs:
                setattr(self, name, kwargs.pop(name))
            elif saved and "saved_without" in field.metadata:  # the value that keeps an older save's behaviour
                setattr(self, name, copy.copy(field.metadata["saved_without"]))
            else:
                default = field.default_factory() if field.default is dataclasses.MISSING else field.default
                setattr(self, name, copy.copy(default))
        self._derive_labels(kwargs.pop("num_labels", None))
        if self.hard_sample_strength is None and not is_pending(self):  # "auto": each candidate resolves it
            self.hard_sample_strength = self.default_hard_sample_strength()
        if self.xmadapter_version is None:
            self.xmadapter_version = __version__
        super().__post_init__(**kwargs)

    def __setattr__(self, name, value):
        # After construction, the labels follow `class_names` (see `_checked_label_change`).
        constructed = getattr(self, "_post_init_done", False)  # set by `PreTrainedConfig.__post_init__`, last
        if constructed and name in ("num_labels", "id2label", "label2id"):
            value = self._checked_label_change(name, value)
        # Runs after `strict`'s validation of the shared fields: validates the fields the methods declare.
        declared = method_config_fields().get(name)
        if declared is not None:
            owner, field = declared
            try:
                type_validator(name, value, field.type)
            except TypeError as error:
                raise _field_error(name, value, field.type, error) from error
            for validator in owner.__validators__[name][1:]:  # [0] is strict's type validator, run above
                try:
                    validator(value)
                except (TypeError, ValueError) as error:
                    raise _field_error(name, value, field.type, error) from error
        super().__setattr__(name, value)
        if constructed and name == "class_names":  # keep the labels in step (add_classes, replace_classes)
            self.id2label = dict(enumerate(self.class_names))
            self.label2id = {label: i for i, label in enumerate(self.class_names)}

    def default_hard_sample_strength(self) -> float:
        """What `hard_sample_strength=None` resolves to for `method`: 1.0 where the method measures the cross-modal
        disagreement and the criterion is `disagreement`, else 0."""
        measures = get_method_class(self.method).measures_disagreement(self)
        return 1.0 if measures and self.hard_sample_criterion == "disagreement" else 0.0

    # ----------------------------------------------------------------------------------------- class validators
    def validate_hard_samples(self) -> None:
        """Hard-sample weighting needs a trainable method, and the `disagreement` criterion a method measuring it."""
        if not self.hard_sample_strength or is_pending(self):  # "auto": checked for each candidate
            return
        method = get_method_class(self.method)
        if not method.trainable:
            raise ValueError(
                f"`hard_sample_strength` must be 0 for the training-free method {self.method!r}; "
                f"got {self.hard_sample_strength!r}."
            )
        if self.hard_sample_criterion == "disagreement" and not method.measures_disagreement(self):
            raise ValueError(
                "`hard_sample_strength` > 0 with `hard_sample_criterion='disagreement'` needs XMAdapter's text cache "
                "(d compares the image- and text-cache predictions): set `use_text_cache=True`, "
                "`hard_sample_strength=0`, or `hard_sample_criterion='focal'`."
            )

    def validate_method(self) -> None:
        """The method's own checks between its fields ("auto": checked for each candidate)."""
        if not is_pending(self):
            get_method_class(self.method).validate_config(self)

    # -------------------------------------------------------------------------------------------------- labels
    def _derive_labels(self, num_labels: int | None) -> None:
        derived = dict(enumerate(self.class_names))
        if self.id2label is not None:
            given = {int(k): v for k, v in self.id2label.items()}
            if not self.class_names:  # a config written by hand with only id2label: take the names from it
                if sorted(given) != list(range(len(given))):
                    raise ConfigValueError(f"`id2label` keys must be 0..N-1; got {sorted(given)}.")
                self.class_names = [given[i] for i in range(len(given))]
                derived = dict(enumerate(self.class_names))
            elif given != derived:
                raise ConfigValueError(
                    f"`id2label` contradicts `class_names` (which is authoritative): expected {derived}, got {given}."
                )
        if self.label2id is not None:
            given = {str(k): int(v) for k, v in self.label2id.items()}
            expected = {name: i for i, name in derived.items()}
            if given != expected:
                raise ConfigValueError(f"`label2id` contradicts `class_names`: expected {expected}, got {given}.")
        if num_labels is not None and num_labels != len(self.class_names):
            raise ConfigValueError(
                f"`num_labels` ({num_labels}) must equal len(class_names) ({len(self.class_names)})."
            )
        self.id2label = derived
        self.label2id = {name: i for i, name in derived.items()}

    def _checked_label_change(self, name: str, value):
        """``value`` for `num_labels`/`id2label`/`label2id` assigned after construction, normalised, when it agrees
        with `class_names`; anything else is refused (it was accepted and saved, and the adapter then failed to load).
        transformers sets these during construction (`__post_init__`, `from_dict`), before this check applies."""
        names = self.class_names
        expected = {"id2label": dict(enumerate(names)), "label2id": {label: i for i, label in enumerate(names)}}
        try:
            if name == "num_labels":
                given = value
                agrees = isinstance(value, int) and not isinstance(value, bool) and value == len(names)
            elif name == "id2label":
                given = value = {int(k): v for k, v in value.items()}
                agrees = value == expected[name]
            else:
                given = value = {k: int(v) for k, v in value.items()}
                agrees = value == expected[name]
        except (AttributeError, TypeError, ValueError):
            given, agrees = value, False
        if not agrees:
            raise ConfigValueError(
                f"`{name}` follows `class_names` ({len(names)} classes) and cannot be set to {given!r:.200}. To give "
                "the adapter more classes call `model.add_classes(new_names, support_set)`; for other classes load it "
                "with `XMAdapterForImageClassification.from_pretrained(path, class_names=[...])` "
                "(docs/add-classes.md)."
            )
        return value

    # -------------------------------------------------------------------------------------------------- helpers
    @property
    def num_classes(self) -> int:
        """`N`, the number of classes (`len(class_names)`)."""
        return len(self.class_names)

    @staticmethod
    def method_fields() -> list[str]:
        """The names of the fields that registered methods declare (see each method's `config_fields`)."""
        return sorted(method_config_fields())

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["xmadapter_version"] = __version__  # stamped on every save
        return output
