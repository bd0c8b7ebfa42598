"""`XMAdapterForImageClassification`: a frozen CLIP backbone plus one registered adapter method.

The model holds the backbone (`clip.`), the method (`method.`) and the tensors every method reads (class text
embeddings, the cache, the backbone's probe embeddings); its forward normalises the image embeddings, asks the method
for logits and adds the loss. Cache building (`caches.py`), text encoding (`prompts.py`), checkpoints
(`checkpoint.py`), the validation search (`training/search.py`) and the Hub (`hub.py`) live in their own modules; the
methods below that reach them are the transformers-style entry points. The methods that edit the cache and the
classes come from a base class (`modeling_cache.py`); the checks of the constructor and of `forward` are in
`modeling_checks.py`, the output class in `modeling_outputs.py`.
"""

import torch
from transformers import PreTrainedModel
from transformers import initialization as init

from . import backbone as bb
from . import caches, checkpoint, prompts
from . import functional as Fn
from .configuration_xmadapter import XMAdapterConfig
from .methods import AdapterMethod, CacheState
from .methods.memo import Memo
from .modeling_cache import AdapterCacheMixin
from .modeling_checks import backbone_seed, check_inputs, checked_backbone, expected_adapter_shapes, own_buffers
from .modeling_outputs import METHOD_OUTPUT_FIELDS, XMAdapterImageClassifierOutput
from .selection import is_pending, method_class, pending_message
from .training.losses import adapter_loss

__all__ = ["XMAdapterForImageClassification", "XMAdapterImageClassifierOutput"]


