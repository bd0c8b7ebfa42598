"""`xmadapter export`: write an adapter as ONNX for inference servers (`xmadapter_hf.export.export_onnx`).

`head.onnx` maps raw image embeddings to the logits and the per-modality outputs; `model.onnx` maps pixel values
(the backbone included) to the same outputs; `id2label` and the preprocessing settings go into the files' metadata
and `preprocessor_config.json` (docs/export.md). Needs the `export` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

from .common import (
    Command,
    add_loading_arguments,
    add_threads_argument,
    check_output_folder,
    load_adapter,
    loading_options,
    set_threads,
)


def add_arguments(parser) -> None:
    from ..export import EXPORTABLE_GRAPHS

    parser.add_argument("adapter", help="the adapter directory (or Hub repo id)")
    parser.add_argument("output", help="the directory to write the ONNX files into (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="the format (onnx)")
    parser.add_argument(
        "--what", nargs="+", choices=EXPORTABLE_GRAPHS, default=list(EXPORTABLE_GRAPHS),
        help="head (embeddings -> logits) and/or full (pixels -> logits); default both",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, help="the ONNX opset (default: torch's)")
    add_threads_argument(parser)
    add_loading_arguments(parser)


def run(args) -> int:
    from ..export import export_onnx

    check_output_folder(args.output, args.overwrite, label="output")
    set_threads(args.threads)
    model = load_adapter(args.adapter, **loading_options(args))
    written = export_onnx(model, args.output, what=tuple(args.what), opset=args.opset)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


COMMAND = Command(
    name="export",
    help="export an adapter to ONNX (the head over embeddings and/or the whole model)",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
