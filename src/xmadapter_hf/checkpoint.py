"""Adapter-only checkpoints: atomic writes, loading by path or Hub id, integrity checks.

A checkpoint is `config.json` + `model.safetensors` (adapter tensors only, never a `clip.*` key) + the processor's
`preprocessor_config.json` (settings only, so that `pipeline("image-classification", model=...)` works). Each file is
written under a temporary name in the target directory and moved into place with `os.replace`; since two replaces
are not atomic together, the config and the safetensors metadata carry the same `save_id`, checked on load.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import __version__
from . import backbone as bb
from . import functional as Fn
from .configuration_xmadapter import XMAdapterConfig

__all__ = [
    "CONFIG_NAME",
    "PROCESSOR_NAME",
    "WEIGHTS_NAME",
    "atomic_write",
    "load_adapter",
    "load_backbone",
    "load_processor",
    "read_header",
    "read_weights",
    "save_adapter",
    "storage_dtype",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_NAME = "preprocessor_config.json"
_HUB_KEYS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies", "subfolder")
# Keyword arguments that transformers' Auto classes and pipeline pass along and that mean nothing to an adapter.
_IGNORED_KEYS = (
    "trust_remote_code",
    "use_safetensors",
    "weights_only",
    "code_revision",
    "adapter_kwargs",
)
#: Probe cosine below this means the backbone is not the one the adapter was built with (bf16 loads stay above).
PROBE_TOLERANCE = 0.99
#: The learned cache keys of `tip-adapter-f` and `xmadapter` (half precision after `half_cache()`).
LEARNED_KEYS = "method.cache_keys"
#: Adapter tensors added after version 0.1.0: a checkpoint without one still loads, with a warning.
_ADDED_SINCE_0_1_0 = {
    "probe_image_embed": (
        "a fingerprint of the vision tower, so the backbone's vision tower could not be checked. This load records "
        "the fingerprint of the backbone it was given; `save_pretrained` keeps it"
    ),
}


def atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Calls ``write(tmp_path)`` on a temporary file beside ``target`` and `os.replace`s it into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_text(text: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)

    return write


def save_adapter(model, save_directory, tensors: dict[str, torch.Tensor]) -> Path:
    """Writes an adapter checkpoint (see the module docstring); returns the directory."""
    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"Cannot save into {str(directory)!r}: it exists and is not a directory.")
    leaked = sorted(k for k in tensors if k.startswith("clip."))
    if leaked:
        raise ValueError(f"Refusing to write backbone tensors into an adapter checkpoint: {leaked[:5]}.")
    config = model.config
    save_id = uuid.uuid4().hex
    config_dict = config.to_dict()
    config_dict.update(save_id=save_id, architectures=[type(model).__name__], xmadapter_version=__version__)
    config_text = json.dumps(config_dict, indent=2, sort_keys=True, default=str) + "\n"
    tensors = {k: v.detach().to("cpu", storage_dtype(model, k, v)).contiguous().clone() for k, v in tensors.items()}
    metadata = {"format": "pt", "save_id": save_id, "xmadapter_version": __version__}
    processor_text = None
    image_processor = getattr(model.processor, "image_processor", model.processor)
    if image_processor is not None and hasattr(image_processor, "to_json_string"):
        processor_text = image_processor.to_json_string()
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(tensors, path, metadata=metadata))
    atomic_write(directory / CONFIG_NAME, _write_text(config_text))
    if processor_text is not None:
        atomic_write(directory / PROCESSOR_NAME, _write_text(processor_text))
    config.save_id = save_id
    return directory


def storage_dtype(model, name: str, tensor: torch.Tensor) -> torch.dtype:
    """The dtype an adapter tensor is written in, whatever dtype the model runs in.

    The cache is stored in `config.cache_dtype`: the frozen cache ``E`` (`cache_embeds`) always, the learned keys only
    after `half_cache()` (which freezes them). Every other floating tensor is written in float32, so that an adapter
    saved after `model.to(torch.bfloat16)` (`bf16_full_eval` does that) reloads with float32 trainable weights.
    """
    if not tensor.is_floating_point():
        return tensor.dtype
    cache_dtype = getattr(torch, model.config.cache_dtype)
    if name == "cache_embeds":
        return cache_dtype
    learned = getattr(model.method, "cache_keys", None)
    if name == LEARNED_KEYS and learned is not None and not learned.requires_grad:
        return cache_dtype
    return torch.float32


def _resolve(path_or_repo: str, filename: str, hub_kwargs: dict) -> str:
    local = Path(path_or_repo)
    if local.is_dir():
        candidate = local / hub_kwargs.get("subfolder", "") / filename
        if not candidate.is_file():
            raise OSError(f"{str(local)!r} holds no {filename}: it is not an xmadapter-hf checkpoint directory.")
        return str(candidate)
    if local.exists():
        raise OSError(f"{str(local)!r} is a file; expected a checkpoint directory or a Hub repo id.")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=str(path_or_repo), filename=filename, **hub_kwargs)
    except Exception as error:  # the hub client raises many types; say which file of which repo is missing
        raise OSError(f"Could not get {filename} of {path_or_repo!r}: {type(error).__name__}: {error}") from error


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


def _check_version(config: XMAdapterConfig) -> None:
    written = config.xmadapter_version or "0"
    try:
        major = int(written.split(".")[0])
    except ValueError as error:
        raise ValueError(f"Unreadable `xmadapter_version` {written!r} in the checkpoint's config.") from error
    if major > int(__version__.split(".")[0]):
        raise ValueError(
            f"This checkpoint was written by xmadapter-hf {written}, newer than the installed {__version__}: "
            "upgrade xmadapter-hf (`pip install -U xmadapter-hf`) to load it."
        )


def _split_kwargs(kwargs: dict) -> tuple[dict, dict]:
    hub = {k: kwargs.pop(k) for k in _HUB_KEYS if k in kwargs}
    backbone = {k: kwargs.pop(k) for k in ("attn_implementation",) if k in kwargs}
    for key in list(kwargs):
        if key.startswith("_") or key in _IGNORED_KEYS:
            kwargs.pop(key)
    if kwargs:
        raise TypeError(f"from_pretrained got unexpected keyword arguments: {sorted(kwargs)}.")
    return hub, backbone


def _adapter_dtype(dtype) -> torch.dtype | None:
    """The dtype the adapter is cast to: `None` (as saved) for `None` and `"auto"`, else a floating torch dtype."""
    if dtype is None or dtype == "auto":
        return None
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise TypeError(f'`dtype` must be a floating torch.dtype (or its name, or "auto"); got {dtype!r}.')
    return resolved


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
    output_loading_info: bool = False,
    **kwargs,
):
    """Implements `XMAdapterForImageClassification.from_pretrained` (see there)."""
    path_or_repo = str(path_or_repo)
    if dtype is None and "torch_dtype" in kwargs:  # the name transformers 4 used
        dtype = kwargs.pop("torch_dtype")
    hub, backbone_kwargs = _split_kwargs(dict(kwargs))
    adapter_dtype = _adapter_dtype(dtype)
    if isinstance(config, XMAdapterConfig):
        config = copy.deepcopy(config)  # loading records things in the config: never in the caller's
    else:
        config = XMAdapterConfig.from_pretrained(_resolve(path_or_repo, CONFIG_NAME, hub))
    _check_version(config)
    weights_path = _resolve(path_or_repo, WEIGHTS_NAME, hub)
    shapes, metadata = read_header(weights_path)
    if config.save_id is not None and metadata.get("save_id") != config.save_id:
        raise ValueError(
            f"{path_or_repo!r}: config.json (save id {config.save_id}) and model.safetensors (save id "
            f"{metadata.get('save_id')}) come from different saves, probably an interrupted save_pretrained. "
            "Save the adapter again."
        )
    # The config's sizes are untrusted: compare them with the file before allocating anything they describe.
    tolerated = _check_sizes(cls, config, shapes)
    info = {"missing_keys": list(tolerated), "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    backbone_hub = {k: v for k, v in hub.items() if k not in ("revision", "subfolder")}
    if clip_model is None:
        clip_model, clip_info = _load_config_backbone(config, dtype, device_map, backbone_hub, backbone_kwargs)
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            info[key] += [f"clip.{k}" if isinstance(k, str) else k for k in clip_info.get(key) or []]
        info["error_msgs"] += list(clip_info.get("error_msgs") or [])
    if processor is None:
        processor = _load_processor_quietly(config, path_or_repo, hub, backbone_hub)
    model = cls(config, clip_model=clip_model, processor=processor)
    tensors, _ = read_weights(weights_path)
    _load_tensors(model, tensors)
    model.to(next(clip_model.parameters()).device)
    if adapter_dtype is not None:
        model.cast_adapter(adapter_dtype)
    bb.freeze(model.clip)
    if rebuild_text_embeddings:
        _rebuild_text(model)
    if check_backbone:
        _check_backbone_identity(model)
    for key in tolerated:
        logger.warning(
            "%r was saved by xmadapter-hf %s without `%s`: %s.", path_or_repo, config.xmadapter_version, key,
            _ADDED_SINCE_0_1_0[key],
        )  # fmt: skip
        if key == "probe_image_embed":
            with torch.no_grad():
                model.probe_image_embed.copy_(bb.encode_probe_image(model.clip))
    model.eval()
    return (model, info) if output_loading_info else model


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


def _check_sizes(cls, config, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Compares the adapter the config describes with the tensors in the file's header; returns the tolerated
    missing keys (tensors added after 0.1.0). Nothing of the described size is allocated (meta device)."""
    dim = config.projection_dim or (shapes.get("class_embeds") or (None, None))[-1]
    if not dim:
        raise ValueError("The checkpoint records no `projection_dim` and holds no `class_embeds`: it is incomplete.")
    expected = cls.expected_adapter_shapes(config, dim)
    absent = sorted(set(expected) - set(shapes))
    tolerated = [k for k in absent if k in _ADDED_SINCE_0_1_0]
    missing = [k for k in absent if k not in _ADDED_SINCE_0_1_0]
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "The checkpoint does not match the adapter its config describes: "
            + (f"missing tensors {missing}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected tensors {unexpected}" if unexpected else "")
            + "."
        )
    for key, shape in sorted(shapes.items()):
        if shape != expected[key]:
            sizes = ", ".join(
                f"{name}={getattr(config, name)!r}" for name in ("cache_size", "projection_dim", "text_dim")
            )
            raise ValueError(
                f"config.json does not match model.safetensors: tensor {key!r} has shape {shape} in the file but the "
                f"config describes {expected[key]} ({sizes}, {config.num_classes} classes). The config was edited or "
                "corrupted; restore the config.json saved with these weights, or save the adapter again."
            )
    return tolerated


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
    learned = tensors.get(LEARNED_KEYS)
    if learned is not None and learned.dtype in (torch.float16, torch.bfloat16):
        model.half_cache(learned.dtype)  # saved after `half_cache()`: keep the learned keys in half precision
    model.load_state_dict(tensors, strict=False)


