"""Loading an adapter for the page and serving it: what `xmadapter serve` and a Space's `app.py` call."""

from __future__ import annotations

import os
from pathlib import Path

from .core import ServedAdapter, load_support

__all__ = ["load_served", "run_space", "serve"]


def load_served(
    source: str, support: str | None = None, *, top_k: int = 5, max_visitors: int = 8, ttl: float = 1800.0,
    show_progress: bool = False, revision: str | None = None, backbone: str | None = None,
) -> ServedAdapter:  # fmt: skip
    """The adapter at ``source`` (a directory or Hub repo id, at ``revision``) ready to serve. With ``support`` (an
    image folder DIR/<class>/<images>), it gets the folder's classes and a cache of its images instead of its own, as
    `xmadapter predict --support` gives them, and the page shows the support images closest to each query.
    ``backbone="demo"`` loads it on the demo CLIP of the installed package instead of the recorded path (a Space's
    copy of an adapter built on the demo CLIP, `xmadapter_hf.app.space`)."""
    from .. import XMAdapterForImageClassification
    from ..cli.common import check_adapter
    from ..cli.data import open_support

    check_adapter(source)
    options = {"revision": revision} if revision else {}
    if backbone is not None:
        if backbone != "demo":
            raise ValueError(f"`backbone` must be None (the recorded one) or 'demo'; got {backbone!r}.")
        from ..demo import load_demo_clip

        options["clip_model"], options["processor"] = load_demo_clip()
    images = None
    if support is None:
        model = XMAdapterForImageClassification.from_pretrained(source, **options)
    else:
        _, names, _ = open_support(support)
        model = XMAdapterForImageClassification.from_pretrained(source, class_names=names, **options)
        images, _ = load_support(model, support, show_progress)
    return ServedAdapter(model, images, top_k=top_k, max_visitors=max_visitors, ttl=ttl, source=source)


def serve(
    source: str, support: str | None = None, port: int | None = None, *, block: bool = True,
    max_file_size: str = "10mb", title: str | None = None, host: str = "127.0.0.1", **kwargs,
):  # fmt: skip
    """Loads the adapter, builds its page and serves it on ``host`` (127.0.0.1), no share link, analytics off."""
    from .page import build_page, launch_page

    served = load_served(source, support, **kwargs)
    page = build_page(served, title or f"Adapter {Path(source).name if Path(source).is_dir() else source}")
    launch_page(page, port, max_file_size=max_file_size, block=block, host=host)
    return page


def run_space(source: str, *, revision: str | None = None, backbone: str | None = None, title: str | None = None,
              block: bool = True):  # fmt: skip
    """What a Space's `app.py` (written by `xmadapter space`) runs: [`serve`] on GRADIO_SERVER_NAME and
    GRADIO_SERVER_PORT where they are set (a Space sets them), else on 0.0.0.0 where SPACE_ID says this is a Space
    and 127.0.0.1 elsewhere, on port 7860 or the next free one. Gradio's analytics are off."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    host = os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1")
    port = int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None
    return serve(source, port=port, host=host, title=title, revision=revision, backbone=backbone, block=block)
