"""The shipped demo CLIP: where it is, and the check of its weights' sha256 before anything loads them."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "DEMO_CLIP_FILES",
    "DEMO_CLIP_SHA256",
    "DemoCheckpointError",
    "demo_clip_path",
    "load_demo_clip",
    "sha256_of",
    "verify_demo_clip",
]

#: sha256 of the shipped `model.safetensors` (written by `python -m xmadapter_hf.demo.pretrain --seed 0`).
DEMO_CLIP_SHA256 = "ac721b0479e89f097db063b0214d835402fef7defde0b21c36f81f33ba1e8640"
#: The files of the shipped checkpoint (the `save_pretrained` layout of a `CLIPModel` and its `CLIPProcessor`).
DEMO_CLIP_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "pretraining.json",
)
_WEIGHTS = "model.safetensors"
_verified: dict[tuple[str, int, int], str] = {}


class DemoCheckpointError(OSError):
    """The demo CLIP's files are missing or its weights are not the shipped ones."""


def sha256_of(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_demo_clip(directory: str | os.PathLike, expected_sha256: str = DEMO_CLIP_SHA256) -> str:
    """Checks that ``directory`` holds the demo CLIP's files and that its weights have the expected sha256.

    Returns:
        `str`: the directory.

    Raises:
        DemoCheckpointError: a file is missing, or the weights' sha256 differs (a damaged or modified file).
    """
    directory = Path(directory)
    missing = [name for name in DEMO_CLIP_FILES if not (directory / name).is_file()]
    if missing:
        raise DemoCheckpointError(
            f"The demo CLIP at {str(directory)!r} lacks {', '.join(missing)}: reinstall xmadapter-hf, or rebuild it "
            "with `python -m xmadapter_hf.demo.pretrain --output DIR --seed 0`."
        )
    weights = directory / _WEIGHTS
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if _verified.get(key) != expected_sha256:
        found = sha256_of(weights)
        if found != expected_sha256:
            raise DemoCheckpointError(
                f"The demo CLIP's weights {str(weights)!r} have sha256 {found}, not the shipped {expected_sha256}: "
                "the file is damaged or was modified. Reinstall xmadapter-hf, or rebuild the weights with "
                "`python -m xmadapter_hf.demo.pretrain --output DIR --seed 0`."
            )
        _verified[key] = found
    return str(directory)


def _cache_root() -> Path:
    if os.environ.get("XMADAPTER_CACHE"):
        return Path(os.environ["XMADAPTER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xmadapter_hf"


def _copy_out(resource, cache_dir: Path) -> Path:
    """Copies the packaged files (from a zip or any importlib resource) into ``cache_dir``, atomically."""
    target = cache_dir / f"demo-clip-{DEMO_CLIP_SHA256[:16]}"
    if target.is_dir():
        try:
            verify_demo_clip(target)
            return target
        except DemoCheckpointError:
            shutil.rmtree(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".demo-clip-"))
    try:
        for name in DEMO_CLIP_FILES:
            source = resource / name
            if not source.is_file():
                raise DemoCheckpointError(f"The installed package lacks the demo CLIP file {name}: reinstall it.")
            with source.open("rb") as src, open(staging / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        verify_demo_clip(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process put it there first
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    verify_demo_clip(target)
    return target


def demo_clip_path(cache_dir: str | os.PathLike | None = None) -> str:
    """A local directory holding the demo CLIP in the `save_pretrained` layout, its weights' sha256 checked.

    `CLIPModel.from_pretrained(path)`, `AutoProcessor.from_pretrained(path)` and
    `XMAdapterForImageClassification.from_clip(path, class_names)` take it as they take
    `"openai/clip-vit-base-patch16"`. It is the installed package data itself when that is a directory on disk;
    otherwise (a zipped install) a copy in ``cache_dir`` (default: `$XMADAPTER_CACHE`, else
    `~/.cache/xmadapter_hf`).

    Raises:
        DemoCheckpointError: the files are missing or the weights' sha256 is not the shipped one.
    """
    resource = importlib.resources.files(__package__) / "clip"
    if isinstance(resource, Path):
        return verify_demo_clip(resource)
    return str(_copy_out(resource, Path(cache_dir) if cache_dir is not None else _cache_root()))


def load_demo_clip():
    """The demo `CLIPModel` (eval mode) and its `CLIPProcessor`, loaded by path from [`demo_clip_path`]."""
    from transformers import AutoProcessor, CLIPModel

    path = demo_clip_path()
    return CLIPModel.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)
