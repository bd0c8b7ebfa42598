"""What every method shares: the registry, the protocol of hooks the rest of the library calls, and the types those
hooks exchange (the cache state a method reads, the output it returns, its training recipe, its search space).

A method is one `AdapterMethod` subclass in one file, registered by name. The rest of the package never names a
method: it asks the method. The hooks, each with a default that fits a method without them:

- ``config_fields``: a `strict` dataclass of the method's fields of [`XMAdapterConfig`] (defaults, types, validators
  and docs); the config validates them through the registry, at construction and at assignment.
- ``validate_config(config)``: checks between fields; ``measures_disagreement(config)``: whether the method returns
  the cross-modal disagreement the `disagreement` hard-sample criterion needs.
- ``recipe``: the [`TrainingRecipe`] of a trainable method (`None`: training-free); ``parameter_groups(lr, wd)``:
  its optimiser groups.
- ``search_space(image_embeds, state)``: what the validation search tunes (`None`: nothing);
  ``searched_fields(config)``: the config fields it sets (what `fit(search=False)` leaves at their values).
- ``logit_parts(output)``: what each term of the logits adds (zero-shot, the caches), for readouts such as
  `xmadapter predict`.
- ``export_constants(state)`` and ``export_forward(image_embeds, state, constants)``: what `export.export_onnx`
  traces (the eval forward with inference-time tensors held as graph constants, no loop over the batch).
- ``cache_parameters``: the names of parameters with one row per cache entry (learned keys): they are resized and
  initialised with the cache (``resize_cache``, ``init_from_cache``; growing keeps the old rows, which is how classes
  are added), stored in the cache dtype after `half_cache()` (``cast_cache``), and written in it on save.
- ``add_classes(state, old_classes, old_entries)``: the model gained classes (and their cache entries at the end of
  the cache); the default grows the cache-shaped parameters keeping the old rows and starts the new rows from their
  embeddings. A method with class-shaped parameters overrides it.
- ``prepare_support(views, labels, num_classes, first_class)`` and ``apply_support(prepared)``: what a method keeps
  of the support images beyond the cache keys (which average the views), from the raw embeddings of **every
  augmented view**: GDA's class means and shared covariance. `set_cache`, `build_cache`, `fit` and `add_classes`
  call ``prepare_support`` before any state changes (it may refuse support it cannot use) and ``apply_support``
  with its result once the cache has changed. By default nothing is kept.

A tensor that a method computes from its weights and the cache alone (XMAdapter's text keys, Meta-Adapter's adapted
classifier) is remembered at inference by a [`Memo`] submodule (`methods/memo.py`), which its `resize_cache` resizes;
``reset_memo()`` forgets every memo of the method.

A parameter that a hook replaces (a new `nn.Parameter`) is retired with [`retire_parameter`]: an optimiser built
before and still holding it raises at its next step instead of silently training a tensor the model no longer uses.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers.utils import ModelOutput

from .memo import Memo

__all__ = [
    "AdapterMethod",
    "CacheState",
    "CacheTerm",
    "LogitTerm",
    "MethodOutput",
    "SearchSpace",
    "TrainingRecipe",
    "adapter_linear",
    "as_input_of",
    "get_method_class",
    "method_config_fields",
    "register_method",
    "registered_methods",
    "retire_parameter",
]

_REGISTRY: dict[str, type["AdapterMethod"]] = {}
_FIELDS_SEEN: list = [-1, {}]  # (registry size, method_config_fields()) of the last computation


def register_method(name: str):
    """Class decorator registering an [`AdapterMethod`] under ``name`` (a value of `config.method`).

    The method's `config_fields` join the config's fields; a field name that another registered method declares
    differently is refused.
    """

    def wrap(cls: type[AdapterMethod]) -> type[AdapterMethod]:
        if name in _REGISTRY:
            raise ValueError(f"A method named {name!r} is already registered ({_REGISTRY[name].__name__}).")
        known = method_config_fields()
        for field in _fields_of(cls):
            other = known.get(field.name)
            if other is not None and other[1] is not field:
                raise ValueError(
                    f"Method {name!r} declares the config field `{field.name}`, which {other[0].__name__} declares "
                    "differently: give it another name, or inherit the other method's fields."
                )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_method_class(name: str) -> type["AdapterMethod"]:
    """The class registered under ``name``; `ValueError` naming the registered methods otherwise."""
    if name not in _REGISTRY:
        raise ValueError(
            f"`method` must be a registered method ({', '.join(sorted(_REGISTRY))}); got {name!r}. A method of your "
            "own must be registered with `xmadapter_hf.register_method` (its module imported) before the config."
        )
    return _REGISTRY[name]


def registered_methods() -> list[str]:
    """The names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def _fields_of(cls) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls.config_fields) if cls.config_fields is not None else ()