def _rebuild_text(model) -> None:
    """Re-encodes the class prompts and the probe with the model's (new) backbone."""
    from .prompts import class_text_embeddings

    tokenizer = getattr(model.processor, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("`rebuild_text_embeddings=True` needs the backbone's tokenizer: pass `processor=`.")
    config = model.config
    weights = class_text_embeddings(model.clip, tokenizer, config.class_names, config.prompt_templates)
    probe = Fn.l2_normalize(bb.encode_texts(model.clip, tokenizer, [bb.PROBE_TEXT]))[0]
    with torch.no_grad():
        model.class_embeds.copy_(weights)
        model.probe_text_embed.copy_(probe)
    config.backbone_fingerprint = {
        **(config.backbone_fingerprint or {}),
        "architecture_hash": bb.architecture_hash(model.clip),
    }


def _check_backbone_identity(model) -> None:
    fingerprint = model.config.backbone_fingerprint or {}
    stored = fingerprint.get("architecture_hash")
    if stored is not None and stored != bb.architecture_hash(model.clip):
        raise ValueError(
            "The backbone's architecture (sizes, layers, heads, image/patch size, vocabulary) differs from the one "
            f"this adapter was built on ({model.config.base_model_name_or_path!r}); load the right backbone or pass "
            "`check_backbone=False`."
        )
    tokenizer = getattr(model.processor, "tokenizer", None)
    if tokenizer is not None:
        _check_probe(
            model.probe_text_embed,
            lambda: Fn.l2_normalize(bb.encode_texts(model.clip, tokenizer, [bb.PROBE_TEXT]))[0],
            "text encoder",
            "its class text embeddings would be wrong. Load the backbone named in the config at its revision, pass "
            "`rebuild_text_embeddings=True` to re-encode the class prompts with this backbone, or "
            "`check_backbone=False`.",
        )
    _check_probe(
        model.probe_image_embed,
        lambda: bb.encode_probe_image(model.clip),
        "vision encoder",
        "the cache keys came from the other vision tower, so predictions would be near chance. Load the backbone "
        "named in the config at its revision; or load with `check_backbone=False` and call `build_cache` again with "
        "this backbone; or pass `check_backbone=False` to use it as it is.",
    )


def _check_probe(stored: torch.Tensor, encode: Callable[[], torch.Tensor], tower: str, consequence: str) -> None:
    """Compares a stored probe embedding (none stored: all zeros) with the backbone's, by cosine."""
    if not torch.any(stored != 0):
        return
    probe = encode()
    cosine = float(probe @ stored.float().to(probe.device))
    if cosine < PROBE_TOLERANCE:
        raise ValueError(
            f"The backbone's {tower} does not match the one this adapter was built with (probe cosine {cosine:.4f} "
            f"< {PROBE_TOLERANCE}): {consequence}"
        )
