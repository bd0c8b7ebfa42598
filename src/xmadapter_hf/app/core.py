"""What the web page does, without gradio: classify an image, add a class to one visitor's copy, zip a copy.

[`ServedAdapter`] holds the loaded adapter (shared by every visitor, never changed) and, for each visitor who adds a
class, a copy of it (`VisitorCopies`: at most `max_visitors` copies, each dropped after `ttl` seconds without use;
the copies share the frozen backbone, so each costs the adapter's own tensors only). Scores are computed as
`xmadapter predict` computes them (`cli/predict.py`): classes ranked by logit, each score ``softmax(logits / T)``
with the adapter's fitted temperature, each logit split into what zero-shot, the image cache, the text cache (or
GDA's Gaussian term) added. Every bad input raises [`AppInputError`] with one sentence, before anything changes.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["AppInputError", "ServedAdapter", "SupportImages", "VisitorCopies", "read_image"]

#: The largest image the page decodes (width x height); a larger one is refused before it is decoded.
MAX_PIXELS = 4096 * 4096
#: Images a visitor may give for one new class, and classes one visitor may add.
MAX_CLASS_IMAGES = 32
MAX_ADDED_CLASSES = 16
MAX_NAME_LENGTH = 80


class AppInputError(ValueError):
    """A bad input from a visitor; its message is one sentence the page shows."""


def read_image(path, what: str = "The upload"):
    """The image at ``path`` decoded as 8-bit RGB (as `xmadapter predict` reads files), or an `AppInputError`."""
    from PIL import Image

    from ..data.images import load_image

    if path is None:
        raise AppInputError("Choose an image first.")
    name = Path(str(path)).name
    try:
        with Image.open(path) as probe:
            width, height = probe.size
    except (OSError, ValueError, Image.DecompressionBombError):
        raise AppInputError(f"{what} ({name}) is not an image this page can read (PNG, JPEG, WebP, ...).") from None
    if width * height > MAX_PIXELS:
        raise AppInputError(
            f"{what} ({name}) is too large: {width} x {height} pixels, at most {MAX_PIXELS:,} pixels are read."
        )
    try:
        return load_image(str(path))
    except (OSError, ValueError, TypeError):
        raise AppInputError(f"{what} ({name}) is not an image this page can read (PNG, JPEG, WebP, ...).") from None


@dataclass
class SupportImages:
    """The support images of `--support`: their files and their embeddings as extracted (the mean of the views,
    normalised; not a method's trained keys), row i being file i."""

    files: list[str]
    labels: list[int]
    embeds: torch.Tensor  # (M, C), unit rows

    def closest(self, image_embed: torch.Tensor, k: int) -> list[tuple[str, int, float]]:
        """(file, label, cosine similarity) of the ``k`` support images closest to one normalised embedding."""
        similarity = self.embeds @ image_embed.float().reshape(-1)
        k = min(k, len(self.files))
        values, rows = similarity.topk(k)
        return [(self.files[r], self.labels[r], float(v)) for r, v in zip(rows.tolist(), values.tolist())]


@dataclass
class _Copy:
    model: object
    used: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class VisitorCopies:
    """Per-visitor copies of a model: at most ``max_visitors``, each dropped ``ttl`` seconds after its last use."""

    def __init__(self, max_visitors: int = 8, ttl: float = 1800.0, clock=time.monotonic):
        if max_visitors < 1 or ttl <= 0:
            raise ValueError(f"max_visitors must be >= 1 and ttl > 0, got {max_visitors} and {ttl}")
        self.max_visitors, self.ttl, self._clock = max_visitors, ttl, clock
        self._copies: dict[str, _Copy] = {}
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for key in [key for key, held in self._copies.items() if now - held.used > self.ttl]:
            del self._copies[key]

    def get(self, visitor: str) -> _Copy | None:
        """The visitor's copy (its use time renewed), or `None`."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            held = self._copies.get(visitor)
            if held is not None:
                held.used = now
            return held

    def get_or_create(self, visitor: str, make) -> _Copy:
        """The visitor's copy, made with ``make()`` when it has none; `AppInputError` when the store is full."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            held = self._copies.get(visitor)
            if held is None:
                if len(self._copies) >= self.max_visitors:
                    minutes = max(1, round(self.ttl / 60))
                    raise AppInputError(
                        f"This server already keeps {self.max_visitors} visitors' grown adapters, the most it "
                        f"allows; try again once one has gone unused for {minutes} minutes."
                    )
                held = self._copies[visitor] = _Copy(make(), now)
            held.used = now
            return held

    def drop(self, visitor: str) -> None:
        with self._lock:
            self._copies.pop(visitor, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._copies)


class ServedAdapter:
    """An adapter served to many visitors: classification with the shared model or the visitor's grown copy."""

    def __init__(
        self, model, support: SupportImages | None = None, *, top_k: int = 5, max_visitors: int = 8,
        ttl: float = 1800.0, source: str = "",
    ):  # fmt: skip
        self.model = model.eval()
        self.support = support
        self.top_k = top_k
        self.source = source
        self.copies = VisitorCopies(max_visitors, ttl)
        self._shared_lock = threading.Lock()

    # -- which model a visitor sees ------------------------------------------------------------------------------
    def _model_for(self, visitor: str | None):
        held = self.copies.get(visitor) if visitor else None
        return (held.model, held.lock) if held is not None else (self.model, self._shared_lock)

    def class_names(self, visitor: str | None = None) -> list[str]:
        model, _ = self._model_for(visitor)
        return list(model.config.class_names)

    def _copy(self):
        """A copy of the shared model whose frozen backbone and processor are the shared ones (not duplicated)."""
        shared = {id(self.model.clip): self.model.clip, id(self.model.processor): self.model.processor}
        return copy.deepcopy(self.model, memo=shared)

    # -- classify ------------------------------------------------------------------------------------------------
    def classify(self, image_path, visitor: str | None = None, neighbours: int = 4) -> dict:
        """Top-k classes of the image at ``image_path`` with their scores, logits and logit parts (as `xmadapter
        predict --json` gives them), every class's logit, and the closest support images (with `--support`)."""
        from ..calibration import probabilities, rank_by_logits
        from ..cli.predict import logit_parts

        image = read_image(image_path)
        model, lock = self._model_for(visitor)
        pixels = model.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        with lock, torch.no_grad():
            out = model(pixel_values=pixels.to(model.class_embeds.device))
            names = list(model.config.class_names)
            temperature = model.config.temperature
        scores = probabilities(out.logits, temperature)[0]
        parts = logit_parts(model, out)
        best = rank_by_logits(out.logits.float(), min(self.top_k, len(names)))[0].tolist()
        predictions = [
            {
                "label": names[label],
                "score": float(scores[label]),
                "logit": float(out.logits[0, label]),
                "parts": {name: float(value[0, label]) for name, value in parts.items()},
            }
            for label in best
        ]
        result = {
            "temperature": temperature,
            "predictions": predictions,
            "logits": {name: float(value) for name, value in zip(names, out.logits[0].tolist())},
            "classes_added": [name for name in names if name not in self.model.config.class_names],
            "closest": [],
        }
        if out.affinity_ratio is not None:
            result["affinity_ratio"] = float(out.affinity_ratio[0])
        if self.support is not None and out.image_embeds is not None:
            support_names = self.model.config.class_names
            result["closest"] = [
                {"file": file, "label": support_names[label], "similarity": similarity}
                for file, label, similarity in self.support.closest(out.image_embeds[0], neighbours)
            ]
        return result

    # -- add a class ---------------------------------------------------------------------------------------------
    def add_class(self, visitor: str, name, image_paths) -> str:
        """Adds the class ``name`` from the images at ``image_paths`` to the visitor's copy; returns a sentence."""
        import datasets

        if not visitor:
            raise AppInputError("This request has no browser session, so there is no copy of the adapter to grow.")
        name = " ".join(str(name or "").split())
        if not name:
            raise AppInputError("Give the new class a name.")
        if len(name) > MAX_NAME_LENGTH:
            raise AppInputError(f"The class name has {len(name)} characters; at most {MAX_NAME_LENGTH} are allowed.")
        if name in self.class_names(visitor):
            raise AppInputError(f"The adapter already has a class named {name!r}; choose another name.")
        paths = [p for p in (image_paths or []) if p]
        if not paths:
            raise AppInputError(f"Give at least one image of {name!r}.")
        if len(paths) > MAX_CLASS_IMAGES:
            raise AppInputError(f"Give at most {MAX_CLASS_IMAGES} images for one class; {len(paths)} were given.")
        images = [read_image(path, "An image of the new class") for path in paths]
        if self.model.config.cache_size == 0:
            raise AppInputError("This adapter has no cache, so it cannot learn a class from images without training.")
        held = self.copies.get_or_create(visitor, self._copy)
        with held.lock:
            model = held.model
            if model.config.classes_added >= MAX_ADDED_CLASSES + self.model.config.classes_added:
                raise AppInputError(f"One visitor may add at most {MAX_ADDED_CLASSES} classes.")
            if name in model.config.class_names:  # added meanwhile by a concurrent request of the same visitor
                raise AppInputError(f"The adapter already has a class named {name!r}; choose another name.")
            features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[name])})
            support = datasets.Dataset.from_dict({"image": images, "label": [0] * len(images)}, features=features)
            model.add_classes([name], support, show_progress=False, num_workers=0)
            total = model.config.num_classes
        return f"Added {name!r} from {len(images)} images: your copy of the adapter now has {total} classes."

    # -- download ------------------------------------------------------------------------------------------------
    def zip_adapter(self, visitor: str | None, folder: str | os.PathLike | None = None) -> Path:
        """The visitor's adapter (grown or not) saved with `save_pretrained` and zipped; returns the zip's path."""
        model, lock = self._model_for(visitor)
        folder = Path(folder or tempfile.mkdtemp(prefix="xmadapter-app-"))
        saved = Path(tempfile.mkdtemp(prefix="adapter-", dir=folder))
        with lock:
            model.save_pretrained(saved)
        target = folder / "adapter.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(saved.rglob("*")):
                if file.is_file():
                    archive.write(file, file.relative_to(saved).as_posix())
        shutil.rmtree(saved, ignore_errors=True)
        return target


def load_support(model, folder: str, show_progress: bool = False):
    """`--support DIR`: the adapter given DIR's classes and a cache of DIR's images (as `xmadapter predict --support`
    builds it: the adapter's `augment_views` and seed), and the images' files and extracted embeddings."""
    import datasets

    from ..cli.data import open_support
    from ..data.extraction import extract_embeddings

    dataset, names, _ = open_support(folder)  # the classes the model was given (`from_pretrained(class_names=)`)
    files = [item["path"] for item in dataset.cast_column("image", datasets.Image(decode=False))["image"]]
    config = model.config
    extracted = extract_embeddings(
        model.clip, model.processor, dataset, augment_views=config.augment_views, seed=config.seed or 0,
        show_progress=show_progress,
    )  # fmt: skip
    model.set_cache(extracted.embeds, extracted.labels)
    config.seed = config.seed or 0  # as `build_cache` records it
    mean = extracted.embeds.float().mean(dim=0)
    embeds = torch.nn.functional.normalize(mean, dim=-1)
    return SupportImages(files, extracted.labels.tolist(), embeds), names
