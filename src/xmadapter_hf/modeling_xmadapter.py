"""`XMAdapterForImageClassification`: a frozen CLIP backbone plus one registered adapter method.

The model holds the backbone (`clip.`), the method (`method.`) and the tensors every method reads (class text
embeddings, the cache, the backbone's probe embeddings); its forward normalises the image embeddings, asks the method
for logits and adds the loss. Cache building (`caches.py`), text encoding (`prompts.py`), checkpoints
(`checkpoint.py`), the validation search (`training/search.py`) and the Hub (`hub.py`) live in their own modules; the
methods below that reach them are the transformers-style entry points.
"""

import dataclasses
import os
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from . import backbone as bb
from . import caches, checkpoint, classes, prompts
from . import functional as Fn
from .configuration_xmadapter import XMAdapterConfig
from .methods import AdapterMethod, CacheState, MethodOutput, get_method_class, registered_methods
from .training.losses import hard_sample_weights, weighted_cross_entropy
from .validation import describe

__all__ = ["XMAdapterForImageClassification", "XMAdapterImageClassifierOutput"]

#: A method's output fields, which the model's output carries under the same names.
_METHOD_OUTPUT_FIELDS = tuple(field.name for field in dataclasses.fields(MethodOutput))


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
    image_embeds (`torch.FloatTensor` of shape `(B, C)`):
        The normalised image embeddings the adapter saw.
    """

    zero_shot_logits: torch.FloatTensor | None = None
    cache_logits: torch.FloatTensor | None = None
    image_cache_logits: torch.FloatTensor | None = None
    text_cache_logits: torch.FloatTensor | None = None
    affinity_ratio: torch.FloatTensor | None = None
    disagreement: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


class XMAdapterForImageClassification(PreTrainedModel):
    r"""A frozen `CLIPModel` (under the prefix `clip.`) with a cache-based few-shot adapter on its embeddings.

    Build one with [`~XMAdapterForImageClassification.from_clip`], fill its cache with
    [`~XMAdapterForImageClassification.build_cache`], train it (trainable methods) with `xmadapter_hf.fit` or the HF
    `Trainer`, and save the adapter alone with `save_pretrained`. Which method runs is `config.method`.

    Example (the tiny random CLIP of the tests stands in for `openai/clip-vit-base-patch16`):

    ```python
    >>> from xmadapter_hf import XMAdapterForImageClassification
    >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
    >>> clip, processor = tiny_clip()
    >>> model = XMAdapterForImageClassification.from_clip(clip, ["cat", "dog"], processor=processor)
    >>> model.build_cache(tiny_image_dataset(num_classes=2, shots=2), augment_views=1, show_progress=False)
    >>> model.config.cache_size
    4
    ```
    """

    config_class = XMAdapterConfig
    base_model_prefix = "xmadapter"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # forward normalises the loss by Trainer's `num_items_in_batch` itself (see training/losses.py)
    accepts_loss_kwargs = True
    _no_split_modules = []

    def __init__(self, config: XMAdapterConfig, clip_model=None, processor=None):
        # Validate before building anything; if anything still fails, the caller's config is left as it was (the
        # parent constructor sets attributes on it).
        if not config.class_names:
            raise ValueError("`config.class_names` is empty: an adapter needs at least one class.")
        if clip_model is None:
            clip_model = _backbone_of(config)
        bb.check_backbone(clip_model)
        dim = bb.projection_dim(clip_model)
        if config.projection_dim is not None and config.projection_dim != dim:
            raise ValueError(
                f"The adapter was built for a backbone of projection dim {config.projection_dim}, but the given "
                f"backbone has projection dim {dim}."
            )
        before = dict(config.__dict__)
        try:
            self._build(config, clip_model, processor, dim)
        except BaseException:
            config.__dict__.clear()
            config.__dict__.update(before)
            raise

    def _build(self, config: XMAdapterConfig, clip_model, processor, dim: int) -> None:
        super().__init__(config)
        self.clip = clip_model
        self.processor = processor
        for name, (shape, dtype) in _own_buffers(config, dim).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        # The adapter's initial weights are a function of `config.seed` alone, not of the global RNG state: two
        # builds with the same seed are bit-identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed if config.seed is not None else 0)
            self.method: AdapterMethod = get_method_class(config.method)(config, dim)
            self.post_init()
        bb.freeze(self.clip)
        # Trainer loads its checkpoints (adapter only) with `strict=False` and stays quiet about missing keys only
        # when they are exactly `_keys_to_ignore_on_save`: every backbone key of this instance.
        self._keys_to_ignore_on_save = {key for key in self.state_dict() if key.startswith("clip.")}
        self.cache_shots: int | None = None  # K of a cache sorted by class with K per class (`refresh_cache_layout`)
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_cache_layout())
        config.projection_dim = dim
        if config.backbone_config is None:
            config.backbone_config = bb.backbone_config(clip_model)

    @classmethod
    def expected_adapter_shapes(cls, config: XMAdapterConfig, dim: int) -> dict[str, tuple[int, ...]]:
        """The shape of every adapter tensor that `config` describes for a backbone of projection dim ``dim``.

        Computed on the meta device: nothing is allocated, however large the sizes a config claims (a checkpoint's
        config is untrusted input; `from_pretrained` compares these shapes with the safetensors header first).
        """
        shapes = {name: shape for name, (shape, _) in _own_buffers(config, dim).items()}
        with torch.device("meta"):
            method = get_method_class(config.method)(config, dim)
        shapes.update({f"method.{k}": tuple(v.shape) for k, v in method.state_dict().items()})
        return shapes

    # ------------------------------------------------------------------------------------------ initialisation
    def _init_weights(self, module):
        # Only the adapter's own modules: the backbone arrives initialised (or loaded) and must not change.
        kind = getattr(module, "_xmadapter_init", None)
        if kind is not None:
            if kind == "zeros":
                init.zeros_(module.weight)
            else:
                init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, AdapterMethod) and hasattr(module, "reset_own_parameters"):
            module.reset_own_parameters()

    def train(self, mode: bool = True):
        """As `nn.Module.train`, but the frozen backbone always stays in eval mode (dropout off)."""
        super().train(mode)
        self.clip.eval()
        return self

    # --------------------------------------------------------------------------------------------- properties
    @property
    def logit_scale(self) -> float:
        """`s`: `config.logit_scale`, or the backbone's `logit_scale.exp()`."""
        return float(self._logit_scale())

    def _logit_scale(self) -> float | torch.Tensor:
        # a 0-dim tensor when read from the backbone: forward never synchronises with the device to read it
        if self.config.logit_scale is not None:
            return float(self.config.logit_scale)
        return self.clip.logit_scale.detach().float().exp()

    @property
    def embed_dim(self) -> int:
        return self.class_embeds.shape[1]

    def cache_state(self) -> CacheState:
        """The tensors the method reads (see [`~xmadapter_hf.methods.CacheState`])."""
        return CacheState(
            self.class_embeds, self.cache_embeds, self.cache_labels, self._logit_scale(), self.cache_shots
        )

    def refresh_cache_layout(self) -> None:
        """Records whether the cache is sorted by class with K entries each (class sums by reshape, see
        `methods/cache.py`). Called whenever the cache labels are set or loaded; edit the cache through `set_cache`."""
        if self.cache_labels.is_meta:
            return
        self.cache_shots = caches.cache_layout(self.cache_labels, self.config.num_classes)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor that `save_pretrained` writes: the adapter's parameters and buffers, no backbone tensor, and
        the [`vision_fingerprint`] (taken from the backbone in use where the model holds none)."""
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}
        state["probe_image_embed"] = self.vision_fingerprint()
        return state

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_clip(
        cls,
        clip_model_or_path,
        class_names,
        processor=None,
        templates=None,
        method: str | None = None,
        *,
        revision: str | None = None,
        base_model_name_or_path: str | None = None,
        text_batch_size: int = 256,
        **config_overrides,
    ) -> "XMAdapterForImageClassification":
        """Builds an adapter over a CLIP backbone: validates the config, then encodes the class prompts into ``W``.

        Args:
            clip_model_or_path (`CLIPModel` or `str`): a loaded backbone, or a Hub id / local path to load.
            class_names (`list[str]`): the classes, in label order.
            processor (`CLIPProcessor`, *optional*): tokenizer + image processor; loaded from the path if omitted.
            templates (`list[str]`, *optional*): prompt templates with `{}` (default `["a photo of a {}."]`).
            method (`str`, *optional*): a registered method (default: the config's default, XMAdapter).
            revision (`str`, *optional*): the backbone revision to load (recorded in the config).
            base_model_name_or_path (`str`, *optional*): the Hub id to record when the backbone object was loaded from
                elsewhere (defaults to the backbone's `name_or_path`).
            config_overrides: any other [`XMAdapterConfig`] field.
        """
        # Validate everything the user gave before loading or encoding anything.
        if method is not None:
            config_overrides["method"] = method
        config = XMAdapterConfig(
            class_names=list(class_names) if not isinstance(class_names, str) else class_names,
            prompt_templates=list(templates) if templates is not None else list(prompts.DEFAULT_TEMPLATES),
            base_model_revision=revision,
            **config_overrides,
        )
        if isinstance(clip_model_or_path, (str, os.PathLike)):
            clip_model = checkpoint.load_backbone(str(clip_model_or_path), revision=revision)
            processor = processor or checkpoint.load_processor(str(clip_model_or_path), revision=revision)
            base_model_name_or_path = base_model_name_or_path or str(clip_model_or_path)
        else:
            clip_model = clip_model_or_path
            bb.check_backbone(clip_model)
            base_model_name_or_path = base_model_name_or_path or getattr(clip_model, "name_or_path", None) or None
        if processor is None:
            if not base_model_name_or_path:
                raise ValueError(
                    "Pass `processor=` (a CLIPProcessor): the backbone object does not say where it came from."
                )
            processor = checkpoint.load_processor(base_model_name_or_path, revision=revision)
        if getattr(processor, "tokenizer", None) is None:
            raise TypeError(f"`processor` must carry a tokenizer (a CLIPProcessor); got {type(processor).__name__}.")
        config.base_model_name_or_path = base_model_name_or_path
        model = cls(config, clip_model=clip_model, processor=processor)
        model.to(next(clip_model.parameters()).device)
        prompts.encode_class_texts(model, batch_size=text_batch_size)
        return model.eval()

    def build_cache(
        self,
        dataset,
        augment_views: int = 10,
        batch_size: int = 32,
        seed: int = 0,
        *,
        image_column: str | None = None,
        label_column: str | None = None,
        processor=None,
        show_progress: bool = True,
        cache_dir: str | os.PathLike | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> "XMAdapterForImageClassification":
        """Fills the cache from a labelled few-shot image set (`datasets.Dataset` or a torch `Dataset`).

        Keys average the raw embeddings of ``augment_views`` augmented views (RandomResizedCrop scale 0.5-1 +
        horizontal flip; 0 = the plain view), then normalise; labels are stored as integers. Creates (or resizes)
        the method's cache-shaped parameters and sets `config.cache_size`: build optimisers after this call.
        ``cache_dir`` and ``autocast_dtype`` go to [`~xmadapter_hf.data.extraction.extract_embeddings`] (an on-disk
        extraction cache that a rerun reuses without a backbone forward; mixed precision for the backbone).

        Before any image goes through the backbone, the labels are read and checked: a `ClassLabel` column must
        name the model's `class_names` in the same order (build the model with
        ``from_clip(clip, dataset.features["label"].names, ...)``), every label must be a class id and every class
        must have an image.
        """
        return caches.build_cache(
            self, dataset, augment_views, batch_size, seed, image_column=image_column, label_column=label_column,
            processor=processor, show_progress=show_progress, cache_dir=cache_dir, autocast_dtype=autocast_dtype,
        )  # fmt: skip

    def set_cache(self, embeds: torch.Tensor, labels: torch.Tensor) -> None:
        """Sets the cache from raw embeddings (NK, C) (normalised here) and integer labels (NK,).

        Validates everything before changing any state; then resizes and initialises the method's cache parameters.
        """
        caches.set_cache(self, embeds, labels)

    def add_classes(
        self,
        class_names: list[str],
        dataset=None,
        *,
        embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        augment_views: int | None = None,
        batch_size: int = 32,
        image_column: str | None = None,
        label_column: str | None = None,
        processor=None,
        show_progress: bool = True,
    ) -> "XMAdapterForImageClassification":
        """Adds classes to a built (or trained) adapter without retraining it (docs/add-classes.md).

        The new names are encoded with the adapter's templates and appended to ``W``, `class_names`, `id2label` and
        `label2id`; their few-shot support images (``dataset``, whose labels 0..M-1 index ``class_names``, extracted
        with the cache's `augment_views` and seed) or raw embeddings (``embeds`` `(M, C)` with ``labels`` `(M,)`)
        are appended to the cache, and every cache-shaped parameter of the method grows through the method's
        `add_classes` hook: old rows are kept bit for bit, new learned keys start from their embeddings,
        class-agnostic weights and the searched hyperparameters are kept, a half-precision cache stays half
        precision. `config.shots` becomes `None` when the classes no longer have equal K; `config.classes_added`
        counts the classes added. A model without a cache takes names only.

        Old classes' logits do not change for every method but the Multi-Modal Adapter (its attention runs over all
        class tokens). Everything is checked before any state changes: a name the model has, a repeated or empty
        name, an empty list, a new class without support images, support of the wrong shape. Parameters are
        replaced: an optimiser or Trainer built before refuses its next step (build a new one).
        """
        return classes.add_classes(
            self, class_names, dataset, embeds=embeds, labels=labels, augment_views=augment_views,
            batch_size=batch_size, image_column=image_column, label_column=label_column, processor=processor,
            show_progress=show_progress,
        )  # fmt: skip

    def half_cache(self, dtype: torch.dtype | str | None = None) -> "XMAdapterForImageClassification":
        """Stores the whole cache in half precision for inference, learned keys included.

        `config.cache_dtype` already stores the frozen cache ``E`` in fp16/bf16; a method's learned keys stay float32
        parameters for training. This call casts both to ``dtype`` (default: `config.cache_dtype` if it is a half
        type, else `float16`) and records it in `config.cache_dtype`: a 100k-class, 16-shot cache at C = 512 then takes
        1.6 GiB per tensor instead of 3.1 GiB. The affinity maths stays float32 and chunked, so logits move by the
        rounding of the keys only. The learned keys become frozen: training refuses to run until [`float_cache`]
        makes them float32 parameters again (the rounding stays). `save_pretrained` then writes half-precision keys
        and `from_pretrained` gives them back in half precision. Called before `set_cache`, the learned keys are
        created in half precision directly, which is how an inference-only model of a very large cache is built.

        Example:

        ```python
        >>> from xmadapter_hf import XMAdapterForImageClassification
        >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
        >>> clip, processor = tiny_clip()
        >>> model = XMAdapterForImageClassification.from_clip(clip, ["cat", "dog"], processor=processor)
        >>> _ = model.build_cache(tiny_image_dataset(num_classes=2, shots=2), augment_views=1, show_progress=False)
        >>> model.half_cache().cache_embeds.dtype, model.method.cache_keys.dtype
        (torch.float16, torch.float16)
        ```
        """
        caches.half_cache(self, dtype)
        return self

    def float_cache(self) -> "XMAdapterForImageClassification":
        """Undoes [`half_cache`] for the learned keys: float32 trainable parameters again (the rounding stays).

        The frozen cache ``E`` keeps `config.cache_dtype`, which is a storage choice that training accepts.
        """
        with torch.no_grad():
            self.method.cast_cache(torch.float32)
        return self

    def cast_adapter(self, dtype: torch.dtype) -> "XMAdapterForImageClassification":
        """Casts the adapter's floating tensors (the method's weights and the model's buffers) to ``dtype``, leaving
        the backbone as it is (`from_pretrained(dtype=...)` with a `clip_model=` the caller owns)."""
        caches.cast_adapter(self, dtype)
        return self

    def search_hyperparameters(self, validation, labels=None, **kwargs):
        """Chooses what the method's search space tunes (Tip-Adapter: `sharpness` and `residual_ratio`; XMAdapter also
        `text_sharpness`) on a validation split; see [`xmadapter_hf.training.search.search_on_validation`]. The choice
        and the split size are written into the config."""
        from .training.search import search_on_validation

        return search_on_validation(self, validation, labels, **kwargs)

    # ------------------------------------------------------------------------------------------------ forward
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw backbone embeddings of pixel values (no gradient reaches the frozen backbone)."""
        return bb.encode_images(self.clip, pixel_values)

    def _check_inputs(self, pixel_values, image_embeds, labels, cache_index) -> None:
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of `pixel_values` (B, 3, H, W) and `image_embeds` (B, C).")
        if pixel_values is not None:
            if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
                raise TypeError(f"`pixel_values` must be a floating-point tensor; got {describe(pixel_values)}.")
            if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
                raise ValueError(f"`pixel_values` must have shape (B, 3, H, W); got {tuple(pixel_values.shape)}.")
            batch = pixel_values.shape[0]
        else:
            if not isinstance(image_embeds, torch.Tensor) or not image_embeds.is_floating_point():
                raise TypeError(f"`image_embeds` must be a floating-point tensor; got {describe(image_embeds)}.")
            if image_embeds.ndim != 2 or image_embeds.shape[1] != self.embed_dim:
                raise ValueError(
                    f"`image_embeds` must have shape (B, {self.embed_dim}); got {tuple(image_embeds.shape)}."
                )
            batch = image_embeds.shape[0]
        if self.method.uses_cache and self.config.cache_size == 0:
            raise ValueError(f"Method {self.config.method!r} needs a cache: call `model.build_cache(dataset)` first.")
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (batch,):
                raise ValueError(f"`labels` must be an integer tensor of shape ({batch},); got {describe(labels)}.")
            valid = labels[labels != -100]
            if valid.numel() and (valid.min() < 0 or valid.max() >= self.config.num_classes):
                raise ValueError(
                    f"`labels` must lie in [0, {self.config.num_classes - 1}] (or be -100); "
                    f"got values in [{int(valid.min())}, {int(valid.max())}]."
                )
        if cache_index is not None:
            if not isinstance(cache_index, torch.Tensor) or cache_index.shape != (batch,):
                raise ValueError(
                    f"`cache_index` must be an integer tensor of shape ({batch},); got {describe(cache_index)}."
                )
            if cache_index.numel() and cache_index.max() >= self.config.cache_size:
                raise ValueError(f"`cache_index` must be < cache_size ({self.config.cache_size}), or -1 for none.")
        if self.training and labels is not None and torch.is_grad_enabled():
            self._check_trainable()

    def _check_trainable(self) -> None:
        if not self.method.trainable:
            trainable = [name for name in registered_methods() if get_method_class(name).trainable]
            raise ValueError(
                f"Method {self.config.method!r} is training-free: it has no trainable parameters. Train one of "
                f"{', '.join(map(repr, trainable))}, or evaluate without training."
            )
        # `half_cache()` freezes the learned keys; `model.to(torch.bfloat16)` keeps them trainable in bf16
        for name in self.method.cache_parameters:
            learned = getattr(self.method, name)
            if not learned.requires_grad:
                raise ValueError(
                    f"The learned cache keys are stored in {learned.dtype} for inference (`half_cache()`); call "
                    "`model.float_cache()` before training."
                )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache_index: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XMAdapterImageClassifierOutput:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, 3, H, W)`, *optional*): images, from the processor.
            image_embeds (`torch.FloatTensor` of shape `(B, C)`, *optional*): raw backbone image embeddings
                (normalised here), instead of `pixel_values`.
            labels (`torch.LongTensor` of shape `(B,)`, *optional*): class ids; `-100` is ignored.
            cache_index (`torch.LongTensor` of shape `(B,)`, *optional*): each training image's position in the
                cache (-1 if none), so the hard-sample criterion leaves its own entry out.
            kwargs: `num_items_in_batch` (passed by Trainer) normalises the loss; other keys are ignored.
        """
        self._check_inputs(pixel_values, image_embeds, labels, cache_index)
        raw = self.embed_images(pixel_values) if pixel_values is not None else image_embeds
        image = Fn.l2_normalize(raw.float())  # (B, C) float32 whatever the model's dtype: the logits are float32
        out = self.method(image, self.cache_state(), labels=labels, cache_index=cache_index)
        loss = None
        if labels is not None:
            config = self.config
            weights = hard_sample_weights(
                out.logits, labels, config.hard_sample_strength, config.hard_sample_criterion,
                out.disagreement, config.hard_sample_focal_power,
            )  # fmt: skip
            loss = weighted_cross_entropy(out.logits, labels, weights, kwargs.get("num_items_in_batch"))
        fields = {name: getattr(out, name) for name in _METHOD_OUTPUT_FIELDS}  # the same names: a mechanical mapping
        output = XMAdapterImageClassifierOutput(loss=loss, image_embeds=image, **fields)
        return output if return_dict is not False else output.to_tuple()

    # -------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory, is_main_process: bool = True, state_dict=None, **kwargs):
        """Writes `config.json`, `model.safetensors` (adapter tensors only) and the processor's image settings, each
        moved into place atomically (see [`xmadapter_hf.checkpoint.save_adapter`]).

        Called by Trainer with the full model's ``state_dict``: backbone tensors are filtered out either way; other
        files in the directory are left alone.
        """
        if kwargs.pop("push_to_hub", False):
            raise ValueError(
                "Use `model.push_to_hub(repo_id)` to push; `save_pretrained(push_to_hub=True)` is not supported."
            )
        checkpoint.save_adapter(self, save_directory, state_dict=state_dict, is_main_process=is_main_process)

    @torch.no_grad()
    def vision_fingerprint(self) -> torch.Tensor:
        """The normalised embedding (C,) of a fixed probe image: what `save_pretrained` writes as `probe_image_embed`
        and `from_pretrained` compares with the backbone it loads, as it does for the probe text.

        A loaded model keeps the fingerprint it was saved with, until `set_cache` clears it (the cache keys then come
        from the backbone in use). Where none is held, it is taken from the backbone in use when asked for (by
        `save_pretrained` and `adapter_state_dict`), without storing it.
        """
        if torch.any(self.probe_image_embed != 0):
            return self.probe_image_embed
        return bb.encode_probe_image(self.clip).to(self.probe_image_embed)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Uploads exactly `config.json`, `model.safetensors` (adapter only), `preprocessor_config.json` and our model
        card to ``repo_id``; see [`xmadapter_hf.hub.push_adapter_to_hub`] for the arguments (`base_model_id=` is
        required when the backbone was loaded from a local path)."""
        from .hub import push_adapter_to_hub

        return push_adapter_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        config: XMAdapterConfig | None = None,
        clip_model=None,
        processor=None,
        dtype=None,
        device_map=None,
        **kwargs,
    ) -> "XMAdapterForImageClassification":
        """Loads an adapter: its config and tensors from ``pretrained_model_name_or_path`` (a directory or a Hub id),
        the backbone from `config.base_model_name_or_path` at `config.base_model_revision` (or ``clip_model=``).

        Hub keyword arguments (`revision`, `cache_dir`, `token`, `local_files_only`, `force_download`) apply to the
        adapter; `device_map` goes to the backbone. `dtype` (a torch dtype, its name, or `"auto"`) goes to the
        backbone and casts the adapter too, as `model.to(dtype)` would (a `clip_model=` you pass is left as it is);
        it wins over `config.cache_dtype` in memory, while `save_pretrained` still writes the cache in
        `config.cache_dtype` and every other tensor in float32. A passed ``config`` is copied, never changed.

        Integrity (`xmadapter_hf.integrity`): the config's sizes are compared with the tensor shapes in the
        safetensors header before any adapter tensor is allocated; missing or unexpected adapter tensors are refused
        (a checkpoint of version 0.1.0 lacks the vision fingerprint: it loads with a warning); a backbone checkpoint
        with weights missing is refused. The backbone is checked against the one the adapter was built on
        (architecture hash; the embeddings of a probe text and a probe image, compared by cosine);
        `rebuild_text_embeddings=True` re-encodes the class prompts with the given backbone instead of refusing a
        different text encoder, `check_backbone=False` skips the checks. `output_loading_info=True` returns
        ``(model, info)`` with transformers' keys (`missing_keys`, ... ; backbone keys prefixed `clip.`).

        `class_names=[...]` gives the loaded adapter other classes: its class-agnostic weights are kept, the class
        prompts are encoded for the given names and the cache is emptied; fill it with `build_cache(support_set)`
        (the online use of a meta-trained Meta-Adapter; docs/add-classes.md).
        """
        if model_args:
            raise TypeError(f"from_pretrained takes no positional arguments beyond the path; got {len(model_args)}.")
        return checkpoint.load_adapter(
            cls, pretrained_model_name_or_path, config=config, clip_model=clip_model, processor=processor,
            dtype=dtype, device_map=device_map, **kwargs,
        )  # fmt: skip


def _own_buffers(config: XMAdapterConfig, dim: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The model's own buffers (name -> (shape, dtype)); the method's tensors come on top."""
    n, entries = config.num_classes, config.cache_size
    return {
        "class_embeds": ((n, dim), torch.float32),  # W, (N, C)
        "cache_embeds": ((entries, dim), getattr(torch, config.cache_dtype)),  # E, (NK, C)
        "cache_labels": ((entries,), torch.long),  # (NK,)
        "probe_text_embed": ((dim,), torch.float32),  # backbone integrity: the text tower
        "probe_image_embed": ((dim,), torch.float32),  # backbone integrity: the vision tower
    }


def _backbone_of(config: XMAdapterConfig):
    """A randomly initialised backbone of the architecture `config.backbone_config` records (for `cls(config)`)."""
    if config.backbone_config is None:
        raise ValueError(
            "This config records no backbone architecture (`backbone_config`; configs written by xmadapter-hf 0.1.0 "
            "have none), so `XMAdapterForImageClassification(config)` cannot build one. Load the adapter with "
            "`XMAdapterForImageClassification.from_pretrained(path)`, build one with `from_clip(...)`, or pass "
            "`clip_model=`."
        )
    return bb.backbone_from_config(config.backbone_config)
