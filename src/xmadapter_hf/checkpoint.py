"""Adapter-only checkpoints: an atomic save, and a load that checks what it reads (`integrity.py`).

A checkpoint is `config.json` + `model.safetensors` (adapter tensors only, never a `clip.*` key) + the image
processor's `preprocessor_config.json` (settings only, so that `pipeline("image-classification", model=...)` works).

Saving: each file is written by its library's writer (`PreTrainedConfig.to_json_file`, safetensors' `save_file`,
`ImageProcessingMixin.save_pretrained`) into a staging directory inside the target directory, then moved into place
with `os.replace`, the weights first and the config last; other files in the directory are left alone. Two replaces
are not atomic together, so the config and the safetensors metadata carry the same `save_id`, checked on load. The
metadata also records a digest of the tensors as written (`integrity.tensors_digest`), checked on load; non-finite
tensors are refused before anything is written. safetensors writes its file with mode 0600 (a temporary file's): the
weights are given the mode the config got from the umask, as every other file has.
`PreTrainedModel.save_pretrained` is not used to write the files: it writes the safetensors metadata `{"format": "pt"}`
only (no room for the save id), writes the config as a diff against today's defaults (an adapter saved so would
change behaviour when a default changes), sets `dtype`/`architectures` on the caller's config, and deletes weight
shards it does not write.
"""

import copy
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from . import __version__, classes, integrity, prompts
from . import backbone as bb
from .configuration_xmadapter import XMAdapterConfig
from .hub import no_cache_note, resolve_file
from .selection import is_pending

__all__ = ["load_adapter", "load_backbone", "load_backbone_and_processor", "load_processor", "read_header",
           "read_weights", "save_adapter", "storage_dtype"]  # fmt: skip

_HUB_KEYS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies", "subfolder")
# Keyword arguments that transformers' Auto classes and pipeline pass along and that mean nothing to an adapter.
_IGNORED_KEYS = ("trust_remote_code", "use_safetensors", "weights_only", "code_revision", "adapter_kwargs")

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ saving
def save_adapter(model, save_directory, state_dict=None, is_main_process: bool = True) -> Path | None:
    """Writes an adapter checkpoint (see the module docstring); returns the directory (`None` off the main process).

    ``state_dict`` (Trainer passes the whole model's) defaults to the model's; backbone tensors are dropped. A
    non-finite tensor raises `ValueError` before anything is written; an adapter whose method needs a cache and has
    none is saved with a warning.
    """
    # As transformers does under a process group: only rank 0 writes, whatever the caller passed.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not is_main_process or (distributed and torch.distributed.get_rank() != 0):
        return None
    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"Cannot save into {str(directory)!r}: it exists and is not a directory.")
    state = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v for k, v in state.items() if not k.startswith("clip.")}
    tensors["probe_image_embed"] = model.vision_fingerprint()
    tensors = {k: v.detach().to("cpu", storage_dtype(model, k, v)).contiguous().clone() for k, v in tensors.items()}
    # after the cast to the stored dtypes: a float32 value beyond float16's range is an infinity in the file
    integrity.check_finite(
        tensors, f"Nothing was saved to {str(directory)!r}: the adapter holds",
        "it would predict nothing meaningful (a training run that diverged?).",
    )  # fmt: skip
    try:  # what `from_pretrained` checks first: never write what cannot load
        integrity.check_sizes(type(model), model.config, {k: tuple(v.shape) for k, v in tensors.items()})
    except ValueError as error:
        raise ValueError(
            f"Nothing was saved to {str(directory)!r}: the config no longer describes the model's tensors, so the "
            f"saved adapter could not be loaded ({error}) Was a size field (`class_names`, `cache_size`) set by hand? "
            "Change classes with `model.add_classes(...)` or `from_pretrained(path, class_names=[...])`, the cache "
            "with `build_cache`/`set_cache`."
        ) from error
    save_id = uuid.uuid4().hex
    config = copy.deepcopy(model.config)
    config.save_id, config.architectures = save_id, [type(model).__name__]
    config.validate()
    if (note := no_cache_note(config)) is not None:
        logger.warning("Saving to %r: %s", str(directory), note)
    metadata = {"format": "pt", "save_id": save_id, "xmadapter_version": __version__}
    metadata[integrity.DIGEST_KEY] = integrity.tensors_digest(tensors)  # of exactly the bytes written below
    image_processor = getattr(model.processor, "image_processor", model.processor)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".xmadapter-save-"))
    try:
        config.to_json_file(staging / CONFIG_NAME, use_diff=False)
        save_file(tensors, str(staging / SAFE_WEIGHTS_NAME), metadata=metadata)
        shutil.copymode(staging / CONFIG_NAME, staging / SAFE_WEIGHTS_NAME)  # the umask's mode, not 0600
        if image_processor is not None and hasattr(image_processor, "save_pretrained"):
            image_processor.save_pretrained(staging)
        # the weights first, the config last: a save cut in between leaves two save ids that disagree
        names = [
            SAFE_WEIGHTS_NAME,
            CONFIG_NAME,
            *sorted({p.name for p in staging.iterdir()} - {SAFE_WEIGHTS_NAME, CONFIG_NAME}),
        ]
        for name in names:
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    model.config.save_id = save_id
    return directory


