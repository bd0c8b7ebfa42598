"""The standard Hugging Face workflows, without workarounds (issue 12, "Done when" items 1-8), on tiny CLIPs.

Trainer evaluate/predict with the image-classification guide's `compute_metrics`; bf16 models; resuming and
`load_best_model_at_end` without missing-key warnings; `cls(config)` / `from_config`; `from_pretrained` keyword
arguments; a method registered from this file; in-place weight updates; `torch.compile`; untrusted config sizes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES
from datasets import ClassLabel
from safetensors.torch import load_file
from test_trainer import _args, _embedding_dataset
from transformers import AutoModelForImageClassification, CLIPModel, Trainer

import xmadapter_hf
from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification, register_method
from xmadapter_hf import functional as Fn
from xmadapter_hf.backbone import architecture_hash
from xmadapter_hf.methods import AdapterMethod, MethodOutput
from xmadapter_hf.methods.base import adapter_linear, as_input_of
from xmadapter_hf.testing import save_tiny_clip, tiny_image_dataset
from xmadapter_hf.training import build_optimizer

METHODS = list(xmadapter_hf.METHODS)  # the library's own methods (this file registers one more)
TRAINABLE = ["tip-adapter-f", "clip-adapter", "multimodal-adapter", "xmadapter"]
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ a method of our own
@register_method("test-residual-probe")
class ResidualProbe(AdapterMethod):
    """A linear residual on the image embedding, then zero-shot logits: defined here, no library file touched."""

    trainable = True

    def __init__(self, config, embed_dim: int):
        super().__init__(config, embed_dim)
        self.probe = adapter_linear(embed_dim, embed_dim)

    def forward(self, image_embeds, state, labels=None, cache_index=None) -> MethodOutput:
        zs = Fn.zero_shot_logits(image_embeds, state.class_embeds, state.logit_scale)
        adapted = Fn.l2_normalize(image_embeds + self.probe(as_input_of(self.probe, image_embeds)).float())
        return MethodOutput(Fn.zero_shot_logits(adapted, state.class_embeds, state.logit_scale), zs)


# ------------------------------------------------------------------------------------------------- helpers
def compute_metrics(eval_pred):
    """The image-classification guide's `compute_metrics`, unchanged but for numpy in place of `evaluate.load`."""
    predictions = np.argmax(eval_pred.predictions, axis=1)
    return {"accuracy": float((predictions == eval_pred.label_ids).mean())}


