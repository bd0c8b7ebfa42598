"""`method="auto"`: a model that has not chosen its method yet, and the order its choice breaks ties in.

`from_clip(..., method="auto")` (or `XMAdapterConfig(method="auto")`) builds a placeholder: `config.method` is
`"auto"` and `model.method` a [`PendingSelection`], which classifies nothing. `fit` extracts the images once, fits
every candidate method from those embeddings, and turns the model into the candidate with the best validation
accuracy (`training/select.py`; docs/training.md). Until then `forward`, `save_pretrained`, `push_to_hub`,
`from_pretrained` of such a config and the Trainer refuse it with a message that says to call `fit` first.

`"auto"` is not a registered method: `registered_methods()` and `METHODS` list the methods themselves.
"""

from __future__ import annotations

from .methods import AUTO_CANDIDATES, AdapterMethod, get_method_class

__all__ = ["AUTO", "AUTO_CANDIDATES", "PendingSelection", "is_pending", "method_class", "pending_message"]

#: The `config.method` of a model whose method `fit` chooses on validation.
AUTO = "auto"


def pending_message(action: str) -> str:
    """The error of anything a model built with `method="auto"` cannot do before `fit` has chosen its method."""
    return (
        f"This model was built with method='auto' and has not chosen its method yet, so it cannot {action}: call "
        "`xmadapter_hf.fit(model, train, validation)` first (it fits every candidate method from one extraction of "
        "the images and keeps the one with the best validation accuracy), or build the model with a method of its own."
    )


def is_pending(model_or_config) -> bool:
    """Whether a model (or a config) still waits for `fit` to choose its method."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "method", None) == AUTO


class PendingSelection(AdapterMethod):
    """The method of a model built with `method="auto"` before `fit` has chosen one: no parameters, no search, and a
    forward that refuses with [`pending_message`]. Not registered (it is no method a config can keep)."""

    name = AUTO

    def forward(self, image_embeds, state, labels=None, cache_index=None):
        raise ValueError(pending_message("classify"))


def method_class(name: str) -> type[AdapterMethod]:
    """The class that runs ``name``: the registered method, or [`PendingSelection`] for `"auto"`."""
    return PendingSelection if name == AUTO else get_method_class(name)