class XMAdapterForImageClassification(AdapterCacheMixin, PreTrainedModel):
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
    # The attention implementations the CLIP backbone supports (`CLIPPreTrainedModel` declares the same); the one asked
    # for at construction (`config._attn_implementation`, `attn_implementation=` of `_from_config`/`from_config`/
    # `from_pretrained`) is applied to the backbone, whose own check has the last word (`backbone.match_attention`).
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: XMAdapterConfig, clip_model=None, processor=None):
        # Validate before building anything; if anything still fails, the caller's config is left as it was (the
        # parent constructor sets attributes on it).
        requested_attention = config._attn_implementation  # None: the backbone's own (the parent resolves None)
        built_from_config = clip_model is None
        clip_model, dim = checked_backbone(config, clip_model)
        before = dict(config.__dict__)
        try:
            self._build(config, clip_model, processor, dim)
            bb.match_attention(self, requested_attention)
            if built_from_config:  # `from_pretrained` rebuilds this backbone (it names none to load)
                config.backbone_init_seed = backbone_seed(config)
        except BaseException:
            config.__dict__.clear()
            config.__dict__.update(before)
            raise

    def _build(self, config: XMAdapterConfig, clip_model, processor, dim: int) -> None:
        super().__init__(config)
        self.clip = clip_model
        self.processor = processor
        for name, (shape, dtype) in own_buffers(config, dim).items():
            self.register_buffer(name, torch.zeros(shape, dtype=dtype))
        # The adapter's initial weights are a function of `config.seed` alone, not of the global RNG state: two
        # builds with the same seed are bit-identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed if config.seed is not None else 0)
            self.method: AdapterMethod = method_class(config.method)(config, dim)  # "auto": a placeholder
            self.post_init()
        bb.freeze(self.clip)
        # Trainer loads its checkpoints (adapter only) with `strict=False` and stays quiet about missing keys only
        # when they are exactly `_keys_to_ignore_on_save`: every backbone key of this instance.
        self._keys_to_ignore_on_save = {key for key in self.state_dict() if key.startswith("clip.")}
        self.cache_shots: int | None = None  # K of a cache sorted by class with K per class (`refresh_cache_layout`)
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_cache_layout())
        self.register_state_dict_post_hook(_with_vision_fingerprint)
        config.projection_dim = dim
        if config.backbone_config is None:
            config.backbone_config = bb.backbone_config(clip_model)

    @classmethod
    def expected_adapter_shapes(cls, config: XMAdapterConfig, dim: int) -> dict[str, tuple[int, ...]]:
        """The shape of every adapter tensor that `config` describes for a backbone of projection dim ``dim``.

        Computed on the meta device: nothing is allocated, however large the sizes a config claims (a checkpoint's
        config is untrusted input; `from_pretrained` compares these shapes with the safetensors header first).
        """
        return expected_adapter_shapes(config, dim)

    # ------------------------------------------------------------------------------------------ initialisation
    def _init_weights(self, module):
        # Only the adapter's own modules: the backbone arrives initialised (or loaded) and must not change.
        if module is self or isinstance(module, (Memo, AdapterMethod)):
            # The buffers' construction values (zeros: an all-zero probe embedding reads as "none held", label 0 is
            # in range, zero Gaussian statistics are "no Gaussian term" until `build_cache`), so that meta-device
            # construction + `to_empty()` + `init_weights()` defines every buffer.
            for buffer in module.buffers(recurse=False):
                init.zeros_(buffer)
            if isinstance(module, Memo):
                module.reset()  # nothing remembered: a NaN fingerprint, as construction leaves it
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

    def get_input_embeddings(self):
        """The backbone's vision input embedding (CLIP's patch embedding, a `Conv2d`), as `CLIPVisionModel` returns:
        the model reads images only."""
        return self.clip.vision_model.get_input_embeddings()

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
            method (`str`, *optional*): a registered method (default: the config's default, XMAdapter), or `"auto"`:
                `fit` then fits every candidate method and keeps the best on validation (docs/training.md); the
                model refuses to classify or save until it has.
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
        clip_model, processor, base_model_name_or_path = checkpoint.load_backbone_and_processor(
            clip_model_or_path, processor, revision=revision, base_model_name_or_path=base_model_name_or_path
        )
        config.base_model_name_or_path = base_model_name_or_path
        model = cls(config, clip_model=clip_model, processor=processor)
        model.to(next(clip_model.parameters()).device)
        prompts.encode_class_texts(model, batch_size=text_batch_size)
        return model.eval()

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

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cache_index: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
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
            return_dict, output_hidden_states, output_attentions (`bool`, *optional*): as in transformers (default:
                the config's); the vision tower's hidden states and attentions (with `pixel_values` only).
            kwargs: `num_items_in_batch` (passed by Trainer) normalises the loss; other keys are ignored.
        """
        check_inputs(self, pixel_values, image_embeds, labels, cache_index)
        states = {
            "output_hidden_states": self.config.output_hidden_states
            if output_hidden_states is None
            else output_hidden_states,
            "output_attentions": self.config.output_attentions if output_attentions is None else output_attentions,
        }
        vision = None
        if pixel_values is not None and any(states.values()):
            vision = bb.encode_images_with_states(self.clip, pixel_values, **states)
            raw = vision.pooler_output
        else:
            raw = self.embed_images(pixel_values) if pixel_values is not None else image_embeds
        image = Fn.l2_normalize(raw.float())  # (B, C) float32 whatever the model's dtype: the logits are float32
        out = self.method(image, self.cache_state(), labels=labels, cache_index=cache_index)
        loss = None if labels is None else adapter_loss(out, labels, self.config, kwargs.get("num_items_in_batch"))
        fields = {name: getattr(out, name) for name in METHOD_OUTPUT_FIELDS}  # the same names: a mechanical mapping
        if vision is not None:
            fields["hidden_states"], fields["attentions"] = vision.hidden_states, vision.attentions
        output = XMAdapterImageClassifierOutput(loss=loss, image_embeds=image, **fields)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        return output if return_dict is not False else output.to_tuple()

    # -------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, save_directory, is_main_process: bool = True, state_dict=None, **kwargs):
        """Writes `config.json`, `model.safetensors` (adapter tensors only) and the processor's image settings, each
        moved into place atomically (see [`xmadapter_hf.checkpoint.save_adapter`]).

        Called by Trainer with the full model's ``state_dict``: backbone tensors are filtered out either way; other
        files in the directory are left alone.
        """
        if is_pending(self):
            raise ValueError(pending_message("be saved"))
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
        `config.cache_dtype` and every other tensor in float32. A passed ``config`` is copied, never changed. Other
        keyword arguments naming config attributes (`output_hidden_states=True`, `return_dict=False`, ...) are set on
        the loaded copy, as transformers does; `num_labels` must agree with the saved classes (`class_names=` below
        changes them); any other keyword is a `TypeError`.

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


def _with_vision_fingerprint(model, state_dict, prefix, local_metadata) -> None:
    """`state_dict()` holds what `save_pretrained` writes for `probe_image_embed`: the fingerprint the model holds, or
    the backbone's where it holds none (see `vision_fingerprint`), so that a state dict or a save round-trips."""
    key = f"{prefix}probe_image_embed"
    held = state_dict.get(key)
    if held is not None and not held.is_meta and not torch.any(held != 0):
        state_dict[key] = model.vision_fingerprint().to(held)