def storage_dtype(model, name: str, tensor: torch.Tensor) -> torch.dtype:
    """The dtype an adapter tensor is written in, whatever dtype the model runs in.

    The cache is stored in `config.cache_dtype`: the frozen cache ``E`` (`cache_embeds`) always, a method's learned
    cache parameters only after `half_cache()` (which freezes them). Every other floating tensor is written in float32,
    so that an adapter saved after `model.to(torch.bfloat16)` (`bf16_full_eval` does that) reloads with float32
    trainable weights.
    """
    if not tensor.is_floating_point():
        return tensor.dtype
    cache_dtype = getattr(torch, model.config.cache_dtype)
    if name == "cache_embeds":
        return cache_dtype
    learned = name.removeprefix("method.")
    if name.startswith("method.") and learned in model.method.cache_parameters:
        if not getattr(model.method, learned).requires_grad:
            return cache_dtype
    return torch.float32


# ----------------------------------------------------------------------------------------------------- reading
def read_header(path: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensor shapes and the metadata of a safetensors file, read from its header: no tensor is allocated."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:
        raise OSError(f"{path!r} is not a readable safetensors file (truncated or corrupt?): {error}") from error
    return shapes, metadata


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a truncated or corrupt file raises `OSError` naming it."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise OSError(f"{path!r} is not a readable safetensors file (truncated or corrupt?): {error}") from error
    return tensors, metadata


def load_backbone(name_or_path: str, revision: str | None = None, *, with_info: bool = False, **kwargs):
    """Loads a `CLIPModel` (frozen, eval mode) by Hub id or local path, refusing one with randomly initialised parts.

    transformers initialises the weights a checkpoint lacks at random and only logs it; an adapter over such a
    backbone would silently predict noise, so missing or mismatched weights raise `ValueError`. With
    ``with_info=True`` the result is ``(model, loading_info)``.
    """
    from transformers import CLIPModel

    model, info = CLIPModel.from_pretrained(
        name_or_path, revision=revision or "main", output_loading_info=True, **kwargs
    )
    incomplete = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
    if incomplete:
        raise ValueError(
            f"The backbone checkpoint {name_or_path!r} lacks (or has mismatched) weights {incomplete[:5]} "
            f"({len(incomplete)} in all), which transformers would initialise at random. Point "
            "`base_model_name_or_path` at a complete CLIP checkpoint, or pass `clip_model=`."
        )
    bb.freeze(model)  # from_pretrained recreates parameters with requires_grad=True
    return (model, info) if with_info else model


def load_processor(name_or_path: str, revision: str | None = None, **kwargs):
    """Loads the `CLIPProcessor` (tokenizer + image processor) of a backbone."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name_or_path, revision=revision or "main", **kwargs)


def load_backbone_and_processor(
    clip_model_or_path, processor=None, *, revision: str | None = None, base_model_name_or_path: str | None = None
):
    """``(backbone, processor, base_model_name_or_path)`` for `from_clip`: the backbone loaded from a Hub id or local
    path, or the given `CLIPModel` checked; the processor given, else loaded from where the backbone came from; and
    the Hub id to record (``base_model_name_or_path``, else the path, else the backbone's `name_or_path`)."""
    if isinstance(clip_model_or_path, (str, os.PathLike)):
        clip_model = load_backbone(str(clip_model_or_path), revision=revision)
        processor = processor or load_processor(str(clip_model_or_path), revision=revision)
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
        processor = load_processor(base_model_name_or_path, revision=revision)
    if getattr(processor, "tokenizer", None) is None:
        raise TypeError(f"`processor` must carry a tokenizer (a CLIPProcessor); got {type(processor).__name__}.")
    return clip_model, processor, base_model_name_or_path


# ----------------------------------------------------------------------------------------------------- loading
def load_adapter(
    cls,
    path_or_repo,
    *,
    config=None,
    clip_model=None,
    processor=None,
    dtype=None,
    device_map=None,
    check_backbone: bool = True,
    rebuild_text_embeddings: bool = False,
    class_names=None,
    output_loading_info: bool = False,
    **kwargs,
):
    """Implements `XMAdapterForImageClassification.from_pretrained` (see there)."""
    if torch.get_default_device().type == "meta":  # transformers' own refusal, in its words
        raise RuntimeError(
            "You are using `from_pretrained` with a meta device context manager or `torch.set_default_device('meta')`"
            ": the loaded tensors would be discarded. Load without it (build on meta with `cls(config)`)."
        )
    state_dict = kwargs.pop("state_dict", None)
    if path_or_repo is None or state_dict is not None:
        if path_or_repo is not None or not isinstance(config, XMAdapterConfig) or state_dict is None:
            raise ValueError(
                "from_pretrained(None, config=..., state_dict=...) builds a model from an `XMAdapterConfig` and a "
                "state dict (as transformers does); give both and no path, or a path alone."
            )
        return _from_state_dict(cls, copy.deepcopy(config), state_dict, clip_model, processor, output_loading_info)
    path_or_repo = str(path_or_repo)
    if dtype is None and "torch_dtype" in kwargs:  # the name transformers 4 used
        dtype = kwargs.pop("torch_dtype")
    hub, backbone_kwargs, overrides = _split_kwargs(dict(kwargs))
    _check_override_names(overrides)  # before any file is read
    adapter_dtype = _adapter_dtype(dtype)
    if isinstance(config, XMAdapterConfig):
        config = copy.deepcopy(config)  # loading records things in the config: never in the caller's
    else:
        config = XMAdapterConfig.from_pretrained(resolve_file(path_or_repo, CONFIG_NAME, hub))
    _override_config(config, overrides)
    if "attn_implementation" in backbone_kwargs:  # for a `clip_model=` too, as transformers sets it on the config
        config._attn_implementation = backbone_kwargs["attn_implementation"]
    integrity.check_version(config)
    if is_pending(config):  # `save_pretrained` refuses these: a config written by hand, or by another tool
        raise ValueError(
            f"{path_or_repo!r} holds no fitted adapter: its config says method='auto', a model that never chose its "
            "method (`save_pretrained` refuses to save one). Fit it with `xmadapter_hf.fit` and save the result."
        )
    weights_path = resolve_file(path_or_repo, SAFE_WEIGHTS_NAME, hub)
    shapes, metadata = read_header(weights_path)
    integrity.check_save_id(config, metadata, path_or_repo)
    # The config's sizes are untrusted: compare them with the file before allocating anything they describe.
    tolerated = integrity.check_sizes(cls, config, shapes)
    # The tensors' bytes, before any backbone is loaded (or downloaded) for them: a damaged file fails fast.
    tensors, _ = read_weights(weights_path)
    integrity.check_tensors(tensors, metadata, _weights_name(weights_path, path_or_repo), config.xmadapter_version)
    # transformers 5's loading info: sets of keys (`LoadStateDictInfo.to_dict()`), a list of error messages
    info = {"missing_keys": set(tolerated), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    backbone_hub = {k: v for k, v in hub.items() if k not in ("revision", "subfolder")}
    if clip_model is None and config.backbone_init_seed is None:
        clip_model, clip_info = _load_config_backbone(config, dtype, device_map, backbone_hub, backbone_kwargs)
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            info[key] |= {f"clip.{k}" if isinstance(k, str) else tuple(k) for k in clip_info.get(key) or []}
        info["error_msgs"] += list(clip_info.get("error_msgs") or [])
    if processor is None:
        processor = _load_processor_quietly(config, path_or_repo, hub, backbone_hub)
    # a backbone built from `backbone_config` (`cls(config)`, seeded) is rebuilt the same; the checks below confirm it
    model = cls(config, clip_model=clip_model, processor=processor)
    if clip_model is None and adapter_dtype is not None:
        model.clip.to(adapter_dtype)
    _load_tensors(model, tensors)
    del tensors  # the model holds its own copy: free the file's before the checks below
    model.to(next(model.clip.parameters()).device)
    if adapter_dtype is not None:
        model.cast_adapter(adapter_dtype)
    bb.freeze(model.clip)
    if rebuild_text_embeddings:
        prompts.encode_class_texts(model)
    if check_backbone:
        integrity.check_backbone_identity(model)
    integrity.warn_tolerated(model, path_or_repo, tolerated)
    if class_names is not None:
        classes.replace_classes(model, class_names)
    model.eval()
    return (model, info) if output_loading_info else model


def _from_state_dict(cls, config, state_dict: dict, clip_model, processor, output_loading_info: bool):
    """`from_pretrained(None, config=, state_dict=)`: the model `cls(config)` builds (the backbone from
    ``clip_model``, else from `config.backbone_config`), with the state dict's tensors; its `clip.*` tensors, when it
    has them, go to the backbone. The adapter's tensors are checked as a file's are (sizes, finite values)."""
    adapter = {k: v for k, v in state_dict.items() if not k.startswith("clip.")}
    tolerated = integrity.check_sizes(cls, config, {k: tuple(v.shape) for k, v in adapter.items()})
    integrity.check_finite(adapter, "The state dict holds", "it would predict nothing meaningful.")
    model = cls(config, clip_model=clip_model, processor=processor)
    backbone = {k.removeprefix("clip."): v for k, v in state_dict.items() if k.startswith("clip.")}
    missing, unexpected = [], []
    if backbone:
        result = model.clip.load_state_dict(backbone, strict=False)
        missing, unexpected = [f"clip.{k}" for k in result.missing_keys], [f"clip.{k}" for k in result.unexpected_keys]
    _load_tensors(model, adapter)
    bb.freeze(model.clip)
    model.eval()
    info = {"missing_keys": {*tolerated, *missing}, "unexpected_keys": set(unexpected), "mismatched_keys": set()}
    info["error_msgs"] = []
    return (model, info) if output_loading_info else model


def _weights_name(weights_path: str, path_or_repo: str) -> str:
    """How the errors name the weights file: its path, and for a Hub download the repo it came from."""
    if Path(path_or_repo).is_dir():
        return repr(weights_path)
    return f"{weights_path!r} (downloaded from the Hub repo {path_or_repo!r})"


def _split_kwargs(kwargs: dict) -> tuple[dict, dict, dict]:
    """Hub arguments, backbone arguments, and the rest (config attributes to override, checked by the caller)."""
    hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
    backbone = {k: kwargs.pop(k) for k in ("attn_implementation",) if k in kwargs}
    for key in list(kwargs):
        if key.startswith("_") or key in _IGNORED_KEYS:
            kwargs.pop(key)
    return hub, backbone, kwargs


def _check_override_names(overrides: dict) -> None:
    """As transformers' `from_pretrained(path, output_hidden_states=True, ...)`, keyword arguments may name config
    attributes (set on the loaded copy by `_override_config`); anything else is refused before any file is read."""
    reference = XMAdapterConfig()  # every registered method's fields are attributes of any config
    unknown = sorted(key for key in overrides if not hasattr(reference, key))
    if unknown:
        raise TypeError(
            f"from_pretrained got unexpected keyword arguments: {unknown} (neither loading options nor attributes "
            "of XMAdapterConfig)."
        )


def _override_config(config: XMAdapterConfig, overrides: dict) -> None:
    """Sets the config attributes given to `from_pretrained` on the (copied) config. The config's own checks apply:
    a `num_labels` other than the saved classes' is refused (`class_names=` gives an adapter other classes)."""
    for key, value in overrides.items():
        setattr(config, key, value)


def _adapter_dtype(dtype) -> torch.dtype | None:
    """The dtype the adapter is cast to: `None` (as saved) for `None` and `"auto"`, else a floating torch dtype."""
    if dtype is None or dtype == "auto":
        return None
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise TypeError(f'`dtype` must be a floating torch.dtype (or its name, or "auto"); got {dtype!r}.')
    return resolved


def _load_config_backbone(config, dtype, device_map, backbone_hub, backbone_kwargs):
    if not config.base_model_name_or_path:
        raise ValueError("The checkpoint's config names no backbone (`base_model_name_or_path`): pass `clip_model=`.")
    try:
        return load_backbone(
            config.base_model_name_or_path, config.base_model_revision, with_info=True, dtype=dtype,
            device_map=device_map, **backbone_hub, **backbone_kwargs,
        )  # fmt: skip
    except OSError as error:
        raise OSError(
            f"Could not load the backbone {config.base_model_name_or_path!r} (revision "
            f"{config.base_model_revision or 'main'}) that this adapter needs: {error}"
        ) from error


def _load_processor_quietly(config, path_or_repo, hub, backbone_hub):
    """The backbone's processor (tokenizer included) if it can be had; else the saved image settings; else None."""
    try:
        if config.base_model_name_or_path:
            return load_processor(config.base_model_name_or_path, config.base_model_revision, **backbone_hub)
    except (OSError, ValueError):
        pass
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(path_or_repo, **hub)
    except (OSError, ValueError):
        return None


def _load_tensors(model, tensors: dict[str, torch.Tensor]) -> None:
    """Loads the (header-checked) adapter tensors; tensors added after 0.1.0 may be absent and stay zero."""
    learned = [tensors.get(f"method.{name}") for name in model.method.cache_parameters]
    half = [t.dtype for t in learned if t is not None and t.dtype in (torch.float16, torch.bfloat16)]
    if half:
        model.half_cache(half[0])  # saved after `half_cache()`: keep the learned cache parameters in half precision
    model.load_state_dict(tensors, strict=False)
