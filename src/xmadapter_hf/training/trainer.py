"""The one training path: a method's recipe as `TrainingArguments`, and the Trainer that trains with them.

- [`recipe_arguments`] turns the method's [`~xmadapter_hf.methods.TrainingRecipe`] into `TrainingArguments`
  (learning rate, weight decay, Adam's eps and betas, schedule, warm-up, clipping, epochs, batch); any field can be
  overridden, and the Trainer obeys the arguments it is given.
- [`XMAdapterTrainer`] is `transformers.Trainer` with three changes: the optimiser takes the method's parameter groups
  (XMAdapter's affinity-ratio logit at its learning-rate multiplier), the training order is [`EpochShuffleSampler`]'s
  (seed, epoch) permutation, and a training set with `set_epoch` (the per-epoch view draws) is told the epoch.
- `fit` trains with exactly this Trainer; [`build_optimizer`] gives the same optimiser and schedule to a plain loop
  (the Accelerate example) or to a stock `Trainer(optimizers=...)`.

Adam with the weight decay added to the gradient (the Multi-Modal Adapter's authors' optimiser) has no `optim` name in
transformers: its recipe sets `optim="adamw_torch"` with `optim_args="decoupled_weight_decay=False"`, which this
module reads as `torch.optim.Adam(decoupled_weight_decay=False)` (torch's AdamW is the same class with `True`).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.optimization import get_scheduler

from ..data.views import EpochShuffleSampler, ViewEpochCallback
from ..methods import TrainingRecipe, get_method_class, registered_methods

__all__ = ["ValidationEarlyStopping", "XMAdapterTrainer", "build_optimizer", "create_optimizer", "recipe_arguments",
           "recipe_of", "recipe_values", "steps_batch_size"]  # fmt: skip

_COUPLED_DECAY = "decoupled_weight_decay=False"


def recipe_of(model) -> TrainingRecipe:
    """The training recipe of the model's method (a trainable method without one: `TrainingRecipe()`'s defaults,
    AdamW at lr 1e-3); a training-free method raises `ValueError`, and so does a model built with `method="auto"`
    before `fit` has chosen its method."""
    from ..selection import is_pending, pending_message

    if is_pending(model):
        raise ValueError(pending_message("be trained (the Trainer trains one method; `fit` chooses one)"))
    if not model.method.trainable:
        trainable = [name for name in registered_methods() if get_method_class(name).trainable]
        raise ValueError(
            f"Method {model.config.method!r} is training-free (no trainable parameters); trainable methods: "
            f"{', '.join(trainable)}."
        )
    return type(model.method).recipe or TrainingRecipe()


def steps_batch_size(num_items: int, recipe_batch_size: int = 256, min_steps: int = 8) -> int:
    """The batch size for an epoch of at least ``min_steps`` optimiser steps, capped at the recipe's batch size.

    Example:

    ```python
    >>> from xmadapter_hf.training import steps_batch_size
    >>> steps_batch_size(160), steps_batch_size(16_000)
    (20, 256)
    ```
    """
    return max(1, min(recipe_batch_size, num_items // min_steps))


def recipe_values(model, *, num_items: int | None = None, **overrides) -> dict:
    """The `TrainingArguments` fields of the model's method's recipe, with ``overrides`` on top (see
    [`recipe_arguments`])."""
    recipe = recipe_of(model)
    items = model.config.cache_size if num_items is None else num_items
    batch = steps_batch_size(items, recipe.batch_size, recipe.min_steps_per_epoch) if items else recipe.batch_size
    values = dict(
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        adam_epsilon=recipe.eps,
        adam_beta1=recipe.betas[0],
        adam_beta2=recipe.betas[1],
        optim="sgd" if recipe.optimizer == "sgd" else "adamw_torch",
        optim_args={"adam": _COUPLED_DECAY, "sgd": f"momentum={recipe.momentum}"}.get(recipe.optimizer),
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_steps,
        max_grad_norm=recipe.max_grad_norm,
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=batch,
        seed=model.config.seed if model.config.seed is not None else 0,
        remove_unused_columns=False,
    )
    values.update(overrides)
    return values


def recipe_arguments(model, output_dir: str | None = None, *, num_items: int | None = None, **overrides):
    """`TrainingArguments` carrying the model's method's recipe, with ``overrides`` on top.

    The per-device batch is [`steps_batch_size`] of the training items (``num_items``, default the cache size: one
    item per few-shot image and epoch on both the embedding and the pixel path) and the recipe's batch. The seed is
    `config.seed` (0 if unset). `remove_unused_columns` is off: the library's datasets yield exactly what `forward`
    takes, and a `with_transform` dataset needs it off. Everything else is `TrainingArguments`' default.

    Example:

    ```python
    >>> args = recipe_arguments(model, "out", learning_rate=5e-4, num_train_epochs=50)  # doctest: +SKIP
    >>> XMAdapterTrainer(model, args, train_dataset=EmbeddingViewsDataset(views.embeds, views.labels)).train()
    ```
    """
    return TrainingArguments(output_dir=output_dir, **recipe_values(model, num_items=num_items, **overrides))


def create_optimizer(model, args, optimizer_cls_and_kwargs=None) -> torch.optim.Optimizer:
    """The optimiser ``args`` (`TrainingArguments`, or any object with its optimiser fields) describe, over the model's
    method's parameter groups (each with its learning rate and weight decay, from `args.learning_rate` and
    `args.weight_decay`)."""
    groups = model.method.parameter_groups(args.learning_rate, args.weight_decay)
    if not groups:
        recipe_of(model)  # a training-free method: its error
        raise ValueError(f"Method {model.config.method!r} has no trainable parameters: call `build_cache` first?")
    if optimizer_cls_and_kwargs is None:
        optimizer_cls_and_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer_cls, kwargs = optimizer_cls_and_kwargs
    if optimizer_cls is torch.optim.AdamW and _COUPLED_DECAY in (args.optim_args or "").replace(" ", ""):
        optimizer_cls, kwargs = torch.optim.Adam, {**kwargs, "decoupled_weight_decay": False}
    if "params" in kwargs or "model" in kwargs or "optimizer_dict" in kwargs:
        raise ValueError(
            f"`optim={args.optim}` builds its own parameter groups, which `XMAdapterTrainer` does not use."
        )
    return optimizer_cls(groups, **kwargs)


def build_optimizer(
    model,
    num_training_steps: int,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    eps: float | None = None,
    **overrides,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimiser and schedule `XMAdapterTrainer` builds from [`recipe_arguments`] (with ``learning_rate``,
    ``weight_decay``, ``eps`` and any other ``overrides`` of its fields), for a plain loop or
    `Trainer(optimizers=...)`.

    Build it after `build_cache` (which creates the cache-shaped parameters). Gradient clipping (`max_grad_norm`) is
    the loop's to do. No `TrainingArguments` is made (making one resets accelerate's state, which a running
    `Accelerator` owns): the same fields are read from a plain namespace.

    Example:

    ```python
    >>> optimizer, scheduler = build_optimizer(model, num_training_steps=200)  # doctest: +SKIP
    ```
    """
    if isinstance(num_training_steps, bool) or not isinstance(num_training_steps, int) or num_training_steps < 1:
        raise ValueError(f"`num_training_steps` must be a positive integer, got {num_training_steps!r}.")
    given = {"learning_rate": learning_rate, "weight_decay": weight_decay, "adam_epsilon": eps}
    overrides.update({k: v for k, v in given.items() if v is not None})
    args = SimpleNamespace(lr_scheduler_kwargs=None, **recipe_values(model, **overrides))
    optimizer = create_optimizer(model, args)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=int(args.warmup_steps),
        num_training_steps=num_training_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )  # fmt: skip
    return optimizer, scheduler


