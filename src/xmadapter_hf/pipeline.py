"""`XMAdapterImageClassificationPipeline`: transformers' image-classification pipeline with scores that mean something.

transformers' stock `ImageClassificationPipeline` scores classes with the plain ``softmax(logits)`` and sorts them by
that score (`postprocess`); it has no hook for a temperature. An adapter's searched residual ratio can reach the
hundreds, so there every score is 100 % or 0 % and the classes after the first come in class-index order, not in
the order of their logits. This subclass changes only `postprocess`: the scores are ``softmax(logits / T)`` with the
temperature `config.temperature` that [`~xmadapter_hf.fit`] fitted on the validation split (`None`: ``T = 1``), and
the classes are ranked by their logits, equal logits in class-index order (`xmadapter_hf.calibration`). Loading,
preprocessing and the forward are the stock pipeline's.

Two ways to use it (``import xmadapter_hf`` registers the task ``"xmadapter-image-classification"`` with transformers'
`PIPELINE_REGISTRY`):

```python
from transformers import pipeline
from xmadapter_hf import XMAdapterImageClassificationPipeline

classifier = pipeline("xmadapter-image-classification", model="user/xmadapter-eurosat")
classifier = pipeline("image-classification", model="user/xmadapter-eurosat",
                      pipeline_class=XMAdapterImageClassificationPipeline)
```

The stock ``pipeline("image-classification", ...)`` still works with an adapter and returns the same top class; its
scores are uncalibrated (docs/hub.md).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY, ImageClassificationPipeline
from transformers.pipelines.image_classification import ClassificationFunction

from .calibration import probabilities, rank_by_logits, temperature_of

__all__ = ["PIPELINE_TASK", "XMAdapterImageClassificationPipeline", "register_pipeline"]

#: The task name under which `import xmadapter_hf` registers [`XMAdapterImageClassificationPipeline`].
PIPELINE_TASK = "xmadapter-image-classification"


class XMAdapterImageClassificationPipeline(ImageClassificationPipeline):
    """The stock image-classification pipeline, scoring with the adapter's fitted temperature and ranking by logits.

    `function_to_apply` keeps the stock meanings: `"softmax"` (the default for an adapter) gives
    ``softmax(logits / config.temperature)``; `"sigmoid"` and `"none"` the stock sigmoid of the logits and the raw
    logits. Whatever the function, classes are ranked by their logits (ties: the lower class index first), and each
    result is ``{"label": ..., "score": ...}`` as the stock pipeline returns.
    """

    def postprocess(self, model_outputs, function_to_apply=None, top_k: int = 5) -> list[dict]:
        config = self.model.config
        if function_to_apply is None:
            function_to_apply = (
                ClassificationFunction.SIGMOID if config.num_labels == 1 else ClassificationFunction.SOFTMAX
            )
        logits = model_outputs["logits"][0].float()  # (N,)
        if function_to_apply == ClassificationFunction.SOFTMAX:
            scores = probabilities(logits, temperature_of(config))
        elif function_to_apply == ClassificationFunction.SIGMOID:
            scores = torch.sigmoid(logits)
        elif function_to_apply == ClassificationFunction.NONE:
            scores = logits
        else:
            raise ValueError(f"Unrecognized `function_to_apply` argument: {function_to_apply}")
        order = rank_by_logits(logits, min(top_k, config.num_labels) if top_k is not None else None)
        return [{"label": config.id2label[i], "score": float(scores[i])} for i in order.tolist()]


def register_pipeline() -> None:
    """Registers [`XMAdapterImageClassificationPipeline`] under [`PIPELINE_TASK`] (done by ``import xmadapter_hf``)."""
    registered = PIPELINE_REGISTRY.supported_tasks.get(PIPELINE_TASK, {}).get("impl")
    name = (XMAdapterImageClassificationPipeline.__module__, XMAdapterImageClassificationPipeline.__qualname__)
    if registered is not None and (registered.__module__, registered.__qualname__) == name:
        return  # a re-import: transformers would log "already registered. Overwriting"
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK,
        pipeline_class=XMAdapterImageClassificationPipeline,
        pt_model=AutoModelForImageClassification,
        type="image",
    )
