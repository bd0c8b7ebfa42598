"""The embedding store: raw image embeddings on disk, one entry per item, shared by every extraction.

`extract_embeddings(cache_dir=...)`, `fit(cache_dir=...)`, `extract_embeddings_distributed` and `xmadapter
reproduce` all keep their embeddings here. A store folder ``root/<key>/`` holds the embeddings of one *space*: one
backbone (name, architecture, weights, dtype), one image processor configuration, one augmentation (views, seed, crop
size, recipe), one autocast dtype and one dataset (its hash and columns) -- everything an embedding depends on but
the item. Inside a space each item is keyed by its index in the dataset (which also fixes its augmentation draws,
``draw_seed(seed, index, view)``), so any subset, in any order, reuses what any earlier call embedded.

Layout of ``root/<key>/``:

- ``key.json``: what the key is made of (for humans; every shard also carries the key in its metadata);
- ``shard-<first>-<hash>.safetensors``: ``indices`` (n,) int64, ``embeds`` (V, n, C) float32, ``labels`` (n,)
  int64, written to a temporary file and renamed into place, so a reader never sees a torn shard;
- ``claims/<hash>.json``: the items a process is embedding now (its host, pid and a token);
- ``.lock``: a file lock (`filelock`), held only while a process looks at the shards and claims, never while it
  embeds.

Two processes (or two hosts on a shared file system) can fill one store at once: under the lock a process claims the
items of the next run that nobody has stored or claimed, embeds them without the lock, and under the lock again
renames its shard into place and drops its claim. So each item is embedded once, and a process that finds the rest
claimed waits for those shards. A claim whose process has died (same host: its pid is gone; another host: no
heartbeat for `stale_after` seconds) is taken over, so a killed run resumes at the shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..backbone import architecture_hash
from .items import crop_size, resolve_columns

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "EmbeddingStore",
    "backbone_weights_fingerprint",
    "extraction_cache_key",
]

logger = logging.getLogger(__name__)

#: Items per shard (independent of the batch size, so that a rerun with another batch size still finds the shards;
#: 256 items x 10 views x 512 dims is 5 MB). Shards are also the unit that processes share and claim.
DEFAULT_SHARD_SIZE = 256
# Bump when the layout or the augmentation recipe changes: old stores then miss instead of being misread.
_FORMAT = "xmadapter-embedding-store-v1"
_AUGMENTATION = "random-resized-crop(scale=0.5-1, ratio=3/4-4/3, bicubic)+hflip(p=0.5)"
# Values sampled per parameter tensor for the weights fingerprint.
_FINGERPRINT_SAMPLES = 1024
# Seconds between two looks at another process's claims while waiting for its shards.
_POLL_SECONDS = 0.1


# ------------------------------------------------------------------------------------------------- the key
def backbone_weights_fingerprint(backbone) -> str:
    """A hash of the backbone's weights: names, shapes, dtypes and ~1k evenly spaced values of every tensor.

    Hashing every value of a ViT-L would cost seconds; a strided sample of each tensor tells apart two random
    initialisations, two checkpoints and a fine-tuned copy, which is what a store key needs. This hashes bits on
    purpose (a store must be reused only for bit-identical inputs); it is not the tolerant fingerprint that
    checkpoints are compared with on load.
    """
    digest = hashlib.blake2b(digest_size=16, person=b"xmadapter-wts")
    tensors = [*backbone.named_parameters(), *backbone.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // _FINGERPRINT_SAMPLES)
        sample = flat[::step][:_FINGERPRINT_SAMPLES].to("cpu", torch.float64)  # exact for every float dtype
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def _dataset_fingerprint(dataset, given: str | None) -> dict:
    if given is not None:
        if not isinstance(given, str) or not given:
            raise TypeError(f"`dataset_fingerprint` must be a non-empty string, got {given!r}.")
        return {"fingerprint": given, "length": len(dataset)}
    datasets = sys.modules.get("datasets")  # a `datasets.Dataset` means `datasets` is imported
    if datasets is None or not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"`cache_dir` needs to know which data it caches: a {type(dataset).__name__} has no fingerprint (a "
            "`datasets.Dataset` has one). Pass `dataset_fingerprint=`, a string that changes whenever the data does."
        )
    from datasets.fingerprint import Hasher  # noqa: I001 (datasets is imported already)

    # A transform changes what `dataset[i]` returns: the hash covers the dataset's format and transform, and we also
    # record which function it is (by name: an address would change every run).
    form = getattr(dataset, "format", None) or {}
    described = json.dumps(form, sort_keys=True, default=lambda o: getattr(o, "__qualname__", type(o).__name__))
    return {"fingerprint": Hasher.hash(dataset), "length": len(dataset), "format": described}


def _processor_settings(image_processor) -> str:
    to_dict = getattr(image_processor, "to_dict", None)
    settings = to_dict() if callable(to_dict) else dict(vars(image_processor))
    return json.dumps(settings, sort_keys=True, default=str)


def extraction_cache_key(
    backbone,
    image_processor,
    dataset,
    *,
    augment_views: int = 10,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    dataset_fingerprint: str | None = None,
) -> tuple[str, dict]:
    """The store folder (``cache_dir/<key>``) of an extraction, and what its key is made of.

    The key is a hash of: the backbone's `name_or_path`, [`~xmadapter_hf.backbone.architecture_hash`], a fingerprint
    of its weights ([`backbone_weights_fingerprint`]) and its dtype; the dataset's hash (`datasets.fingerprint.Hasher`
    of a `datasets.Dataset`, its format and length, or the ``dataset_fingerprint`` given); the augmentation (views,
    seed, crop size, recipe); the image processor's settings; the columns; the autocast dtype. Inside the folder each
    item is keyed by its index, so the items requested are not part of the key. Batch size, worker count, progress
    bar and device are left out: they do not change the embeddings beyond float rounding.

    Returns:
        `tuple[str, dict]`: a 32-hex-digit key and the JSON-serialisable description it hashes.
    """
    image_processor = getattr(image_processor, "image_processor", image_processor)
    image_column, label_column = resolve_columns(dataset, image_column, label_column)  # as the extraction finds them
    param = next(backbone.parameters())
    description = {
        "format": _FORMAT,
        "backbone": {
            "name_or_path": str(getattr(backbone, "name_or_path", "") or ""),
            "architecture_hash": architecture_hash(backbone),
            "weights": backbone_weights_fingerprint(backbone),
            "dtype": str(param.dtype),
        },
        "dataset": _dataset_fingerprint(dataset, dataset_fingerprint),
        "augmentation": {
            "views": augment_views,
            "seed": seed,
            "crop_size": crop_size(image_processor),
            "recipe": _AUGMENTATION if augment_views > 0 else "none",
        },
        "image_processor": _processor_settings(image_processor),
        "columns": [image_column, label_column],
        "autocast_dtype": str(autocast_dtype) if autocast_dtype is not None else None,
    }
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32], description


# ------------------------------------------------------------------------------------------------- the store
def _items_hash(items: Sequence[int]) -> str:
    return hashlib.sha256(torch.tensor(list(items), dtype=torch.int64).numpy().tobytes()).hexdigest()[:16]


def _write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Writes a temporary file beside ``path`` with ``write(tmp)`` and returns it (the caller renames it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class EmbeddingStore:
    """The items of one space (see the module docstring) in ``root/<key>/``.

    Args:
        root (`str` or `os.PathLike`): the store's root folder (``cache_dir``).
        key (`str`): the space's key ([`extraction_cache_key`]).
        description (`dict`): what the key is made of, written to ``key.json``.
        views (`int`): views per item (the first dimension of every shard's embeddings).
        stale_after (`float`, *optional*, defaults to 600): seconds without a heartbeat after which another host's
            claim is taken over (a claim on this host is taken over as soon as its process is gone).

    Attributes:
        directory (`Path`): ``root/<key>``.
        embedded (`int`): items this object embedded (each once).
    """

    def __init__(self, root, key: str, description: dict, *, views: int, stale_after: float = 600.0):
        self.directory = Path(root) / key
        self.key, self.description, self.views, self.stale_after = key, description, views, stale_after
        self.embedded = 0
        self._index: dict[int, tuple[str, int]] = {}  # item -> (shard file name, position in it)
        self._seen: set[str] = set()
        self._mine: dict[str, str] = {}  # claim file name -> our token
        self._host, self._last_beat = socket.gethostname(), 0.0

    # ---- layout
    def _open(self) -> None:
        (self.directory / "claims").mkdir(parents=True, exist_ok=True)
        described = self.directory / "key.json"
        if not described.is_file():
            text = json.dumps(self.description, indent=2, sort_keys=True) + "\n"
            os.replace(_write_atomic(described, lambda tmp: tmp.write_text(text, encoding="utf-8")), described)
        self._lock = FileLock(str(self.directory / ".lock"))

    def _refresh(self) -> None:
        """Indexes the shards written since the last look (shards are never changed once renamed into place)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("shard-*.safetensors")):
            if path.name in self._seen:
                continue
            self._seen.add(path.name)
            items = self._shard_items(path)
            for position, item in enumerate(items or ()):
                self._index.setdefault(item, (path.name, position))

    def _shard_items(self, path: Path) -> list[int] | None:
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                items = handle.get_tensor("indices")
                shapes = [handle.get_slice(name).get_shape() for name in ("embeds", "labels")]
        except Exception as error:  # a foreign or damaged file: its items are embedded again
            logger.warning("Ignoring unreadable store shard %s (%s).", path, error)
            return None
        n = items.shape[0] if items.ndim == 1 else -1
        if metadata.get("key") != self.key or shapes[0][:2] != [self.views, n] or shapes[1] != [n]:
            logger.warning("Store shard %s does not belong to this store; ignoring it.", path)
            return None
        return items.tolist()

    def missing(self, items: Iterable[int]) -> list[int]:
        """The items (each once, in the order given) that no shard holds yet."""
        self._refresh()
        return [item for item in dict.fromkeys(int(i) for i in items) if item not in self._index]

    # ---- claims
    def _live_claims(self) -> set[int]:
        """Items claimed by live processes; removes the claims of dead ones (call under the lock)."""
        claimed: set[int] = set()
        for path in (self.directory / "claims").glob("*.json"):
            try:
                claim = json.loads(path.read_text())
                age = time.time() - path.stat().st_mtime
            except (OSError, ValueError):  # removed meanwhile, or half-written by a process killed while writing
                continue
            if claim.get("host") == self._host:  # a pid is only meaningful on its own host
                stale = not _pid_alive(int(claim.get("pid", -1)))
            else:
                stale = age > self.stale_after
            if stale and self._mine.get(path.name) != claim.get("token"):
                logger.warning("Taking over the store claim %s of a process that is gone (%s).", path.name, claim)
                path.unlink(missing_ok=True)
                continue
            claimed.update(claim.get("items", ()))
        return claimed

    def _claim(self, run: list[int]) -> list[int]:
        """Under the lock: the items of ``run`` nobody has stored or claimed, now claimed by this process."""
        if all(item in self._index for item in run):  # stored already (shards are never removed): no lock needed
            return []
        with self._lock:
            self._refresh()
            claimed = self._live_claims()
            unit = [item for item in run if item not in self._index and item not in claimed]
            if unit:
                name, token = f"{_items_hash(unit)}.json", uuid.uuid4().hex
                path = self.directory / "claims" / name
                payload = json.dumps({"host": self._host, "pid": os.getpid(), "token": token, "items": unit})
                os.replace(_write_atomic(path, lambda tmp: tmp.write_text(payload)), path)
                self._mine[name] = token
        return unit

    def heartbeat(self, every: float = 30.0) -> None:
        """Marks this process's claims as alive (at most once per ``every`` seconds); `fill` calls it as it goes."""
        now = time.monotonic()
        if now - self._last_beat >= every:
            self._last_beat = now
            for name in self._mine:
                try:
                    os.utime(self.directory / "claims" / name)
                except OSError:
                    pass

    def _release(self, name: str) -> None:
        path = self.directory / "claims" / name
        try:
            if json.loads(path.read_text()).get("token") == self._mine.get(name):
                path.unlink()
        except (OSError, ValueError):
            pass
        self._mine.pop(name, None)

    def _store(self, unit: list[int], embeds: torch.Tensor, labels: torch.Tensor) -> None:
        """Writes the shard of a claimed unit (outside the lock), then renames it into place and drops the claim."""
        name = _items_hash(unit)
        path = self.directory / f"shard-{unit[0]:09d}-{name}.safetensors"
        tensors = {"indices": torch.tensor(unit, dtype=torch.int64), "embeds": embeds.float().contiguous(),
                   "labels": labels.long()}  # fmt: skip
        metadata = {"format": "pt", "key": self.key, "store_format": _FORMAT}
        tmp = _write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        with self._lock:  # rename and release together: a reader sees the claim or the shard, never neither
            os.replace(tmp, path)
            self._release(f"{name}.json")
        self.embedded += len(unit)

    # ---- filling and reading
    def fill(
        self,
        items: Sequence[int],
        embed: Callable[[Iterable[list[int]]], Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]],
        *,
        run_size: int,
    ) -> int:
        """Embeds every item of ``items`` that the store lacks; returns how many this call embedded.

        ``items`` is cut into runs of ``run_size``; the unstored, unclaimed items of each run are claimed (one claim,
        one shard) as ``embed`` asks for the next unit, and ``embed(units)`` yields ``(unit, embeds (V, n, C),
        labels (n,))`` per unit. When the rest is claimed by other processes, this waits for their shards.
        """
        items = list(dict.fromkeys(int(i) for i in items))
        runs = [items[start : start + run_size] for start in range(0, len(items), run_size)]
        self._open()
        before, waiting = self.embedded, False
        try:
            while self.missing(items):
                units = (unit for unit in map(self._claim, runs) if unit)
                first = next(units, None)
                if first is None:  # everything left is being embedded elsewhere
                    if not waiting:
                        logger.info("Waiting for other processes to store %d items.", len(self.missing(items)))
                    waiting = True
                    time.sleep(_POLL_SECONDS)
                    continue
                for unit, embeds, labels in embed(self._beating(first, units)):
                    self._store(unit, embeds, labels)
        finally:
            with self._lock:
                for name in list(self._mine):  # an interrupted call hands its claims back at once
                    self._release(name)
        return self.embedded - before

    def _beating(self, first: list[int], units: Iterator[list[int]]) -> Iterator[list[int]]:
        yield first
        for unit in units:
            self.heartbeat()
            yield unit

    def read(self, items: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings `(V, M, C)` float32 and labels `(M,)` of ``items`` (in that order, repeats included)."""
        items = [int(i) for i in items]
        absent = self.missing(items)
        if absent:
            raise KeyError(f"{len(absent)} items are not in the store {self.directory} (first: {absent[:5]}).")
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for row, item in enumerate(items):
            name, position = self._index[item]
            by_shard.setdefault(name, []).append((row, position))
        embeds, labels = None, torch.empty(len(items), dtype=torch.long)
        for name, pairs in by_shard.items():
            tensors = load_file(str(self.directory / name))
            rows, positions = (torch.tensor(column) for column in zip(*pairs))
            if embeds is None:
                embeds = torch.empty(self.views, len(items), tensors["embeds"].shape[-1])
            embeds[:, rows] = tensors["embeds"][:, positions].float()
            labels[rows] = tensors["labels"][positions]
        return embeds, labels
