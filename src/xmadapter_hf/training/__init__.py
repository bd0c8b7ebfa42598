"""The training path: the method's recipe as `TrainingArguments`, the Trainer that obeys them, `fit`, the loss and
the validation search. Imported lazily (`transformers.Trainer` imports `datasets`)."""

from .._lazy import lazy_exports

_EXPORTS = {
    "FitReport": ".fit",
    "SearchResult": ".search",
    "XMAdapterTrainer": ".trainer",
    "build_optimizer": ".trainer",
    "create_optimizer": ".trainer",
    "fit": ".fit",
    "hard_sample_weights": ".losses",
    "recipe_arguments": ".trainer",
    "recipe_of": ".trainer",
    "recipe_values": ".trainer",
    "search_hyperparameters": ".search",
    "search_on_validation": ".search",
    "steps_batch_size": ".trainer",
    "weighted_cross_entropy": ".losses",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
