"""Adapter-only checkpoints: atomic writes, loading by path or Hub id, integrity checks.

A checkpoint is `config.json` + `model.safetensors` (adapter tensors only, never a `clip.*` key) + the processor's
`preprocessor_config.json` (settings only, so that `pipeline("image-classification", model=...)` works). Each file is
written under a temporary name in the target directory and moved into place with `os.replace`; since two replaces
are not atomic together, the config and the safetensors metadata carry the same `save_id`, checked on load.
"""

from __future__ import annotations

import json
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
from .configuration import XMAdapterConfig

__all__ = [
    "CONFIG_NAME",
    "PROCESSOR_NAME",
    "WEIGHTS_NAME",
    "atomic_write",
    "load_adapter",
    "load_backbone",
    "load_processor",
    "read_weights",
    "save_adapter",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PROCESSOR_NAME = "preprocessor_config.json"
_HUB_KEYS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "proxies", "subfolder")
# Keyword arguments that transformers' Auto classes and pipeline pass along and that mean nothing to an adapter.
_IGNORED_KEYS = (
    "trust_remote_code",
    "use_safetensors",
    "weights_only",
    "output_loading_info",
    "code_revision",
    "adapter_kwargs",
)
#: Probe cosine below this means the backbone is not the one the adapter was built with (bf16 loads stay above).
PROBE_TOLERANCE = 0.99


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
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
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


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a truncated or corrupt file raises `OSError` naming it."""
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise OSError(f"{path!r} is not a readable safetensors file (truncated or corrupt?): {error}") from error
    return tensors, metadata


def load_backbone(name_or_path: str, revision: str | None = None, **kwargs):
    """Loads a `CLIPModel` (frozen, eval mode) by Hub id or local path."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(name_or_path, revision=revision or "main", **kwargs)
    bb.freeze(model)  # from_pretrained recreates parameters with requires_grad=True
    return model


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
    **kwargs,
):
    """Implements `XMAdapterForImageClassification.from_pretrained` (see there)."""
    path_or_repo = str(path_or_repo)
    hub, backbone_kwargs = _split_kwargs(dict(kwargs))
    if not isinstance(config, XMAdapterConfig):
        config = XMAdapterConfig.from_pretrained(_resolve(path_or_repo, CONFIG_NAME, hub))
    _check_version(config)
    tensors, metadata = read_weights(_resolve(path_or_repo, WEIGHTS_NAME, hub))
    if config.save_id is not None and metadata.get("save_id") != config.save_id:
        raise ValueError(
            f"{path_or_repo!r}: config.json (save id {config.save_id}) and model.safetensors (save id "
            f"{metadata.get('save_id')}) come from different saves, probably an interrupted save_pretrained. "
            "Save the adapter again."
        )
    backbone_hub = {k: v for k, v in hub.items() if k not in ("revision", "subfolder")}
    if clip_model is None:
        if not config.base_model_name_or_path:
            raise ValueError(
                "The checkpoint's config names no backbone (`base_model_name_or_path`): pass `clip_model=`."
            )
        try:
            clip_model = load_backbone(
                config.base_model_name_or_path, config.base_model_revision, dtype=dtype, device_map=device_map,
                **backbone_hub, **backbone_kwargs,
            )  # fmt: skip
        except OSError as error:
            raise OSError(
                f"Could not load the backbone {config.base_model_name_or_path!r} (revision "
                f"{config.base_model_revision or 'main'}) that this adapter needs: {error}"
            ) from error
    if processor is None:
        processor = _load_processor_quietly(config, path_or_repo, hub, backbone_hub)
    model = cls(config, clip_model=clip_model, processor=processor)
    _load_tensors(model, tensors)
    device = next(clip_model.parameters()).device
    model.to(device)
    bb.freeze(model.clip)
    if rebuild_text_embeddings:
        _rebuild_text(model)
    if check_backbone:
        _check_backbone_identity(model)
    model.eval()
    return model


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
    expected = model.adapter_state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            "The checkpoint does not match the adapter its config describes: "
            + (f"missing tensors {missing}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected tensors {unexpected}" if unexpected else "")
            + "."
        )
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"Tensor {key!r} has shape {tuple(value.shape)} in the checkpoint but the adapter expects "
                f"{tuple(expected[key].shape)} (different backbone projection dim or cache size?)."
            )
    learned = tensors.get("method.cache_keys")
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
    if tokenizer is None or not torch.any(model.probe_text_embed != 0):
        return
    probe = Fn.l2_normalize(bb.encode_texts(model.clip, tokenizer, [bb.PROBE_TEXT]))[0]
    cosine = float(probe @ model.probe_text_embed.float().to(probe.device))
    if cosine < PROBE_TOLERANCE:
        raise ValueError(
            f"The backbone's text encoder does not match the one this adapter was built with (probe cosine "
            f"{cosine:.4f} < {PROBE_TOLERANCE}): its class text embeddings would be wrong. Load the backbone named in "
            "the config at its revision, pass `rebuild_text_embeddings=True` to re-encode the class prompts with this "
            "backbone, or `check_backbone=False`."
        )
