"""Loading an adapter for the page and serving it: what `xmadapter serve` and a Space's `app.py` call."""

from __future__ import annotations

from pathlib import Path

from .core import ServedAdapter, load_support

__all__ = ["load_served", "serve"]


def load_served(
    source: str, support: str | None = None, *, top_k: int = 5, max_visitors: int = 8, ttl: float = 1800.0,
    show_progress: bool = False,
) -> ServedAdapter:  # fmt: skip
    """The adapter at ``source`` (a directory or Hub repo id) ready to serve. With ``support`` (an image folder
    DIR/<class>/<images>), it gets the folder's classes and a cache of its images instead of its own, as
    `xmadapter predict --support` gives them, and the page shows the support images closest to each query."""
    from .. import XMAdapterForImageClassification
    from ..cli.common import check_adapter
    from ..cli.data import open_support

    check_adapter(source)
    images = None
    if support is None:
        model = XMAdapterForImageClassification.from_pretrained(source)
    else:
        _, names, _ = open_support(support)
        model = XMAdapterForImageClassification.from_pretrained(source, class_names=names)
        images, _ = load_support(model, support, show_progress)
    return ServedAdapter(model, images, top_k=top_k, max_visitors=max_visitors, ttl=ttl, source=source)


def serve(
    source: str, support: str | None = None, port: int | None = None, *, block: bool = True,
    max_file_size: str = "10mb", title: str | None = None, **kwargs,
):  # fmt: skip
    """Loads the adapter, builds its page and serves it on 127.0.0.1 (no share link, gradio analytics off)."""
    from .page import build_page, launch_page

    served = load_served(source, support, **kwargs)
    page = build_page(served, title or f"Adapter {Path(source).name if Path(source).is_dir() else source}")
    launch_page(page, port, max_file_size=max_file_size, block=block)
    return page
