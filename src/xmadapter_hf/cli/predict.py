"""`xmadapter predict`: image files or folders -> each image's top-k classes, with what each part of the model added.

Each class's logit is split into its parts, read from the model's output fields: zero-shot CLIP
(`zero_shot_logits`); for the cache methods, the image cache (`residual_ratio x image_cache_logits`, times XMAdapter's
`affinity_ratio`) and XMAdapter's text cache (`residual_ratio x (1 - affinity_ratio) x text_cache_logits`); GDA's
Gaussian discriminant (`gaussian_ratio x (f W_g^T + b)`); for methods whose adapter changes the embeddings instead
(CLIP-Adapter, the Multi-Modal Adapter), the adapter's change of the logit. The parts add up to the logit. Folders
are searched recursively for image files.
Classes are ranked by their logits (equal logits: the lower class index first); each score is ``softmax(logits /
T)`` with the temperature `fit` fitted on the validation split (`config.temperature`; an adapter without one shows
the raw softmax, which the output says is uncalibrated).
With `--support DIR` the adapter is first given DIR's classes instead of its own and a cache of DIR's images
(`from_pretrained(class_names=...)` + `build_cache`, no training: Meta-Adapter's online use; any method).
"""

from __future__ import annotations

from pathlib import Path

from ..jsonsafe import dumps
from .common import (
    CLIError,
    Command,
    add_loading_arguments,
    add_progress_argument,
    add_support_argument,
    add_threads_argument,
    add_workers_argument,
    load_adapter,
    loading_options,
    positive_int,
    set_threads,
    set_workers,
    show_progress,
)
from .data import image_extensions, images_under, open_support


def add_arguments(parser) -> None:
    parser.add_argument("adapter", help="the adapter directory (or Hub repo id)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--top-k", type=positive_int, default=3, help="classes shown per image (3)")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per forward (32)")
    add_support_argument(parser)
    add_threads_argument(parser)
    add_workers_argument(parser)
    add_progress_argument(parser)
    add_loading_arguments(parser)


def image_files(paths: list[str]) -> list[Path]:
    """The files given, and the image files under the folders given (sorted), in order."""
    found: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            inside = images_under(path, image_extensions())
            if not inside:
                raise CLIError(f"{text!r}: no image files in this folder")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise CLIError(f"{text!r}: no such file or folder")
    return found


def logit_parts(model, out) -> dict:
    """What zero-shot, the image cache, the text cache and any other adapter term add to each logit: name -> (B, N).

    The method names its terms (`AdapterMethod.logit_parts`); they sum to `out.logits`, the adapter's own term being
    what remains after the others."""
    parts = model.method.logit_parts(out)
    rest = out.logits.float() - sum(parts.values())
    if bool((rest.abs() > 1e-4 * float(out.logits.abs().amax()) + 1e-6).any()):  # beyond float rounding
        parts["adapter"] = rest
    return parts


def predict(model, files: list[Path], top_k: int, batch_size: int) -> list[dict]:
    """One entry per file: its top-k classes by logit, with score (``softmax(logits / T)``), logit and the logit's
    parts, and the temperature ``T`` (`None`: not fitted, the raw softmax)."""
    import torch

    from ..calibration import probabilities, rank_by_logits
    from ..data.images import load_image

    names = model.config.class_names
    top_k = min(top_k, len(names))
    entries = []
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        images = [load_image(path) for path in batch]
        pixels = model.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(pixel_values=pixels.to(model.class_embeds.device))
        scores = probabilities(out.logits, model.config.temperature)  # (B, N)
        parts = logit_parts(model, out)
        best = rank_by_logits(out.logits.float(), top_k)  # (B, top_k): not by score, which ties at 0 and 1
        for row, path in enumerate(batch):
            predictions = []
            for label in best[row].tolist():
                predictions.append(
                    {
                        "label": names[label],
                        "score": float(scores[row, label]),
                        "logit": float(out.logits[row, label]),
                        "parts": {name: float(value[row, label]) for name, value in parts.items()},
                    }
                )
            entry = {"image": str(path), "temperature": model.config.temperature, "predictions": predictions}
            if out.affinity_ratio is not None:
                entry["affinity_ratio"] = float(out.affinity_ratio[row])
            entries.append(entry)
    return entries


def _text(entry: dict) -> str:
    lines = [
        entry["image"] + (f"  (affinity ratio {entry['affinity_ratio']:.3f})" if "affinity_ratio" in entry else "")
    ]
    width = max(len(p["label"]) for p in entry["predictions"])
    for rank, p in enumerate(entry["predictions"], 1):
        parts = " + ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in p["parts"].items())
        lines.append(f"  {rank}. {p['label']:<{width}}  {100 * p['score']:5.1f}%  logit {p['logit']:.3f} = {parts}")
    return "\n".join(lines)


def _scores_line(temperature: float | None) -> str:
    if temperature is None:
        return (
            "scores: softmax of the logits, uncalibrated (this adapter has no fitted temperature: `xmadapter fit` "
            "fits one on the validation split); classes ranked by logit"
        )
    return f"scores: softmax(logits / {temperature:.4g}) (T fitted on the validation split); classes ranked by logit"


def run(args) -> int:
    files = image_files(args.images)
    support = open_support(args.support) if args.support else None
    set_threads(args.threads)
    set_workers(args.workers)
    model = load_adapter(args.adapter, support, show_progress(args), **loading_options(args))
    entries = predict(model, files, args.top_k, args.batch_size)
    if args.json:
        print(dumps(entries, indent=2))
    else:
        print("\n".join([_scores_line(model.config.temperature), *(_text(entry) for entry in entries)]))
    return 0


COMMAND = Command(
    name="predict",
    help="top-k classes of images, with what zero-shot, the image cache and the text cache contributed",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
