"""What a load checks before it trusts an adapter checkpoint (untrusted input) and the backbone it goes with.

- the version that wrote it (`packaging` versions: a newer major version is refused);
- the config and the weights come from the same save (the `save_id` both carry; an interrupted save leaves two);
- the tensors' bytes against the digest recorded at save (`tensors_digest` in the safetensors metadata, since 0.3.0:
  damaged bytes under an intact header would otherwise load as silent NaNs or noise), and every floating adapter
  tensor is finite (`check_tensors`); `save_adapter` refuses non-finite tensors before writing anything;
- the config's sizes against the tensor shapes in the safetensors header, before any adapter tensor is allocated (a
  config claiming `cache_size` 10^10 would otherwise allocate 1.3 TB);
- the backbone: its architecture hash, and the embeddings of a probe text and a probe image against the stored ones,
  compared by cosine (float tensors are compared with a tolerance, never by a hash of their bits).
"""

import hashlib
import json
import logging
from collections.abc import Callable, Iterator

import torch
from packaging.version import InvalidVersion, Version

from . import __version__
from . import backbone as bb

__all__ = ["ADDED_SINCE_0_1_0", "DIGEST_ALGORITHM", "DIGEST_KEY", "PROBE_TOLERANCE", "check_backbone_identity",
           "check_finite", "check_save_id", "check_sizes", "check_tensors", "check_version", "digest_chunks",
           "tensors_digest"]  # fmt: skip

logger = logging.getLogger(__name__)

#: Probe cosine below this means the backbone is not the one the adapter was built with (bf16 loads stay above).
PROBE_TOLERANCE = 0.99
#: Adapter tensors added after version 0.1.0: a checkpoint without one still loads, with a warning.
ADDED_SINCE_0_1_0 = {
    "probe_image_embed": (
        "a fingerprint of the vision tower, so the backbone's vision tower could not be checked. This load records "
        "the fingerprint of the backbone it was given; `save_pretrained` keeps it"
    ),
}


#: The safetensors metadata key holding the digest of the adapter's tensors (written since 0.3.0).
DIGEST_KEY = "tensors_digest"
#: The `hashlib` algorithm of new digests; the recorded value names its own (``"sha256:<hex>"``), so a later version
#: may change it and still check older files. benchmarks/bench_digest.py measures the candidates.
DIGEST_ALGORITHM = "sha256"
# Fixed-length hashlib algorithms every Python has (the shake ones need a length).
_KNOWN_ALGORITHMS = frozenset(a for a in hashlib.algorithms_guaranteed if not a.startswith("shake"))


def digest_chunks(tensors: dict[str, torch.Tensor]) -> Iterator[bytes | memoryview]:
    """What the digest hashes, in order: for each tensor in key order, a JSON line of its name, dtype and shape, then
    its bytes as they lie in memory, which are the bytes safetensors stores (row-major, little-endian on the
    platforms torch supports). Zero-copy views: the digest allocates nothing the size of a tensor."""
    for key in sorted(tensors):
        tensor = tensors[key].detach()
        header = [key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]
        yield (json.dumps(header) + "\n").encode()
        flat = tensor.to("cpu").contiguous().reshape(-1)
        yield memoryview(flat.view(torch.uint8).numpy())  # any dtype (bf16 included) seen as its bytes


def tensors_digest(tensors: dict[str, torch.Tensor], algorithm: str = DIGEST_ALGORITHM) -> str:
    """``"<algorithm>:<hex digest>"`` of `digest_chunks(tensors)`, with a `hashlib` algorithm (sha256 by default).

    ```python
    >>> import torch
    >>> from xmadapter_hf.integrity import tensors_digest
    >>> tensors_digest({"w": torch.zeros(2)})[:7]
    'sha256:'
    ```
    """
    hasher = hashlib.new(algorithm)
    for chunk in digest_chunks(tensors):
        hasher.update(chunk)  # hashlib releases the GIL on large buffers
    return f"{algorithm}:{hasher.hexdigest()}"