@torch.no_grad()
def _accuracies(model, embeds: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024,
                outputs: tuple[str, ...] = ("logits",)) -> list[float]:  # fmt: skip
    """Top-1 accuracy of each of the model's ``outputs`` (e.g. `"zero_shot_logits"`) on raw embeddings `(M, C)`."""
    device, hits = model.class_embeds.device, [0] * len(outputs)
    for start in range(0, embeds.shape[0], batch_size):
        out = model(image_embeds=embeds[start : start + batch_size].to(device))
        truth = labels[start : start + batch_size].to(device)
        for i, name in enumerate(outputs):
            hits[i] += int((getattr(out, name).argmax(-1) == truth).sum())
    return [count / embeds.shape[0] for count in hits]


class ValidationEarlyStopping(TrainerCallback):
    """Best-epoch selection on validation accuracy, with optional early stopping (any method, through its recipe's
    `keep_best_epoch` and `early_stopping_patience`, or directly).

    The model's validation accuracy (raw embeddings `(M, C)` and labels) is measured before training (epoch 0: the
    starting weights, e.g. Tip-Adapter-F's training-free start) and after every epoch; an epoch that beats the best so
    far (strictly: ties keep the earlier) is remembered with a copy of the method's tensors; with a ``patience``,
    training stops after that many epochs without improvement (the Multi-Modal Adapter authors' rule); at the end the
    best epoch's tensors are put back, so the result is never worse on validation than the start. The config (the
    searched values) is not touched.

    Args:
        patience (`int`, *optional*): epochs without improvement before stopping; `None` = train every epoch and only
            select the best.
    """

    def __init__(
        self, model, embeds: torch.Tensor, labels: torch.Tensor, patience: int | None = None, batch_size: int = 1024
    ):
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"`patience` must be a positive integer or None, got {patience!r}.")
        self.model, self.embeds, self.labels = model, embeds, torch.as_tensor(labels).long()
        self.patience, self.batch_size = patience, batch_size
        self.best_accuracy, self.best_epoch, self.best_state, self.stale = -1.0, None, None, 0
        self.start_accuracy: float | None = None
        self.history: list[float] = []  # after each epoch (1, 2, ...)

    def accuracy(self) -> float:
        model, training = self.model, self.model.training
        model.eval()
        (accuracy,) = _accuracies(model, self.embeds, self.labels, self.batch_size)
        model.train(training)
        return accuracy

    def _consider(self, epoch: int, accuracy: float) -> bool:
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch, self.stale = accuracy, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.method.state_dict().items()}
            return True
        self.stale += 1
        return False

    def on_train_begin(self, args, state, control, **kwargs):
        self.best_accuracy, self.best_epoch, self.best_state, self.stale = -1.0, None, None, 0
        self.history = []
        self.start_accuracy = self.accuracy()
        self._consider(0, self.start_accuracy)
        self.stale = 0
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        accuracy = self.accuracy()
        self.history.append(accuracy)
        if not self._consider(len(self.history), accuracy) and self.patience and self.stale >= self.patience:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.best_state is not None:
            self.model.method.load_state_dict(self.best_state)
            self.model.method.reset_memo()


