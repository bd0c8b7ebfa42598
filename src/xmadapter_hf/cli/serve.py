"""`xmadapter serve ADAPTER`: a web page (gradio) that classifies images and lets a visitor add classes (docs/app.md).

The page is served on 127.0.0.1 only, on `--port` or a free port, with no share link and gradio's analytics off.
*Classify*: an image -> its top-k classes with the scores `xmadapter predict` gives (calibrated where the adapter has
a temperature) and the top class's logit split into what zero-shot, the image cache and the text cache added; with
`--support DIR`, the adapter gets DIR's classes and a cache of its images (as `predict --support`) and the page
shows the support images closest to the query. *Add a class*: a name and a few images -> `add_classes` on this
browser session's copy of the adapter (other visitors never see it; at most `--max-visitors` copies, each dropped
after `--visitor-minutes` without use), then a zip of the grown adapter that `from_pretrained` loads.
Needs the `app` extra: pip install "xmadapter-hf[app]".
"""

from __future__ import annotations

from .common import (
    CLIError,
    Command,
    add_support_argument,
    add_threads_argument,
    positive_int,
    require_gradio,
    set_threads,
)


def add_arguments(parser) -> None:
    parser.add_argument("adapter", help="the adapter directory (or Hub repo id)")
    add_support_argument(parser)
    parser.add_argument("--port", type=int, help="the port on 127.0.0.1 (default: a free one from 7860)")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes shown per image (5)")
    parser.add_argument("--max-visitors", type=positive_int, default=8, help="visitors' grown copies kept (8)")
    parser.add_argument("--visitor-minutes", type=float, default=30.0, help="a copy unused this long is dropped (30)")
    parser.add_argument("--max-upload", default="10mb", help="the largest file a visitor may upload (10mb)")
    add_threads_argument(parser)


def run(args) -> int:
    require_gradio("`xmadapter serve` needs gradio")
    if args.port is not None and not 0 < args.port < 65536:
        raise CLIError(f"--port must be 1-65535, got {args.port}", status=2)
    if args.visitor_minutes <= 0:
        raise CLIError(f"--visitor-minutes must be positive, got {args.visitor_minutes}", status=2)
    from ..app.serving import serve

    set_threads(args.threads)
    serve(
        args.adapter, args.support, args.port, max_file_size=args.max_upload, top_k=args.top_k,
        max_visitors=args.max_visitors, ttl=60 * args.visitor_minutes,
    )  # fmt: skip
    return 0


COMMAND = Command(
    name="serve",
    help="a web page that classifies images and adds classes from a few images (gradio, on 127.0.0.1)",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