def check_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str, written_by: str) -> None:
    """The tensors read from ``path`` are the bytes that were saved (the recorded digest) and are all finite.

    A file without a digest (written before 0.3.0, by ``written_by``) loads with a warning; a digest that does not
    match raises `OSError` naming the file; a non-finite floating tensor raises `ValueError` naming it.
    """
    recorded = metadata.get(DIGEST_KEY)
    if recorded is None:
        logger.warning(
            "%s was saved by xmadapter-hf %s, which recorded no digest of its tensors: damage to its bytes cannot be "
            "detected. Save the adapter again to record one.", path, written_by or "(version unknown)",
        )  # fmt: skip
    else:
        algorithm = recorded.partition(":")[0]
        if algorithm not in _KNOWN_ALGORITHMS:
            raise OSError(
                f"{path} records a tensor digest of an algorithm this version does not know ({recorded[:24]!r}...): "
                "it was written by a newer xmadapter-hf (upgrade it to load this file) or edited."
            )
        if tensors_digest(tensors, algorithm) != recorded:
            raise OSError(
                f"{path} is damaged or was edited: its tensors do not match the {algorithm} digest recorded when it "
                "was saved. Restore it from a copy (a Hub download: `from_pretrained(..., force_download=True)`), or "
                "save the adapter again."
            )
    check_finite(
        tensors, f"{path} holds", "an adapter with them predicts nothing meaningful. This version refuses to save "
        "one, so the file was written by an older version or edited: train or build the adapter again.",
    )  # fmt: skip


def check_finite(tensors: dict[str, torch.Tensor], where: str, remedy: str) -> None:
    """Raises `ValueError` ("``where`` non-finite values in tensor ...: ``remedy``") naming the first floating tensor,
    in key order, that holds a NaN or an infinity.

    Every element is finite exactly when the smallest and the largest are (`torch.aminmax` propagates NaN): one
    reduction, which allocates nothing the tensor's size (`torch.isfinite(t).all()` would make a boolean copy of a
    100k-class cache). Its cost is measured by benchmarks/bench_digest.py.
    """
    for key in sorted(tensors):
        tensor = tensors[key].detach()
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all()):
            continue
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"{where} non-finite values in tensor {key!r} ({bad} NaN or infinite of {tensor.numel()}): {remedy}"
        )


def check_version(config) -> None:
    """Refuses a config written by a newer major version of the library than the installed one."""
    written = config.xmadapter_version or "0"
    try:
        newer = Version(written).major > Version(__version__).major
    except InvalidVersion as error:
        raise ValueError(f"Unreadable `xmadapter_version` {written!r} in the checkpoint's config.") from error
    if newer:
        raise ValueError(
            f"This checkpoint was written by xmadapter-hf {written}, newer than the installed {__version__}: "
            "upgrade xmadapter-hf (`pip install -U xmadapter-hf`) to load it."
        )


def check_save_id(config, metadata: dict[str, str], where: str) -> None:
    """Refuses a config and weights written by two different saves (an interrupted `save_pretrained`)."""
    if config.save_id is not None and metadata.get("save_id") != config.save_id:
        raise ValueError(
            f"{where!r}: config.json (save id {config.save_id}) and model.safetensors (save id "
            f"{metadata.get('save_id')}) come from different saves, probably an interrupted save_pretrained. "
            "Save the adapter again."
        )


def check_sizes(model_class, config, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Compares the adapter the config describes with the tensors in the file's header; returns the tolerated
    missing keys (tensors added after 0.1.0). Nothing of the described size is allocated (meta device)."""
    dim = config.projection_dim or (shapes.get("class_embeds") or (None, None))[-1]
    if not dim:
        raise ValueError("The checkpoint records no `projection_dim` and holds no `class_embeds`: it is incomplete.")
    expected = model_class.expected_adapter_shapes(config, dim)
    absent = sorted(set(expected) - set(shapes))
    tolerated = [k for k in absent if k in ADDED_SINCE_0_1_0]
    missing = [k for k in absent if k not in ADDED_SINCE_0_1_0]
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
                f"{name}={getattr(config, name, None)!r}" for name in ("cache_size", "projection_dim", "text_dim")
            )
            raise ValueError(
                f"config.json does not match model.safetensors: tensor {key!r} has shape {shape} in the file but the "
                f"config describes {expected[key]} ({sizes}, {config.num_classes} classes). The config was edited or "
                "corrupted; restore the config.json saved with these weights, or save the adapter again."
            )
    return tolerated


def warn_tolerated(model, where: str, tolerated: list[str]) -> None:
    """Warns about each tolerated missing tensor and fills in what can be taken from the backbone in use."""
    for key in tolerated:
        logger.warning(
            "%r was saved by xmadapter-hf %s without `%s`: %s.", where, model.config.xmadapter_version, key,
            ADDED_SINCE_0_1_0[key],
        )  # fmt: skip
        if key == "probe_image_embed":
            with torch.no_grad():
                model.probe_image_embed.copy_(bb.encode_probe_image(model.clip))


def check_backbone_identity(model) -> None:
    """The backbone is the one the adapter was built on: architecture hash, then the text and image probes."""
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
            lambda: bb.encode_probe_text(model.clip, tokenizer),
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
