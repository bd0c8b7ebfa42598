"""The web page of an adapter (`xmadapter serve`, and the Space `xmadapter space` writes): docs/app.md.

`load_served(source, support=None)` loads an adapter (a folder or Hub repo id) for serving; `build_page(served)`
builds its gradio page and `launch_page(page, port)` serves it on 127.0.0.1. gradio is imported only when a page
is built (the `app` extra: ``pip install "xmadapter-hf[app]"``); `import xmadapter_hf` never imports it.
`write_space(adapter, folder)` writes a ready Hugging Face Space whose `app.py` calls `run_space`.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__all__ = [
    "AppInputError",
    "ServedAdapter",
    "build_page",
    "launch_page",
    "load_served",
    "run_space",
    "serve",
    "write_space",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AppInputError": ".core",
        "ServedAdapter": ".core",
        "load_served": ".serving",
        "serve": ".serving",
        "run_space": ".serving",
        "write_space": ".space",
        "build_page": ".page",
        "launch_page": ".page",
    },
)
