"""Data: images, augmentation, the input pipeline, extraction, the embedding store, views, splits, defaults."""

__all__ = ["WORKERS_ENV"]

#: The environment variable that sets what `num_workers=None` means in every extraction (the CLI's ``--workers``
#: sets it): a count of worker processes, 0 for none (see `data/loader.py`). Here, free of imports, for the CLI.
WORKERS_ENV = "XMADAPTER_NUM_WORKERS"
