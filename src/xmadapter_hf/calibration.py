"""Scores that mean something: classes ranked by their logits, and a temperature fitted on the validation split.

An adapter's logits rank its classes, but their softmax is no probability: a searched residual ratio can reach the
hundreds, so the raw softmax gives the first class 100 % and every other class exactly 0 (float underflow), and a
ranking by those scores orders the zeros arbitrarily. Here, and everywhere the library ranks classes (`xmadapter
predict`, [`~xmadapter_hf.pipeline.XMAdapterImageClassificationPipeline`]):

- classes are **ranked by their logits** (a stable sort: equal logits keep the lower class index first);
- the **scores** are ``softmax(logits / T)`` with one positive scalar ``T``, `config.temperature`, fitted by
  [`~xmadapter_hf.fit`] on the validation split after its final search ([`calibrate`]); `None` (not fitted) means
  ``T = 1``, the raw softmax. ``T`` changes no logit, no argmax and nothing the Trainer sees.

The fit minimises the validation negative log-likelihood (NLL) in ``beta = 1 / T``, where it is convex (its
derivative, the mean of ``E_p[z] - z_y``, is monotone), by bisection on the sign of that derivative over a bounded
log-range: deterministic, no optimiser state, no learning rate. Two safeguards, for any backbone and split size:

- *the range*: ``T`` lies between ``1/1000`` and ``1000`` times the RMS spread of the validation logits (their root
  mean square about each row's mean), so the search is invariant to the logits' scale (logits times ``c`` give
  ``T`` times ``c``) and never runs away;
- *a tiny validation split* (e.g. 16 images at 1 shot): NLL alone sends ``T`` to its lower bound as soon as every
  validation image is classified correctly (100 % scores again). The fit therefore adds one uninformative
  pseudo-observation (``prior_strength = 1``): each image's target keeps ``1 - eps`` on its class and spreads
  ``eps = 1 / (n + 1)`` over all classes, Laplace's rule of succession for ``n`` validation images. A perfectly
  separated split then gives a top-1 score of ``1 - eps (1 - 1/N)`` (94.5 % for 16 images of 16 classes), not
  100 %; at the demo's 256 validation images ``eps`` is 0.4 % and the fit is the plain NLL fit to within it.

Metrics: [`expected_calibration_error`] (15 equal-width bins of the top-1 confidence, the usual definition) and
[`negative_log_likelihood`]; docs/accuracy.md reports both, before and after the temperature, on the demo task.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .validation import check_labels, check_number, check_tensor

__all__ = [
    "ECE_BINS",
    "TEMPERATURE_RANGE",
    "TemperatureFit",
    "calibrate",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "probabilities",
    "rank_by_logits",
    "temperature_of",
]

#: Equal-width bins of the top-1 confidence in the expected calibration error (the usual 15).
ECE_BINS = 15
#: ``T`` is searched within [spread / TEMPERATURE_RANGE, spread * TEMPERATURE_RANGE], spread = the RMS of the
#: row-centred validation logits: ``z / T`` then spans RMS 1000 (every score 0 or 1) to 1/1000 (uniform scores).
TEMPERATURE_RANGE = 1e3
# Bisection steps on log(beta) over a range of ln(1e6) = 13.8: 60 halvings leave 1e-17 (float64's resolution).
_BISECTION_STEPS = 60


def temperature_of(config) -> float:
    """The temperature a config's scores use: `config.temperature`, or 1 when it is `None` (not fitted) or absent."""
    temperature = getattr(config, "temperature", None)
    return 1.0 if temperature is None else float(temperature)


