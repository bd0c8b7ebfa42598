"""Our stand-in for transformers' `tests/generation/test_utils.py` (not in the transformers sdist).

`ModelTesterMixin` only checks `issubclass(tester, GenerationTesterMixin)` against `model_class.can_generate()`;
an image classifier does not generate, so its tester never derives from this class.
"""


class GenerationTesterMixin:
    """No tests: see the module docstring."""