class XMAdapterTrainer(Trainer):
    """`transformers.Trainer` that trains an [`XMAdapterForImageClassification`] as its method's recipe says.

    Give it [`recipe_arguments`] (the default when ``args`` is omitted) or your own `TrainingArguments`: the optimiser
    is built from the arguments over the method's parameter groups (`optim`, `learning_rate`, `weight_decay`,
    `adam_*`), the schedule from `lr_scheduler_type` and the warm-up, clipping from `max_grad_norm`; the training order
    is drawn from (`data_seed` or `seed`, epoch) ([`EpochShuffleSampler`]) when `train_sampling_strategy` is
    `"random"`; a training dataset with `set_epoch` gets a [`ViewEpochCallback`]. With ``validation=(embeds, labels)``
    (raw validation embeddings) it restores the epoch with the best validation accuracy, the starting weights included
    (``keep_best_epoch``, else the recipe's: on by default), and with a patience (``early_stopping_patience``, else the
    recipe's) it also stops early ([`ValidationEarlyStopping`]). Without ``validation`` it keeps the last epoch.

    Example:

    ```python
    >>> trainer = XMAdapterTrainer(model, recipe_arguments(model, "out"), train_dataset=views)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    ```
    """

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        *more,
        validation: tuple[torch.Tensor, torch.Tensor] | None = None,
        early_stopping_patience: int | None = None,
        keep_best_epoch: bool | None = None,
        **kwargs,
    ):
        from ..selection import is_pending, pending_message

        if model is not None and is_pending(model):
            raise ValueError(pending_message("be trained (the Trainer trains one method; `fit` chooses one)"))
        if args is None and model is not None:
            args = recipe_arguments(model)
        super().__init__(model, args, *more, **kwargs)
        # Best-epoch selection and early stopping on validation: explicit arguments, else the recipe's
        recipe = recipe_of(model) if model is not None and model.method.trainable else None
        patience = early_stopping_patience
        if patience is None and recipe is not None:
            patience = recipe.early_stopping_patience
        keep = keep_best_epoch
        if keep is None:
            keep = recipe.keep_best_epoch if recipe is not None else False
        self.early_stopping = None
        if validation is not None and (patience or keep):
            self.early_stopping = ValidationEarlyStopping(model, validation[0], validation[1], patience or None)
            self.add_callback(self.early_stopping)
        elif early_stopping_patience or keep_best_epoch:
            raise ValueError(
                "`early_stopping_patience` and `keep_best_epoch` need `validation=(embeddings, labels)` to measure "
                "accuracy on."
            )
        dataset = self.train_dataset
        present = any(isinstance(c, ViewEpochCallback) for c in self.callback_handler.callbacks)
        if dataset is not None and hasattr(dataset, "set_epoch") and not present:
            self.add_callback(ViewEpochCallback(dataset))

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            target = self.model if model is None else model
            self.optimizer = create_optimizer(
                getattr(target, "module", target), self.args, self.optimizer_cls_and_kwargs
            )
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "random" or dataset is None or not hasattr(dataset, "__len__"):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochShuffleSampler(len(dataset), seed=seed)
