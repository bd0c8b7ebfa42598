"""Published accuracies of the papers, shipped as data (``data/published.json``) with their sources.

What is there:

- Tip-Adapter's results log (RN50, few-shot protocol, 1/2/4/8/16 shots, the 11 datasets): zero-shot CLIP,
  Tip-Adapter, Tip-Adapter-F and CLIP-Adapter. Tip-Adapter-F's numbers were selected on the test set (best epoch;
  ImageNet's search on test too), as were Tip-Adapter's on ImageNet: ``selected_on_test`` says so per entry.
- Meta-Adapter's README (RN50, 16 shots, seven datasets): zero-shot CLIP and Meta-Adapter under Meta-Adapter's own
  protocol (``protocol="meta-adapter"``), not comparable with the base-to-novel protocol.
- GDA's results log (RN50, few-shot protocol, 1/2/4/8/16 shots, the 11 datasets; mrflogs/ICLR24 `exp.log`): GDA's
  own rows. Its alpha is chosen on the val split, on ImageNet on the test set (``val_features = test_features``,
  `main_few_shots.py` line 137): ImageNet's entries say ``selected_on_test``.

No table of the XMAdapter paper (arXiv 2404.12588) or of the Multi-Modal Adapter paper (arXiv 2409.02958) ships:
none was found in the sources available when this was written (docs/reproduce.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._data import load_data
from .readers import canonical_dataset_name

__all__ = ["PublishedResult", "comparable", "published_result", "published_results"]


@dataclass(frozen=True)
class PublishedResult:
    """One published number.

    Args:
        paper (`str`): whose table it is (``"tip-adapter"``, ``"meta-adapter"``, ``"gda"``).
        method (`str`): the method measured (``"zero-shot"``, ``"tip-adapter"``, ``"tip-adapter-f"``,
            ``"clip-adapter"``, ``"meta-adapter"``, ``"gda"``).
        dataset (`str`): canonical dataset name.
        shots (`int`): training images per class (0 for zero-shot).
        backbone (`str`): e.g. ``"RN50"``.
        protocol (`str`): ``"few-shot"`` or ``"meta-adapter"``.
        accuracy (`float`): top-1 accuracy in %.
        selected_on_test (`bool` or `None`): whether the number was selected on the test set (``None``: the source
            does not say).
        source (`dict`): repository, commit, path and title of the source.
        notes (`tuple[str, ...]`): what else the source or its code says about the number.
    """

    paper: str
    method: str
    dataset: str
    shots: int
    backbone: str
    protocol: str
    accuracy: float
    selected_on_test: bool | None
    source: dict[str, Any]
    notes: tuple[str, ...]


def _norm_backbone(name: str) -> str:
    return name.lower().replace("-", "").replace("/", "")


def _all() -> list[PublishedResult]:
    data = load_data("published.json")
    results = []
    for table in data["tables"]:
        on_test = set(table.get("selected_on_test_datasets", []))
        for dataset, values in table["values"].items():
            for shots, accuracy in zip(table["shots"], values, strict=True):
                results.append(
                    PublishedResult(
                        paper=table["paper"],
                        method=table["method"],
                        dataset=dataset,
                        shots=shots,
                        backbone=table["backbone"],
                        protocol=table["protocol"],
                        accuracy=accuracy,
                        selected_on_test=True if dataset in on_test else table["selected_on_test"],
                        source=data["sources"][table["source"]],
                        notes=tuple(table["notes"]),
                    )
                )
    return results


def published_results(
    *,
    paper: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    shots: int | None = None,
    backbone: str | None = None,
    protocol: str | None = None,
) -> list[PublishedResult]:
    """Every published number matching the given fields (``None`` matches all).

    ``dataset`` takes any alias; backbones compare case-insensitively without ``-`` and ``/`` (``"ViT-B/16"`` ==
    ``"vitb16"``).

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import published_results
    >>> [r.accuracy for r in published_results(method="tip-adapter-f", dataset="ImageNet")]
    [65.51, 64.0, 62.52, 61.69, 61.13]
    ```
    """
    wanted = {
        "paper": paper,
        "method": method,
        "dataset": canonical_dataset_name(dataset) if dataset is not None else None,
        "shots": shots,
        "backbone": _norm_backbone(backbone) if backbone is not None else None,
        "protocol": protocol,
    }

    def value(result: PublishedResult, key: str):
        return _norm_backbone(result.backbone) if key == "backbone" else getattr(result, key)

    return [r for r in _all() if all(v is None or value(r, k) == v for k, v in wanted.items())]


def published_result(
    method: str,
    dataset: str,
    shots: int,
    *,
    paper: str | None = None,
    backbone: str = "RN50",
    protocol: str = "few-shot",
) -> PublishedResult:
    """The one published number of ``(paper, method, dataset, shots, backbone, protocol)``.

    Raises:
        KeyError: no such number (the message lists what exists for the method and dataset), or more than one
            (then name the ``paper``).

    Example:

    ```python
    >>> from xmadapter_hf.reproduce import published_result
    >>> result = published_result("tip-adapter-f", "eurosat", 16)
    >>> result.accuracy, result.selected_on_test
    (84.54, True)
    ```
    """
    found = published_results(
        paper=paper, method=method, dataset=dataset, shots=shots, backbone=backbone, protocol=protocol
    )
    if len(found) == 1:
        return found[0]
    if found:
        raise KeyError(f"{len(found)} published numbers match; name the paper ({sorted({r.paper for r in found})}).")
    near = published_results(method=method, dataset=dataset)
    have = sorted({(r.paper, r.shots, r.backbone, r.protocol) for r in near})
    raise KeyError(
        f"No published number for method={method!r}, dataset={dataset!r}, shots={shots}, backbone={backbone!r}, "
        f"protocol={protocol!r}; published for this method and dataset (paper, shots, backbone, protocol): {have}."
    )


def comparable(published: PublishedResult, *, backbone: str, protocol: str) -> bool:
    """Whether a result of ours may be set against ``published`` as a difference: same backbone and protocol.

    Backbones compare as in [`published_results`].
    """
    return _norm_backbone(published.backbone) == _norm_backbone(backbone) and published.protocol == protocol
