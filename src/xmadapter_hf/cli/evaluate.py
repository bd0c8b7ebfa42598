"""`xmadapter eval`: a saved adapter on labelled images -> accuracy, per-class accuracy, a confusion matrix.

The data's class names are matched to the adapter's by name (the data may hold a subset of its classes). The
default split is `test` (or the data's only split). `--plot FILE.png` draws the confusion matrix (matplotlib:
the `plot` extra); `--json` prints every number as one JSON object instead of the text report.
With `--support DIR` the adapter is first given DIR's classes instead of its own and a cache of DIR's images
(`from_pretrained(class_names=...)` + `build_cache`, no training: Meta-Adapter's online use; any method); the data
is then matched to those classes.
"""

from __future__ import annotations

from ..jsonsafe import dumps
from .common import (
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
)
from .common import show_progress as progress_wanted
from .data import open_data, open_support, pick_split, relabel
from .progress import progress


def add_arguments(parser) -> None:
    parser.add_argument("adapter", help="the adapter directory (or Hub repo id)")
    parser.add_argument("--data", required=True, help="an image folder, a saved dataset or a `datasets` name")
    parser.add_argument("--split", help="the split to score (default: test, or the data's only split)")
    parser.add_argument("--plot", metavar="FILE", help="write the confusion matrix to this PNG")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per backbone forward (64)")
    add_support_argument(parser)
    add_threads_argument(parser)
    add_workers_argument(parser)
    add_progress_argument(parser)
    add_loading_arguments(parser)


def scores(model, dataset, batch_size: int = 64, show_progress: bool = False) -> dict:
    """Accuracy, zero-shot accuracy, per-class accuracy and the confusion matrix of `model` on `dataset`."""
    import torch

    from ..data.extraction import extract_embeddings

    extracted = extract_embeddings(
        model.clip, model.processor, dataset, augment_views=0, batch_size=batch_size, show_progress=show_progress
    )
    predictions, zero_shot = [], []
    with torch.no_grad():
        for embeds in extracted.embeds[0].split(1024):
            out = model(image_embeds=embeds)
            predictions.append(out.logits.argmax(-1))
            zero_shot.append(out.zero_shot_logits.argmax(-1))
    predicted, labels = torch.cat(predictions), extracted.labels
    names = model.config.class_names
    matrix = torch.zeros(len(names), len(names), dtype=torch.long)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = {}
    for label, name in enumerate(names):
        count = int(matrix[label].sum())
        if count:
            per_class[name] = {"accuracy": int(matrix[label, label]) / count, "images": count}
    return {
        "images": len(labels),
        "accuracy": float((predicted == labels).float().mean()),
        "zero_shot_accuracy": float((torch.cat(zero_shot) == labels).float().mean()),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def run(args) -> int:
    if args.plot:
        from ..plotting import require_matplotlib

        require_matplotlib()  # before any work: the one-line error names the extra
    data = open_data(args.data)
    split, dataset = pick_split(data, args.split, ("test",))
    origin = data.describe(split)
    support = open_support(args.support) if args.support else None
    set_threads(args.threads)
    set_workers(args.workers)
    model = load_adapter(args.adapter, support, progress_wanted(args), **loading_options(args))
    dataset = relabel(dataset, model.config.class_names, origin)
    result = {"adapter": args.adapter, "method": model.config.method, "data": origin}
    progress(f"scoring {len(dataset)} images")
    result.update(scores(model, dataset, args.batch_size, progress_wanted(args)))
    if args.plot:
        from ..plotting import plot_confusion_matrix

        result["plot"] = str(plot_confusion_matrix(result["confusion_matrix"], model.config.class_names, args.plot))
    if args.json:
        print(dumps(result, indent=2))
        return 0
    print(
        f"accuracy on {origin} ({result['images']} images): {model.config.method} {result['accuracy']:.4f}, "
        f"zero-shot {result['zero_shot_accuracy']:.4f}"
    )
    print("per-class accuracy:")
    width = max(len(name) for name in result["per_class"])
    for name, cell in result["per_class"].items():
        print(f"  {name:<{width}}  {cell['accuracy']:.3f}  ({cell['images']} images)")
    if args.plot:
        print(f"confusion matrix: {result['plot']}")
    return 0


COMMAND = Command(
    name="eval",
    help="accuracy, per-class accuracy and a confusion matrix of an adapter on labelled images",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