def _perturb(model, seed: int = 0, scale: float = 0.05) -> None:
    """Moves every adapter parameter, as training would (zero-initialised layers must not hide anything)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.method.named_parameters()):
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def _own_model(clip_and_processor, cache_embeds, method, **overrides):
    """A model with a backbone of its own (bf16 casts and Trainer's in-place casts must not reach the shared one)."""
    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(
        copy.deepcopy(clip), CLASS_NAMES, processor=processor, method=method, **overrides
    )
    model.set_cache(*cache_embeds)
    return model


@contextlib.contextmanager
def _transformers_log():
    """The records transformers logs (its loggers do not propagate to the root logger, so caplog misses them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@torch.no_grad()
def _logits(model, images, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits on the images' embeddings and on their pixels, both inputs given in ``dtype``."""
    pixels, embeds = images
    return model(image_embeds=embeds.to(dtype)).logits, model(pixel_values=pixels.to(dtype)).logits


#: Methods whose logits amplify the rounding of their inputs beyond the margin: GDA whitens the embeddings, and the
#: tiny random CLIP's classes lie a few bf16 steps apart (within-class spread about 0.01 per dimension), so a bf16
#: backbone's embeddings alone move GDA's logits by up to about 9 and change 6-7 of these 240 top-1s (on the demo
#: CLIP, a trained backbone, no clear item of its 400 test images at 1, 4 and 16 shots; docs/methods.md). For them
#: the references are the float32 model's logits on the embeddings the bf16 model sees: what the bf16 *adapter*
#: changes.
INPUT_SENSITIVE = {"gda"}


@torch.no_grad()
def _references(fp32_model, bf16_model, images) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 model's logits on the bf16 model's inputs: the embeddings rounded to bf16, and what the bf16
    backbone makes of the pixels."""
    pixels, embeds = images
    seen = bf16_model.embed_images(pixels.to(torch.bfloat16))
    return fp32_model(image_embeds=embeds.to(torch.bfloat16)).logits, fp32_model(image_embeds=seen).logits


def _assert_bf16_keeps_top1(model, images, references, margin: float = 1e-2) -> None:
    """On bf16 inputs the logits are float32, and every item whose fp32 top-2 margin exceeds ``margin`` keeps its
    fp32 top-1 (on embeddings and on pixels)."""
    for fp32, bf16 in zip(references, _logits(model, images, torch.bfloat16)):
        assert bf16.dtype == torch.float32
        top2 = fp32.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > margin
        changed = int((fp32.argmax(-1) != bf16.argmax(-1))[clear].sum())
        assert clear.sum() >= 200 and changed == 0, f"{changed} of {int(clear.sum())} clear items changed their top-1"


@pytest.fixture(scope="module")
def many_images(clip_and_processor):
    """240 test images: pixels (240, 3, 30, 30) and raw fp32 embeddings (240, 32)."""
    clip, processor = clip_and_processor
    data = tiny_image_dataset(num_classes=len(CLASS_NAMES), shots=60, noise=0.8, start_index=2000)
    pixels = processor.image_processor(images=list(data["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        embeds = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor).embed_images(pixels)
    return pixels, embeds.float()


@pytest.fixture(scope="module")
def saved_backbone(tmp_path_factory):
    """The tiny CLIP of the shared fixtures (seed 0), saved: the stand-in for a Hub checkpoint."""
    return save_tiny_clip(tmp_path_factory.mktemp("backbone") / "tiny-clip", seed=0)


# -------------------------------------------------------------------------------- 1. Trainer evaluate / predict
@pytest.mark.parametrize("method", METHODS)
def test_trainer_evaluate_and_predict_with_the_guides_compute_metrics(make_model, cache_embeds, tmp_path, method):
    model = make_model(method, sharpness=5.0)
    _perturb(model)
    data = _embedding_dataset(cache_embeds, repeats=1, with_cache_index=False)  # 16 items, eval batches of 5
    trainer = Trainer(
        model=model, args=_args(tmp_path, 8, per_device_eval_batch_size=5), compute_metrics=compute_metrics
    )
    metrics = trainer.evaluate(data)
    prediction = trainer.predict(data)
    assert isinstance(prediction.predictions, np.ndarray) and prediction.predictions.shape == (16, len(CLASS_NAMES))
    raw, labels = data[:]["image_embeds"], data[:]["labels"]
    with torch.no_grad():
        out = model(image_embeds=raw)
    np.testing.assert_allclose(prediction.predictions, out.logits.numpy(), atol=1e-5, rtol=1e-5)
    accuracy = float((out.logits.argmax(-1) == labels).float().mean())
    assert metrics["eval_accuracy"] == pytest.approx(accuracy) and prediction.metrics["test_accuracy"] == accuracy
    assert out.zero_shot_logits is not None and out.image_embeds is not None  # still reachable by calling the model
    if method == "xmadapter":
        assert out.text_cache_logits is not None and out.affinity_ratio is not None


def test_the_trainer_example_has_no_list_of_fields_to_drop():
    text = (ROOT / "examples" / "train_trainer.py").read_text()
    assert "trainer.predict(test_items)" in text and "ignore_keys" not in text and "_NOT_PREDICTIONS" not in text


# ------------------------------------------------------------------------------------------------------ 2. bf16
@pytest.mark.parametrize("method", METHODS)
def test_bf16_model_runs_on_bf16_inputs_and_keeps_top1(clip_and_processor, cache_embeds, many_images, method):
    model = _own_model(clip_and_processor, cache_embeds, method, sharpness=5.0)
    _perturb(model)
    references = _logits(model, many_images)
    fp32 = copy.deepcopy(model) if method in INPUT_SENSITIVE else None
    model.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    if fp32 is not None:
        references = _references(fp32, model, many_images)
    _assert_bf16_keeps_top1(model, many_images, references)


@pytest.mark.parametrize("method", METHODS)
def test_from_pretrained_in_bf16_with_loading_info(
    clip_and_processor, saved_backbone, cache_embeds, many_images, tmp_path, method
):
    model = _own_model(clip_and_processor, cache_embeds, method, sharpness=5.0, base_model_name_or_path=saved_backbone)
    _perturb(model)
    model.save_pretrained(tmp_path)
    references = _logits(model, many_images)
    config = XMAdapterConfig.from_pretrained(tmp_path)
    before = copy.deepcopy(config.__dict__)
    loaded, info = XMAdapterForImageClassification.from_pretrained(  # the backbone by name, in bf16
        tmp_path, config=config, processor=model.processor, dtype=torch.bfloat16, output_loading_info=True
    )
    assert config.__dict__ == before, "a config passed to from_pretrained is never changed"
    # sets of keys, as transformers 5 returns them (issue 23 item 10)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    assert loaded.clip.dtype == torch.bfloat16 and loaded.class_embeds.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in loaded.method.parameters())
    if method in INPUT_SENSITIVE:
        references = _references(model, loaded, many_images)
    _assert_bf16_keeps_top1(loaded, many_images, references)


@pytest.mark.parametrize("method", METHODS)
def test_after_bf16_full_eval_the_model_trains_and_saves_float32(clip_and_processor, cache_embeds, tmp_path, method):
    model = _own_model(clip_and_processor, cache_embeds, method, sharpness=5.0)
    data = _embedding_dataset(cache_embeds, repeats=1)
    trainable = method in TRAINABLE
    trainer = Trainer(
        model=model, args=_args(tmp_path, 8, steps=2, bf16_full_eval=True), train_dataset=data,
        compute_metrics=compute_metrics,
        optimizers=build_optimizer(model, num_training_steps=2, learning_rate=0.01) if trainable else (None, None),
    )  # fmt: skip
    assert "eval_accuracy" in trainer.evaluate(data)
    assert model.class_embeds.dtype == torch.bfloat16, "bf16_full_eval casts the model in place"
    if trainable:
        before = {k: v.clone() for k, v in model.method.state_dict().items()}
        trainer.train()
        assert any(not torch.equal(v, before[k]) for k, v in model.method.state_dict().items()), "it still trains"
    model.save_pretrained(tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert {str(v.dtype) for k, v in saved.items() if v.is_floating_point()} == {"torch.float32"}
    clip, processor = clip_and_processor
    loaded = XMAdapterForImageClassification.from_pretrained(tmp_path / "saved", clip_model=clip, processor=processor)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in loaded.method.parameters())


# ---------------------------------------------------------------------------- 3. resume, load_best_model_at_end
def test_resume_logs_no_missing_backbone_key(make_model, cache_embeds, tmp_path):
    dataset = _embedding_dataset(cache_embeds)

    def run(output, resume=None):
        model = make_model("xmadapter", hard_sample_strength=1.0, sharpness=5.0)
        args = _args(output, 8, steps=4, save_strategy="steps", save_steps=2, learning_rate=0.01)
        optimizers = build_optimizer(model, num_training_steps=4, learning_rate=0.01)
        Trainer(model=model, args=args, train_dataset=dataset, optimizers=optimizers).train(
            resume_from_checkpoint=resume
        )
        return model

    full = run(tmp_path / "full")
    with _transformers_log() as records:
        resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    messages = [record.getMessage() for record in records]
    assert not [m for m in messages if "missing keys" in m or "clip." in m], messages
    for key, value in full.method.state_dict().items():
        torch.testing.assert_close(value, resumed.method.state_dict()[key], atol=1e-6, rtol=1e-6, msg=key)


def test_load_best_model_at_end(make_model, cache_embeds, tmp_path):
    model = make_model("tip-adapter-f", sharpness=5.0)
    dataset = _embedding_dataset(cache_embeds, repeats=1)
    args = _args(
        tmp_path, 8, steps=6, save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
        load_best_model_at_end=True, metric_for_best_model="accuracy", learning_rate=0.05,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=dataset, compute_metrics=compute_metrics,
        optimizers=build_optimizer(model, num_training_steps=6, learning_rate=0.05),
    )  # fmt: skip
    with _transformers_log() as records:
        trainer.train()
    assert not [r.getMessage() for r in records if "missing keys" in r.getMessage()]
    best = load_file(Path(trainer.state.best_model_checkpoint) / "model.safetensors")
    assert torch.equal(model.method.cache_keys.detach(), best["method.cache_keys"])


# ------------------------------------------------------------------------- 4. cls(config), from_config, loading
def test_from_config_builds_a_model_whose_forward_runs(make_model, cache_embeds, test_pixels, tmp_path):
    source = make_model("xmadapter", sharpness=5.0)
    source.save_pretrained(tmp_path)
    config = XMAdapterConfig.from_pretrained(tmp_path)  # the recorded architecture survives JSON
    assert config.backbone_config["model_type"] == "clip"
    pixels, _ = test_pixels
    for model in (XMAdapterForImageClassification(config), AutoModelForImageClassification.from_config(config)):
        assert isinstance(model, XMAdapterForImageClassification) and isinstance(model.clip, CLIPModel)
        assert architecture_hash(model.clip) == architecture_hash(source.clip)
        assert not any(p.requires_grad for p in model.clip.parameters())
        with torch.no_grad():
            assert model(image_embeds=cache_embeds[0]).logits.shape == (16, len(CLASS_NAMES))
            assert torch.isfinite(model(pixel_values=pixels).logits).all()


def test_from_pretrained_backbone_equals_clip_from_pretrained_bitwise(saved_backbone, cache_embeds, tmp_path):
    model = XMAdapterForImageClassification.from_clip(saved_backbone, CLASS_NAMES, method="xmadapter")
    model.set_cache(*cache_embeds)
    model.save_pretrained(tmp_path)
    loaded = XMAdapterForImageClassification.from_pretrained(tmp_path)
    reference = CLIPModel.from_pretrained(saved_backbone, revision=None)
    expected, got = reference.state_dict(), loaded.clip.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_failed_constructor_changes_nothing(clip_and_processor, monkeypatch):
    clip, _ = clip_and_processor
    cases = [
        (XMAdapterConfig(class_names=CLASS_NAMES, projection_dim=16), clip, ValueError, "projection dim 16"),
        (XMAdapterConfig(class_names=CLASS_NAMES), None, ValueError, "from_pretrained"),  # nothing to build from
        (XMAdapterConfig(class_names=CLASS_NAMES), clip, RuntimeError, "cannot be built"),  # see below
    ]

    def broken_method(name):
        """A method whose constructor fails once the model's own constructor (and the parent's) has started."""

        def build(config, embed_dim):
            raise RuntimeError("this method cannot be built")

        return build

    for config, clip_model, error, match in cases:
        if error is RuntimeError:
            monkeypatch.setattr("xmadapter_hf.modeling_xmadapter.method_class", broken_method)
        before = copy.deepcopy(config.__dict__)
        with pytest.raises(error, match=match):
            XMAdapterForImageClassification(config, clip_model=clip_model)
        assert config.__dict__ == before
    assert config.projection_dim is None and config.backbone_config is None  # set only by a constructor that succeeds


# ------------------------------------------------------------------------------------------- 5. register_method
def test_a_registered_method_builds_trains_saves_reloads_and_predicts(make_model, cache_embeds, tmp_path):
    model = make_model("test-residual-probe")
    assert model.config.hard_sample_strength == 0.0
    data = _embedding_dataset(cache_embeds)
    trainer = Trainer(
        model=model, args=_args(tmp_path, 8, steps=4), train_dataset=data, compute_metrics=compute_metrics,
        optimizers=build_optimizer(model, num_training_steps=4, learning_rate=0.05),
    )  # fmt: skip
    before = model.method.probe.weight.detach().clone()
    trainer.train()
    assert not torch.equal(model.method.probe.weight, before)
    predicted = trainer.predict(data).predictions
    model.save_pretrained(tmp_path / "adapter")
    loaded = XMAdapterForImageClassification.from_pretrained(
        tmp_path / "adapter", clip_model=model.clip, processor=model.processor
    )
    assert loaded.config.method == "test-residual-probe" and isinstance(loaded.method, ResidualProbe)
    raw = data[:]["image_embeds"]
    with torch.no_grad():
        assert torch.equal(loaded(image_embeds=raw).logits, model(image_embeds=raw).logits)
    np.testing.assert_allclose(predicted, loaded(image_embeds=raw).logits.detach().numpy(), atol=1e-6)


# ---------------------------------------------------------------------------------------- 6. in-place updates
#: The buffers that the forward of a method without parameters reads besides ``W`` (GDA's precision serves
#: `add_classes` only; its forward does not read the cache keys).
READ_BUFFERS = {"gda": ["method.gaussian_weight", "method.gaussian_bias"]}


def _updates(model):
    """(name, how) pairs: every adapter parameter by each route; buffers for the methods without parameters."""
    names = [f"method.{n}" for n, _ in model.method.named_parameters()]
    if not names:  # zero-shot and Tip-Adapter: their only weights are the class text embeddings and the cache
        names = READ_BUFFERS.get(model.config.method, ["cache_embeds"] if model.method.uses_cache else [])
    names.append("class_embeds")  # W also feeds XMAdapter's memoised text keys
    return [(n, how) for n in names for how in (".data", "no_grad", "load_state_dict")]


def _update(model, name: str, how: str, seed: int) -> None:
    parameters = dict(model.named_parameters())
    tensor = parameters[name] if name in parameters else model.get_buffer(name)
    delta = 0.05 * torch.randn(tensor.shape, generator=torch.Generator().manual_seed(seed))
    if how == ".data":
        tensor.data.copy_(tensor.data + delta)  # an EMA-style update: no version bump
    elif how == "no_grad":
        with torch.no_grad():
            tensor.copy_(tensor + delta)
    else:
        state = model.state_dict()
        state[name] = state[name] + delta
        model.load_state_dict(state)


@pytest.mark.parametrize("method", METHODS)
def test_in_place_updates_reach_the_next_eval_forward(make_model, cache_embeds, method):
    model = make_model(method, sharpness=5.0).eval()
    _perturb(model, scale=0.2)
    queries = cache_embeds[0][:6] + 0.1
    for seed, (name, how) in enumerate(_updates(model)):
        with torch.no_grad():
            before = model(image_embeds=queries).logits  # builds XMAdapter's memo
            _update(model, name, how, seed)
            after = model(image_embeds=queries).logits
        with torch.enable_grad():
            fresh = model(image_embeds=queries).logits.detach()  # under autograd nothing is memoised
        torch.testing.assert_close(after, fresh, atol=1e-6, rtol=1e-6, msg=f"{name} via {how}")
        assert not torch.equal(before, after), f"{name} via {how}: the update must change the logits"


def test_text_key_memo_under_inference_mode(make_model, cache_embeds):
    """Tensors made under `torch.inference_mode` have no version counter: the memo still works with them."""
    model = make_model("xmadapter").eval()
    with torch.inference_mode():
        model.set_cache(*cache_embeds)  # inference-mode buffers and parameters
        first = model(image_embeds=cache_embeds[0][:3]).logits
        count = model.method.text_key_computations
        assert torch.equal(model(image_embeds=cache_embeds[0][:3]).logits, first)
    assert model.method.text_key_computations == count


# --------------------------------------------------------------------------------------------- 8. torch.compile
@pytest.mark.parametrize("method", METHODS)
def test_compiled_forward_equals_eager_call_after_call_and_after_an_update(make_model, cache_embeds, method):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = make_model(method, sharpness=5.0).eval()
    _perturb(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    queries = cache_embeds[0][:5] + 0.05
    eager = None
    with torch.no_grad():
        for step in range(4):
            if step == 3:  # in-place updates between calls, as an EMA or a weight edit does
                before = eager
                for tensor in [*model.method.parameters(), model.class_embeds]:
                    tensor.data.copy_(tensor.data * 1.1 + 0.01)
            eager = model(image_embeds=queries).logits
            torch.testing.assert_close(compiled(image_embeds=queries).logits, eager, atol=1e-5, rtol=1e-5)
    assert not torch.equal(before, eager), "the update must change the logits for the last comparison to matter"
    assert counter.frame_count == 1, "one graph, never recompiled"
    ops = {str(node.target) for graph in counter.graphs for node in graph.graph.nodes}
    synchronising = [op for op in ops if op in ("item", "tolist") or "local_scalar" in op]
    assert not synchronising, f"no host synchronisation in forward: {synchronising}"


# ------------------------------------------------------------------------------------ 7. untrusted config sizes
def _peak_rss_growth(call) -> int:
    """Bytes by which the peak resident memory grows during ``call`` (Linux: resets the peak first)."""

    def status(key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = status("VmRSS")
    call()
    return status("VmHWM") - start


@pytest.mark.parametrize("field,value", [("cache_size", 10**10), ("cache_size", 10**7), ("text_dim", 10**9)])
def test_config_sizes_are_checked_against_the_header_before_allocating(
    make_model, clip_and_processor, tmp_path, field, value
):
    make_model("xmadapter").save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(re.sub(rf'"{field}": (\d+|null)', f'"{field}": {value}', config))
    clip, processor = clip_and_processor
    raised = {}

    def load():
        with pytest.raises(ValueError, match="does not match model.safetensors") as info:
            XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=clip, processor=processor)
        raised["message"] = str(info.value)

    assert _peak_rss_growth(load) < 100 * 2**20
    assert f"{field}={value}" in raised["message"]


# ------------------------------------------------------------------------------- 7. bad datasets, no backbone work
def test_dataset_errors_come_before_any_backbone_work(make_model, monkeypatch, tmp_path):
    model = make_model("tip-adapter")
    calls = []
    original = model.clip.get_image_features
    monkeypatch.setattr(model.clip, "get_image_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    renamed = tiny_image_dataset(num_classes=4, shots=1)
    renamed = renamed.cast_column("label", ClassLabel(names=["red apple", "blue sky", "green leaf", "yellow sun"]))
    bad = [
        (TypeError, "imagefolder", str(tmp_path)),
        (ValueError, "ClassLabel names differ", renamed),
        (ValueError, r"must lie in \[0, 3\]", tiny_image_dataset(num_classes=5, shots=1)),
        (ValueError, "at least one cache image", tiny_image_dataset(num_classes=3, shots=1)),
    ]
    for error, match, dataset in bad:
        with pytest.raises(error, match=match) as info:
            model.build_cache(dataset, augment_views=1, show_progress=False)
        if match == "ClassLabel names differ":  # both lists are shown
            assert "'blue sky', 'green leaf'" in str(info.value) and "'green leaf', 'blue sky'" in str(info.value)
    assert not calls and model.config.cache_size == 16
