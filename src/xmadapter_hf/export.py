"""ONNX export of an adapter for inference servers: the head over embeddings and the whole model over pixels.

Both graphs come from torch's own exporter (`torch.onnx.export` over a `torch.export` program, with a dynamic batch
axis); nothing is written by hand. Inference-time constants (the class text embeddings ``W``, the cache, and what
each method's `export_constants` returns: XMAdapter's text keys ``T``, Meta-Adapter's adapted classifier) are computed
once in eval mode and stored in the graph as initializers; preprocessing stays outside the graph. See docs/export.md
for the inputs, outputs, metadata and an onnxruntime example.

Requires the `export` extra: ``pip install "xmadapter-hf[export]"`` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from . import __version__
from . import backbone as bb
from . import functional as Fn
from .methods import CacheState, MethodOutput

__all__ = ["EXPORTABLE_GRAPHS", "ONNX_FILES", "OUTPUT_NAMES", "export_onnx"]

#: The graphs `export_onnx` can write: `head` (raw image embeddings -> logits) and `full` (pixel values -> logits).
EXPORTABLE_GRAPHS = ("head", "full")
#: The file each graph is written to inside the output directory.
ONNX_FILES = {"head": "head.onnx", "full": "model.onnx"}
#: Every output a graph may have, in the order they appear; a method's graph has those its forward returns.
OUTPUT_NAMES = (
    "logits",
    "zero_shot_logits",
    "cache_logits",
    "image_cache_logits",
    "text_cache_logits",
    "affinity_ratio",
    "gaussian_logits",
)
_PROCESSOR_FILE = "preprocessor_config.json"
_BATCH = "batch"
_EXAMPLE_BATCH = 2  # not 0 or 1: torch.export specialises dimensions of those sizes


class _ExportHead(nn.Module):
    """The adapter head of a model in eval mode, with every inference-time constant held as a buffer.

    ``forward`` maps raw image embeddings (B, C) to the outputs named in `output_names`, through the method's
    `export_forward` (its eval forward with the method's `export_constants`, e.g. XMAdapter's text keys, as constants).
    """

    def __init__(self, model):
        super().__init__()
        self.method = model.method
        state = model.cache_state()
        self.shots = state.shots  # the cache layout (a Python int: it decides the graph, not its values)
        self.register_buffer("class_embeds", state.class_embeds)  # W, (N, C)
        self.register_buffer("cache_embeds", state.cache_embeds)  # E, (NK, C)
        self.register_buffer("cache_labels", state.cache_labels)  # (NK,)
        self.register_buffer("logit_scale", torch.as_tensor(state.logit_scale, dtype=torch.float32))  # s, ()
        self.constant_names = []
        for name, tensor in self.method.export_constants(state).items():  # eval mode, no autograd
            self.register_buffer(f"constant_{name}", tensor.detach())
            self.constant_names.append(name)
        # which outputs the method fills in: one eager call on any normalised embedding
        out = self.method_output(Fn.l2_normalize(torch.ones(1, state.class_embeds.shape[1]).to(state.class_embeds)))
        self.output_names = [name for name in OUTPUT_NAMES if getattr(out, name) is not None]

    def method_output(self, image: torch.Tensor) -> MethodOutput:
        """The method's eval-mode outputs for normalised embeddings ``image`` (B, C)."""
        state = CacheState(self.class_embeds, self.cache_embeds, self.cache_labels, self.logit_scale, self.shots)
        constants = {name: getattr(self, f"constant_{name}") for name in self.constant_names}
        return self.method.export_forward(image, state, constants)

    def forward(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.method_output(Fn.l2_normalize(image_embeds.float()))
        return tuple(getattr(out, name) for name in self.output_names)


class _ExportFull(nn.Module):
    """The frozen backbone's image tower followed by the head: pixel values (B, 3, H, W) -> the head's outputs."""

    def __init__(self, model, head: _ExportHead):
        super().__init__()
        self.clip = model.clip
        self.head = head
        self.output_names = head.output_names

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(bb.encode_images(self.clip, pixel_values))


def export_onnx(
    model,
    output_dir: str | os.PathLike,
    *,
    what: str | Iterable[str] = EXPORTABLE_GRAPHS,
    opset: int | None = None,
    external_data: bool | None = None,
) -> dict[str, Path]:
    """Exports an adapter to ONNX for inference servers (onnxruntime, Triton, ...).

    Writes into ``output_dir`` (created if missing): `head.onnx`, the head over raw image embeddings (input
    `image_embeds` of shape (B, C), normalised inside the graph, as `model(image_embeds=...)` does), and/or
    `model.onnx`, the whole model (input `pixel_values` of shape (B, 3, H, W) at the backbone's image size). Both
    return `logits` (B, N) and the method's per-modality outputs (`zero_shot_logits`, `cache_logits`,
    `image_cache_logits`, `text_cache_logits` (B, N), `affinity_ratio` (B,), `gaussian_logits` (B, N); see
    `OUTPUT_NAMES`); the batch axis is dynamic. Each file's `metadata_props` hold `id2label` (JSON), the method,
    the base model and its revision, the library version, the graph and the image preprocessing settings; the latter
    are also written to `preprocessor_config.json` when the model holds a processor. Preprocessing (resize, crop,
    rescale, normalise) stays outside the graph: docs/export.md shows how to reproduce it.

    Everything is checked before anything is written; files are exported to a temporary directory inside
    ``output_dir`` and moved into place only when every graph has been exported, so a failed call leaves the
    directory as it was. The model is not changed (it is put in eval mode for the export and back after).

    Args:
        model ([`XMAdapterForImageClassification`]): a float32 model with its cache built (cache methods).
        output_dir (`str` or `os.PathLike`): the directory to write into.
        what (`str` or iterable of `str`, *optional*, defaults to `("head", "full")`): the graphs to export.
        opset (`int`, *optional*): the ONNX opset (torch's default if omitted).
        external_data (`bool`, *optional*): store the weights in a `<file>.data` beside each file; by default only
            when a graph's weights exceed the 2 GB protobuf limit (very large caches).

    Returns:
        `dict[str, Path]`: the path of each file written, keyed by graph (`head`, `full`) and `preprocessor_config`.

    Example (the tiny random CLIP of the tests stands in for a real backbone):

    ```python
    >>> import tempfile
    >>> from xmadapter_hf import XMAdapterForImageClassification
    >>> from xmadapter_hf.export import export_onnx
    >>> from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
    >>> clip, processor = tiny_clip()
    >>> model = XMAdapterForImageClassification.from_clip(clip, ["cat", "dog"], processor=processor)
    >>> _ = model.build_cache(tiny_image_dataset(num_classes=2, shots=2), augment_views=1, show_progress=False)
    >>> sorted(export_onnx(model, tempfile.mkdtemp(), what="head"))
    ['head', 'preprocessor_config']
    ```
    """
    graphs = _check_request(model, output_dir, what)
    _require_onnx()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # every graph is exported in memory before the directory is touched
            head = _ExportHead(model)
            modules = {"head": head, "full": _ExportFull(model, head)}
            programs = {
                graph: _export_graph(modules[graph], graph, _example_input(model, graph), opset) for graph in graphs
            }
    finally:
        model.train(was_training)
    metadata = _metadata(model)
    directory = Path(output_dir)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".onnx-export-"))
    try:
        for graph, program in programs.items():
            program.model.metadata_props.update({**metadata, "graph": graph})
            program.save(str(staging / ONNX_FILES[graph]), external_data=external_data)
        if "preprocessor_config" in metadata:
            (staging / _PROCESSOR_FILE).write_text(metadata["preprocessor_config"] + "\n", encoding="utf-8")
        return _move_into_place(staging, directory, graphs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(directory.iterdir()):  # a failed call leaves no empty directory behind
            directory.rmdir()


def _check_request(model, output_dir, what) -> list[str]:
    """Validates every argument; returns the graphs to export, in order. Raises before anything is written."""
    from .modeling_xmadapter import XMAdapterForImageClassification

    if not isinstance(model, XMAdapterForImageClassification):
        raise TypeError(f"`model` must be an XMAdapterForImageClassification; got {type(model).__name__}.")
    names = [what] if isinstance(what, str) else list(what) if isinstance(what, Iterable) else None
    if not names or any(name not in EXPORTABLE_GRAPHS for name in names):
        raise ValueError(f"`what` must name one or more of {', '.join(map(repr, EXPORTABLE_GRAPHS))}; got {what!r}.")
    if not isinstance(output_dir, (str, os.PathLike)):
        raise TypeError(f"`output_dir` must be a path; got {type(output_dir).__name__}.")
    if Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"Cannot export into {str(output_dir)!r}: it exists and is not a directory.")
    if model.method.uses_cache and model.config.cache_size == 0:
        raise ValueError(
            f"Method {model.config.method!r} needs a cache: call `model.build_cache(dataset)` before exporting."
        )
    graphs = [graph for graph in EXPORTABLE_GRAPHS if graph in names]
    tensors = [(f"method.{k}", v) for k, v in model.method.state_dict().items()]
    tensors += [(k, v) for k, v in model.named_buffers(recurse=False)]
    if "full" in graphs:
        tensors += [(f"clip.{k}", v) for k, v in model.clip.state_dict().items()]
    else:
        tensors.append(("clip.logit_scale", model.clip.logit_scale))  # the head reads `s` from the backbone
    half = [(name, t.dtype) for name, t in tensors if t.is_floating_point() and t.dtype != torch.float32]
    if half:
        names = ", ".join(name for name, _ in half[:3]) + (", ..." if len(half) > 3 else "")
        raise TypeError(
            f"ONNX export runs in float32, but the model holds {half[0][1]} tensors ({names}): call "
            "`model.to(torch.float32)` first (a half-precision cache keeps its rounding)."
        )
    return graphs


