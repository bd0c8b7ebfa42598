"""A small CLIP that has learned something, shipped with the package, and its few-shot demo task.

- [`demo_clip_path`] returns a local directory in the `save_pretrained` layout that every API takes as it takes
  `"openai/clip-vit-base-patch16"` (its weights' sha256 checked first); [`load_demo_clip`] loads it.
- [`demo_task`] gives a split of the demo task (16 texture classes that pre-training never showed, rendered with a
  distribution shift) as a `datasets.Dataset`; [`export_images`] writes it as an imagefolder. ``task="sketch"``
  gives the second task (`DEMO_TASKS`): the same classes under another kind of shift (outlines, magnified, tilted).
- `python -m xmadapter_hf.demo.pretrain --output DIR --seed 0` rebuilds the weights (docs/demo.md).

Example:

```python
>>> from xmadapter_hf import XMAdapterForImageClassification
>>> from xmadapter_hf.demo import DEMO_CLASSES, demo_clip_path
>>> model = XMAdapterForImageClassification.from_clip(demo_clip_path(), DEMO_CLASSES, method="zero-shot")
>>> model.config.num_classes
16
```
"""

from .checkpoint import DEMO_CLIP_SHA256, DemoCheckpointError, demo_clip_path, load_demo_clip, verify_demo_clip
from .task import (
    DEMO_CLASSES,
    DEMO_TASKS,
    IMAGE_SIZE,
    POOL_SIZES,
    DemoTaskSpec,
    demo_images,
    demo_task,
    export_images,
)

__all__ = [
    "DEMO_CLASSES",
    "DEMO_CLIP_SHA256",
    "DEMO_TASKS",
    "IMAGE_SIZE",
    "POOL_SIZES",
    "DemoCheckpointError",
    "DemoTaskSpec",
    "demo_clip_path",
    "demo_images",
    "demo_task",
    "export_images",
    "load_demo_clip",
    "verify_demo_clip",
]
