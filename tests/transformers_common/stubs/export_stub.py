"""Our stand-in for transformers' `tests/exporters/test_export.py` (not in the transformers sdist).

`ModelTesterMixin` derives from `ExportTesterMixin`, whose `torch.export` tests target transformers' own models;
the stand-in adds no test (`torch.export` of this model is covered by tests/test_export.py, the ONNX export).
"""


class ExportTesterMixin:
    """No tests: see the module docstring."""