def _require_onnx() -> None:
    missing = []
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise ImportError(
            f"ONNX export needs {' and '.join(missing)}: install the export extra, "
            '`pip install "xmadapter-hf[export]"`.'
        )


def _example_input(model, graph: str) -> torch.Tensor:
    device = model.class_embeds.device
    if graph == "head":
        return torch.randn(_EXAMPLE_BATCH, model.embed_dim, device=device)
    vision = model.clip.config.vision_config
    size, channels = vision.image_size, getattr(vision, "num_channels", 3)
    return torch.randn(_EXAMPLE_BATCH, channels, size, size, device=device)


def _export_graph(module: nn.Module, graph: str, example: torch.Tensor, opset: int | None):
    """`torch.export` with a dynamic batch, then `torch.onnx.export` of the exported program.

    Exporting the program (not the module) keeps torch.onnx from falling back to a capture strategy that silently
    fixes the batch size when the code specialises it: `torch.export` raises instead.
    """
    input_name = "image_embeds" if graph == "head" else "pixel_values"
    dynamic = {input_name: {0: torch.export.Dim(_BATCH)}}
    program = torch.export.export(module, (example,), dynamic_shapes=dynamic, strict=False)
    onnx_program = torch.onnx.export(
        program, (example,), input_names=[input_name], output_names=list(module.output_names),
        opset_version=opset, dynamo=True, verbose=False,
    )  # fmt: skip
    graph_values = [*onnx_program.model.graph.inputs, *onnx_program.model.graph.outputs]
    fixed = [value.name for value in graph_values if isinstance(value.shape[0], int)]
    if fixed:
        raise RuntimeError(f"The exporter fixed the batch axis of {fixed} to the example's size: please report this.")
    onnx_program.rename_axes({onnx_program.model.graph.inputs[0].shape[0]: _BATCH})  # torch names it `s<n>`
    return onnx_program


