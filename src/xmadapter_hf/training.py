"""Training recipes: each method's optimiser and scheduler, usable as Trainer's `optimizers=` or in a plain loop.

Defaults follow the papers' code: Tip-Adapter-F and XMAdapter use AdamW(lr 1e-3, eps 1e-4) with a cosine
schedule; CLIP-Adapter the same; the Multi-Modal Adapter Adam(lr 5e-3, weight decay 1e-4). XMAdapter's affinity-ratio
logit, a single scalar, gets `affinity_ratio_lr_multiplier` (10x) the learning rate, or it barely moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RECIPES", "TrainingRecipe", "build_optimizer", "recipe_for"]


@dataclass(frozen=True)
class TrainingRecipe:
    """A method's optimiser settings (see the module docstring for the sources)."""

    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    eps: float = 1e-4
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 256


RECIPES: dict[str, TrainingRecipe] = {
    "tip-adapter-f": TrainingRecipe(),
    "xmadapter": TrainingRecipe(),
    "clip-adapter": TrainingRecipe(),
    "multimodal-adapter": TrainingRecipe(
        optimizer="adam", learning_rate=5e-3, eps=1e-8, weight_decay=1e-4, epochs=200
    ),
}


def recipe_for(method: str) -> TrainingRecipe:
    """The training recipe of ``method``; training-free methods raise `ValueError`.

    A trainable method registered with `register_method` and absent from `RECIPES` gets the default recipe (AdamW,
    lr 1e-3, eps 1e-4, weight decay 0.01, cosine).
    """
    from .methods import get_method_class, registered_methods

    if not get_method_class(method).trainable:
        trainable = [name for name in registered_methods() if get_method_class(name).trainable]
        raise ValueError(
            f"Method {method!r} is training-free (no trainable parameters); trainable methods: {', '.join(trainable)}."
        )
    return RECIPES.get(method, TrainingRecipe())


def build_optimizer(
    model,
    num_training_steps: int,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    eps: float | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The method's optimiser (with its parameter groups) and a cosine schedule over ``num_training_steps``.

    Build it after `build_cache` (which creates the cache-shaped parameters). Pass the pair to
    `Trainer(optimizers=...)` or step it in a plain loop.

    Example:

    ```python
    >>> optimizer, scheduler = build_optimizer(model, num_training_steps=200)  # doctest: +SKIP
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(optimizer, scheduler))
    ```
    """
    recipe = recipe_for(model.config.method)
    if not isinstance(num_training_steps, int) or num_training_steps < 1:
        raise ValueError(f"`num_training_steps` must be a positive integer, got {num_training_steps!r}.")
    lr = recipe.learning_rate if learning_rate is None else learning_rate
    groups = model.method.parameter_groups(lr)
    if not groups:
        raise ValueError(f"Method {model.config.method!r} has no trainable parameters: call `build_cache` first?")
    decay = recipe.weight_decay if weight_decay is None else weight_decay
    eps = recipe.eps if eps is None else eps
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(groups, lr=lr, eps=eps, weight_decay=decay)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr, eps=eps, weight_decay=decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=num_training_steps)
    return optimizer, scheduler