def method_config_fields() -> dict[str, tuple[type, dataclasses.Field]]:
    """Every config field that a registered method declares: name -> (its `config_fields` class, the field)."""
    if _FIELDS_SEEN[0] != len(_REGISTRY):  # the registry only grows: recompute when it did
        fields = {}
        for cls in _REGISTRY.values():
            for field in _fields_of(cls):
                owners = cls.config_fields.__mro__
                owner = next(c for c in owners if field.name in c.__dict__.get("__annotations__", {}))
                fields.setdefault(field.name, (owner, field))
        _FIELDS_SEEN[:] = [len(_REGISTRY), fields]
    return _FIELDS_SEEN[1]


_RETIRED = [0]  # parameters retired so far in this process (the optimiser hook is registered at the first)


def retire_parameter(old: nn.Parameter, why: str) -> None:
    """Marks ``old`` as replaced by a new parameter (``why``: what replaced it): an optimiser holding it refuses its
    next `step()` (a global `torch.optim` step pre-hook, registered once; it reads one attribute per parameter)."""
    old._xmadapter_retired = why
    if not _RETIRED[0]:
        register_optimizer_step_pre_hook(_refuse_retired)
    _RETIRED[0] += 1


def _refuse_retired(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            why = getattr(param, "_xmadapter_retired", None)
            if why is not None:
                raise RuntimeError(
                    f"This optimiser (or the Trainer, DDP wrapper or compiled graph holding it) was built before "
                    f"{why} replaced the adapter's parameters of shape {tuple(param.shape)}: it would train tensors "
                    "the model no longer uses. Build a new optimiser or Trainer (`build_optimizer`, `fit`, "
                    "`Trainer(model=...)`) after changing the classes or the cache."
                )


def adapter_linear(in_features: int, out_features: int, bias: bool = True, zero_init: bool = False) -> nn.Linear:
    """A `nn.Linear` that the model's `_init_weights` initialises (normal(0, 0.02), or zeros when ``zero_init``)."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer._xmadapter_init = "zeros" if zero_init else "normal"
    return layer


def as_input_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s weights: a layer runs in the dtype it is given (bf16 after
    `model.to(torch.bfloat16)`), while the affinity maths around it stays float32."""
    weight = next(module.parameters(), None)
    return x if weight is None else x.to(weight.dtype)


@dataclass
class CacheState:
    """The frozen tensors a method reads (all owned by the model as buffers).

    Attributes:
        class_embeds (`torch.Tensor` of shape `(N, C)`): normalised class text embeddings `W`.
        cache_embeds (`torch.Tensor` of shape `(NK, C)`): the initial normalised cache embeddings `E` (Tip-Adapter's
            keys; XMAdapter's text keys are built from them). Possibly stored in half precision.
        cache_labels (`torch.LongTensor` of shape `(NK,)`): the class of each cache entry.
        logit_scale (`float` or 0-dim `torch.Tensor`): `s` (a tensor when read from the backbone, so that forward
            never synchronises with the device to read it).
        shots (`int`, *optional*): `K` when the cache holds K entries per class sorted by class (label ``i // K`` at
            position ``i``): class sums are then a reshape and a sum; `None` for any other layout (an index-add).
    """

    class_embeds: torch.Tensor
    cache_embeds: torch.Tensor
    cache_labels: torch.Tensor
    logit_scale: float | torch.Tensor
    shots: int | None = None

    @property
    def num_classes(self) -> int:
        return self.class_embeds.shape[0]


@dataclass
class MethodOutput(ModelOutput):
    """What a method returns: the fields of [`XMAdapterImageClassifierOutput`] but `loss` and `image_embeds`, under the
    same names, so that the model's output is ``XMAdapterImageClassifierOutput(loss=..., image_embeds=...,
    **method_output)``. Shapes: `(B, N)` for the logits, `(B,)` for `affinity_ratio` and `disagreement`."""

    logits: torch.Tensor | None = None
    zero_shot_logits: torch.Tensor | None = None
    cache_logits: torch.Tensor | None = None
    image_cache_logits: torch.Tensor | None = None
    text_cache_logits: torch.Tensor | None = None
    affinity_ratio: torch.Tensor | None = None
    disagreement: torch.Tensor | None = None
    gaussian_logits: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainingRecipe:
    """How a method trains, from its authors' code (docs/methods.md cites each source).

    `training.recipe_arguments` turns it into `TrainingArguments` (so every field can be overridden there) and
    `training.fit` trains with those arguments.

    Attributes:
        optimizer (`str`): `"adamw"` (decoupled weight decay), `"adam"` (weight decay added to the gradient, L2) or
            `"sgd"` (with `momentum`).
        learning_rate (`float`), weight_decay (`float`), eps (`float`), betas (`tuple[float, float]`): its settings.
        lr_scheduler_type (`str`): a transformers schedule name (`"cosine"`: per step, to zero).
        warmup_steps (`int`): linear warm-up steps.
        max_grad_norm (`float`): gradient clipping; 0 = none.
        epochs (`int`): passes over the few-shot set.
        batch_size (`int`): at most this many items per step ...
        min_steps_per_epoch (`int`): ... and at least this many steps per epoch (a few-shot set of 160 images at batch
            256 would take one step an epoch), see `training.steps_batch_size`.
        momentum (`float`): SGD's momentum.
        early_stopping_patience (`int`, *optional*): stop when validation accuracy has not improved for this many
            epochs (`training.ValidationEarlyStopping`); `None` = train every epoch.
        keep_best_epoch (`bool`): when a validation split is given (`fit`, `XMAdapterTrainer(validation=...)`), restore
            the epoch with the best validation accuracy, the starting weights included, so training never ends below
            its start on validation (the validation-only form of Tip-Adapter-F's keep-the-best-epoch, which its code
            does on test). Without a validation split the last epoch is kept.
        augment (`bool`): whether training draws augmented views of the few-shot images (`False`: the plain view).
        dataset_defaults (`bool`): whether the per-dataset epochs and learning rate of `data.defaults`
            (Tip-Adapter-F's) apply to this recipe when `fit` is given a `dataset_name`.
    """

    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    eps: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 0.0
    epochs: int = 20
    batch_size: int = 256
    min_steps_per_epoch: int = 8
    momentum: float = 0.9
    early_stopping_patience: int | None = None
    keep_best_epoch: bool = True
    augment: bool = True
    dataset_defaults: bool = False


@dataclass
class CacheTerm:
    """One cache of a [`SearchSpace`]: its query-key cosines, its weight in the fusion, and the sharpness it searches.

    Attributes:
        cosines (`torch.Tensor` of shape `(M, NK)`): float32 cosines of the validation queries with the cache keys.
        sharpness_field (`str`): the config field holding this cache's sharpness.
        weight (`torch.Tensor` of shape `(M, 1)` or `(1, 1)`, *optional*): its weight in the fused affinity
            (XMAdapter's ``gamma`` / ``1 - gamma``); `None` = 1.
    """

    cosines: torch.Tensor
    sharpness_field: str
    weight: torch.Tensor | None = None


@dataclass
class LogitTerm:
    """A term of a [`SearchSpace`] whose logits are computed once and whose weight alone is searched (no sharpness):
    it adds ``weight * logits`` (GDA's ``alpha (f W + b)``).

    Attributes:
        logits (`torch.Tensor` of shape `(M, N)`): float32 logits of the validation queries.
        weight_field (`str`): the config field holding its weight.
        paper_grid (`tuple[float, ...]`, *optional*): the weights its paper's code searches, increasing, already
            multiplied by ``s / 100`` for the backbone's logit scale ``s`` (the paper's were for OpenAI CLIP's 100);
            the search uses them instead of its automatic range when asked for the papers' grids. `None`: no such
            grid (the automatic range always).
        can_switch_off (`bool`, *optional*, defaults to `False`): the search also tries a weight of 0 (the term
            off), first, so that a tie keeps the term off: for a term added beside others that may not help.
        searched_first (`bool`, *optional*, defaults to `False`): the term's weight is searched before the caches,
            with the caches off, and the caches are then searched with the term at its chosen weight and a residual
            ratio of 0 tried first (a tie keeps the caches off): the search space then contains the term alone
            (XMAdapter's Gaussian term: GDA).
    """

    logits: torch.Tensor
    weight_field: str
    paper_grid: tuple[float, ...] | None = None
    can_switch_off: bool = False
    searched_first: bool = False


@dataclass
class SearchSpace:
    """What the validation search scores:
    ``logits = zero_shot + alpha * sum_t weight_t exp(-beta_t (1 - cos_t)) L + sum_g weight_g logits_g``.

    The search picks the first cache term's sharpness jointly with ``alpha`` (`residual_ratio_field`), then each other
    cache term's sharpness on its own 1-D grid (coordinate-wise), then each [`LogitTerm`]'s weight on its own 1-D grid,
    and writes the chosen values into those config fields. A space may have no cache term (GDA: one logit term).
    """

    zero_shot_logits: torch.Tensor
    cache_labels: torch.Tensor
    terms: list[CacheTerm]
    residual_ratio_field: str = "residual_ratio"
    shots: int | None = None
    logit_terms: list[LogitTerm] = dataclasses.field(default_factory=list)


class AdapterMethod(nn.Module):
    """Base class of a method: a small module mapping normalised image embeddings `(B, C)` to a [`MethodOutput`].

    Subclasses set the class attributes below, implement `forward(image_embeds, state, labels=None,
    cache_index=None)`, and override the hooks they need (see the module docstring).
    """

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    uses_cache: ClassVar[bool] = False
    config_fields: ClassVar[type | None] = None
    recipe: ClassVar[TrainingRecipe | None] = None
    cache_parameters: ClassVar[tuple[str, ...]] = ()
    #: the method's colour in every figure (a matplotlib colour); `None`: one chosen from its name
    colour: ClassVar[str | None] = None

    def __init__(self, config, embed_dim: int):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim

    # ------------------------------------------------------------------------------------------------- config
    @classmethod
    def validate_config(cls, config) -> None:
        """Checks between fields of ``config`` beyond each field's own validators (none by default)."""

    @classmethod
    def measures_disagreement(cls, config) -> bool:
        """Whether the method returns the cross-modal disagreement ``d`` under ``config`` (`False` by default)."""
        return False

    # ------------------------------------------------------------------------------------------------- cache
    def resize_cache(self, num_entries: int) -> None:
        """Makes every `cache_parameters` tensor ``num_entries`` rows long, keeping the rows it has (new rows: zero),
        its dtype and whether it trains."""
        for name in self.cache_parameters:
            old = getattr(self, name)
            if old.shape[0] == num_entries:
                continue
            new = old.new_zeros(num_entries, *old.shape[1:])  # (NK, ...) in the storage dtype (no float32 transient)
            keep = min(num_entries, old.shape[0])
            new[:keep] = old.detach()[:keep]
            setattr(self, name, nn.Parameter(new, requires_grad=old.requires_grad))
            retire_parameter(old, "a change of the cache (`build_cache`, `set_cache`, `add_classes`)")

    def init_from_cache(self, state: CacheState, start: int = 0) -> None:
        """Sets rows ``start:`` of every `cache_parameters` tensor from the cache embeddings (the initial keys)."""
        with torch.no_grad():
            for name in self.cache_parameters:
                getattr(self, name)[start:].copy_(state.cache_embeds[start:])  # casts in place

    def cast_cache(self, dtype: torch.dtype) -> None:
        """Stores the `cache_parameters` in ``dtype``: float32 ones train, half-precision ones are frozen storage."""
        for name in self.cache_parameters:
            old = getattr(self, name)
            if old.dtype != dtype:
                setattr(self, name, nn.Parameter(old.detach().to(dtype), requires_grad=dtype == torch.float32))
                retire_parameter(old, "`half_cache()` or `float_cache()`")

    def add_classes(self, state: CacheState, old_classes: int, old_entries: int) -> None:
        """The model gained classes ``old_classes..N-1`` and cache entries ``old_entries..NK-1`` (appended; ``state``
        is the grown cache): grows the `cache_parameters` keeping their old rows bit for bit and starts the new rows
        from the new entries' embeddings. Class-agnostic weights stay as they are."""
        self.resize_cache(state.cache_embeds.shape[0])
        self.to(state.class_embeds.device)
        self.init_from_cache(state, start=old_entries)

    def prepare_support(
        self, views: torch.Tensor, labels: torch.Tensor, num_classes: int, first_class: int = 0
    ) -> Any:
        """What the method keeps of support images, computed from the raw embeddings of every augmented view, before
        any state changes (so it may refuse support it cannot use with a `ValueError`); `apply_support` stores it.

        Args:
            views (`torch.Tensor` of shape `(V, M, C)`): raw (unnormalised) embeddings of V views of M images; V = 1
                (the images' embeddings themselves) where only embeddings were given.
            labels (`torch.LongTensor` of shape `(M,)`): each image's class, in ``[first_class, num_classes)``.
            num_classes (`int`): N, the model's classes once the support is added.
            first_class (`int`, *optional*, defaults to 0): 0 when the support is the whole cache (`set_cache`,
                `build_cache`, `fit`); the first new class when classes are added (`add_classes`).

        Returns:
            Anything `apply_support` takes; `None` (the default): the method keeps nothing.
        """
        return None

    def apply_support(self, prepared: Any) -> None:
        """Stores what `prepare_support` returned, once the model's cache has changed (after `add_classes` where
        classes were added). Nothing by default."""

    def reset_memo(self) -> None:
        """Forgets every tensor the method remembers ([`Memo`]): the next forward without autograd computes them."""
        for module in self.modules():
            if isinstance(module, Memo):
                module.reset()

    # ---------------------------------------------------------------------------------------------- training
    def parameter_groups(self, learning_rate: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups: every trainable parameter at ``learning_rate`` and ``weight_decay``."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": learning_rate, "weight_decay": weight_decay}] if params else []

    @classmethod
    def searches(cls) -> bool:
        """Whether the method says what a validation search tunes (it overrides `search_space`)."""
        return cls.search_space is not AdapterMethod.search_space

    def search_space(self, image_embeds: torch.Tensor, state: CacheState) -> SearchSpace | None:
        """What the validation search tunes on normalised validation embeddings `(M, C)`; `None`: nothing."""
        return None

    @classmethod
    def searched_fields(cls, config) -> tuple[str, ...]:
        """The config fields that the search space sets under ``config`` (its terms' fields), in the order the search
        chooses them; none by default."""
        return ()

    def logit_parts(self, output: MethodOutput) -> dict[str, torch.Tensor]:
        """What each named term adds to ``output.logits``: name -> `(B, N)` float32 (zero-shot CLIP by default). The
        terms sum to the logits, or a reader takes what remains as the adapter's own term."""
        return {"zero_shot": output.zero_shot_logits.float()}

    # ------------------------------------------------------------------------------------------------ export
    def export_constants(self, state: CacheState) -> dict[str, torch.Tensor]:
        """Inference-time tensors that an exported graph holds as constants rather than computing them at every call
        (called in eval mode without autograd); none by default."""
        return {}

    def export_forward(
        self, image_embeds: torch.Tensor, state: CacheState, constants: dict[str, torch.Tensor]
    ) -> MethodOutput:
        """The eval-mode forward that `torch.export` traces for ONNX: the outputs of `forward`, reading
        ``constants`` (from `export_constants`), with no Python loop whose count depends on the batch size (the
        exporter would fix the batch axis to the example's). By default `forward` itself."""
        return self(image_embeds, state)

    def forward(self, image_embeds, state: CacheState, labels=None, cache_index=None) -> MethodOutput:
        raise NotImplementedError