def rank_by_logits(logits: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Class indices ordered by decreasing logit `(..., k)`; equal logits keep the lower class index first.

    A stable sort of the logits themselves, not of softmax scores (which tie at 0 or 1 when the logits are far apart).

    Example:

    ```python
    >>> import torch
    >>> from xmadapter_hf.calibration import rank_by_logits
    >>> rank_by_logits(torch.tensor([[0.0, 900.0, 5.0, 5.0]])).tolist()
    [[1, 2, 3, 0]]
    ```
    """
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    return order if k is None else order[..., :k]


def probabilities(logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    """``softmax(logits / T)`` in float32 (``T = 1`` when ``temperature`` is `None`), the scores the library shows."""
    temperature = 1.0 if temperature is None else check_number("temperature", temperature, 0.0, low_open=True)
    return torch.softmax(logits.float() / temperature, dim=-1)


def _checked(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits = check_tensor("logits", logits, 2)
    labels = check_labels("labels", torch.as_tensor(labels).to(logits.device), logits.shape[0], logits.shape[1])
    if logits.shape[0] == 0:
        raise ValueError("`logits` has no rows: calibration needs at least one labelled image.")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("`logits` contains NaN or Inf: check the model's weights and the images.")
    return logits, labels


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None) -> float:
    """Mean ``-log softmax(logits / T)[label]`` over the rows (float64; finite for finite logits)."""
    logits, labels = _checked(logits, labels)
    temperature = 1.0 if temperature is None else check_number("temperature", temperature, 0.0, low_open=True)
    log_p = torch.log_softmax(logits.double() / temperature, dim=-1)  # (M, N)
    return float(-log_p.gather(1, labels[:, None]).mean()) + 0.0  # + 0.0: no -0.0


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float | None = None, bins: int = ECE_BINS
) -> float:
    """The expected calibration error of the top-1 prediction, in [0, 1].

    ``ECE = sum_b |B_b| / M * |accuracy(B_b) - confidence(B_b)|`` over ``bins`` equal-width bins ``(b-1)/bins <
    c <= b/bins`` of the top-1 confidence ``c = max softmax(logits / T)``; the prediction is the first largest logit.
    """
    logits, labels = _checked(logits, labels)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"`bins` must be a positive int, got {bins!r}.")
    temperature = 1.0 if temperature is None else check_number("temperature", temperature, 0.0, low_open=True)
    confidence = torch.softmax(logits.double() / temperature, dim=-1).amax(-1)  # (M,), float64 as the NLL
    correct = (logits.argmax(-1) == labels).double()
    inner = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64, device=logits.device)[1:-1]
    which = torch.bucketize(confidence, inner)  # bin b holds (b/bins, (b+1)/bins]
    gap = torch.zeros(bins, dtype=torch.float64, device=logits.device)
    gap.index_add_(0, which, correct - confidence)  # per bin: sum of (accuracy - confidence)
    return float(gap.abs().sum() / logits.shape[0])


@dataclass
class TemperatureFit:
    """What [`fit_temperature`] chose and measured on the split it was fitted on.

    Attributes:
        temperature (`float` or `None`): the fitted ``T``; `None` when the logits are the same for every class (any
            ``T`` gives the same scores).
        num_images (`int`): the rows it was fitted on.
        prior_strength (`float`): the uninformative pseudo-observations added (``eps = prior_strength / (n +
            prior_strength)``).
        at_bound (`str` or `None`): `"lower"` or `"upper"` when ``T`` stopped at an end of its range, else `None`.
        nll_before (`float`), nll_after (`float`): mean NLL at ``T = 1`` and at the fitted ``T``.
        ece_before (`float`), ece_after (`float`): expected calibration error at ``T = 1`` and at the fitted ``T``.
    """

    temperature: float | None
    num_images: int
    prior_strength: float
    at_bound: str | None
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def _slope(centred: torch.Tensor, target: torch.Tensor, beta: float, rows: int = 4096) -> float:
    """d/dbeta of the mean smoothed cross-entropy at ``beta``: mean over rows of ``E_softmax(beta z)[z] - target``."""
    total = 0.0
    for start in range(0, centred.shape[0], rows):
        z = centred[start : start + rows]  # (R, N)
        total += float((torch.softmax(beta * z, dim=-1) * z).sum(-1).sum())
    return (total - float(target.sum())) / centred.shape[0]


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, prior_strength: float = 1.0) -> TemperatureFit:
    """Fits ``T`` of ``softmax(logits / T)`` on labelled logits (the validation split's), as the module docstring says.

    Minimises the mean cross-entropy against targets smoothed with ``eps = prior_strength / (M + prior_strength)``
    (``prior_strength = 0``: the plain NLL) over ``beta = 1 / T`` in the bounded range, by bisection on its
    derivative's sign (convex in ``beta``: the result is the range's minimum, deterministic).

    Args:
        logits (`torch.Tensor` of shape `(M, N)`): finite logits of ``M`` labelled images.
        labels (`torch.Tensor` of shape `(M,)`): their classes.
        prior_strength (`float`, *optional*, defaults to 1.0): uninformative pseudo-observations (see above).

    Returns:
        [`TemperatureFit`].

    Example:

    ```python
    >>> import torch
    >>> from xmadapter_hf.calibration import fit_temperature
    >>> logits = torch.tensor([[400.0, 0.0], [300.0, 0.0], [0.0, 200.0], [100.0, 0.0]])
    >>> fitted = fit_temperature(logits, torch.tensor([0, 0, 1, 1]))
    >>> round(fitted.temperature, 1), fitted.nll_after < fitted.nll_before
    (186.6, True)
    ```
    """
    logits, labels = _checked(logits, labels)
    prior_strength = check_number("prior_strength", prior_strength, 0.0)
    count, classes = logits.shape
    centred = logits.double() - logits.double().mean(-1, keepdim=True)  # softmax is unchanged by a per-row shift
    spread = float(centred.square().mean().sqrt())
    before = dict(
        nll_before=negative_log_likelihood(logits, labels), ece_before=expected_calibration_error(logits, labels)
    )
    if spread == 0.0:  # every class has the same logit in every row: no temperature changes a score
        return TemperatureFit(None, count, prior_strength, None, **before, nll_after=before["nll_before"],
                              ece_after=before["ece_before"])  # fmt: skip
    eps = prior_strength / (count + prior_strength)
    target = (1.0 - eps) * centred.gather(1, labels[:, None]).squeeze(1)  # + eps * mean_j z_j, which is 0 here
    low, high = -math.log(TEMPERATURE_RANGE), math.log(TEMPERATURE_RANGE)  # u = log(beta * spread)
    at_bound = None
    if _slope(centred, target, math.exp(high) / spread) <= 0.0:  # still falling at the sharpest end
        u, at_bound = high, "lower"
    elif _slope(centred, target, math.exp(low) / spread) >= 0.0:  # already rising at the flattest end
        u, at_bound = low, "upper"
    else:
        for _ in range(_BISECTION_STEPS):
            middle = 0.5 * (low + high)
            if _slope(centred, target, math.exp(middle) / spread) < 0.0:
                low = middle
            else:
                high = middle
        u = 0.5 * (low + high)
    temperature = spread / math.exp(u)
    return TemperatureFit(
        temperature, count, prior_strength, at_bound, **before,
        nll_after=negative_log_likelihood(logits, labels, temperature),
        ece_after=expected_calibration_error(logits, labels, temperature),
    )  # fmt: skip


@torch.no_grad()
def calibrate(model, embeds: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1024) -> TemperatureFit:
    """Fits `model.config.temperature` on validation images given as raw embeddings `(M, C)` and their labels.

    The model's logits are computed once (in eval mode, ``batch_size`` rows at a time) and [`fit_temperature`]
    chooses ``T``; `config.temperature` is then set to it (`None` when the logits do not depend on the class). Logits,
    their argmax and training are unchanged. [`~xmadapter_hf.fit`] calls this after its final search; call it after
    a search or training of your own (docs/training.md), on the validation split, never on test.

    Returns:
        [`TemperatureFit`].
    """
    from .modeling_xmadapter import XMAdapterForImageClassification

    if not isinstance(model, XMAdapterForImageClassification):
        raise TypeError(f"`model` must be an XMAdapterForImageClassification, got {type(model).__name__}.")
    check_tensor("embeds", embeds, 2, cols=model.embed_dim)
    labels = check_labels("labels", torch.as_tensor(labels), embeds.shape[0], model.config.num_classes)
    logits = eval_logits(model, embeds, batch_size)
    return set_temperature(model, logits, labels.to(logits.device))


def eval_logits(model, embeds: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The model's float32 logits `(M, N)` on raw embeddings `(M, C)`, in eval mode and without autograd,
    ``batch_size`` rows at a time (the model's train/eval mode is restored)."""
    device, training = model.class_embeds.device, model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(image_embeds=part.to(device)).logits.float() for part in embeds.split(batch_size)])
    finally:
        model.train(training)


def set_temperature(model, logits: torch.Tensor, labels: torch.Tensor) -> TemperatureFit:
    """[`fit_temperature`] on the model's validation ``logits`` `(M, N)`, recorded in `model.config.temperature`."""
    fitted = fit_temperature(logits, labels)
    model.config.temperature = fitted.temperature
    return fitted
