"""Lazy exports of a package: a name is imported from its module the first time it is asked for.

`import xmadapter_hf` stays light (it imports neither `datasets`, which `transformers.Trainer` pulls in, nor
matplotlib): the training path is imported when one of its names is first used.
"""

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """`(__getattr__, __dir__)` for a package whose ``exports`` map names to the relative module defining them."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