def _metadata(model) -> dict[str, str]:
    """The ONNX `metadata_props` (strings): labels, method, base model, version, preprocessing settings."""
    config = model.config
    metadata = {
        "id2label": json.dumps({str(i): name for i, name in enumerate(config.class_names)}),
        "method": config.method,
        "base_model_name_or_path": config.base_model_name_or_path or "",
        "base_model_revision": config.base_model_revision or "",
        "xmadapter_version": __version__,
    }
    image_processor = getattr(model.processor, "image_processor", model.processor)
    if image_processor is not None and hasattr(image_processor, "to_json_string"):
        metadata["preprocessor_config"] = image_processor.to_json_string().strip()
    return metadata


def _move_into_place(staging: Path, directory: Path, graphs: list[str]) -> dict[str, Path]:
    """Moves every staged file into ``directory``; a stale external-data file of a re-exported graph is removed."""
    written = {}
    for graph in graphs:
        name, data = ONNX_FILES[graph], f"{ONNX_FILES[graph]}.data"
        external = (staging / data).exists()
        if external:  # the weights first: the new graph never points at a missing or older data file
            os.replace(staging / data, directory / data)
        os.replace(staging / name, directory / name)
        if not external and (directory / data).is_file():
            (directory / data).unlink()  # left by an earlier export of this graph with external data
        written[graph] = directory / name
    if (staging / _PROCESSOR_FILE).exists():
        os.replace(staging / _PROCESSOR_FILE, directory / _PROCESSOR_FILE)
        written["preprocessor_config"] = directory / _PROCESSOR_FILE
    return written
