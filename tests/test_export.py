"""ONNX export (issue 18): every method's head and whole model give PyTorch's outputs under onnxruntime on CPU, for
batch sizes 1 and 7; metadata and preprocessing settings travel with the files; bad requests are refused before
anything is written. Each method is exported once (both graphs) and every check reuses the files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import CLASS_NAMES

import xmadapter_hf
from xmadapter_hf import METHODS, XMAdapterForImageClassification
from xmadapter_hf import export as export_module
from xmadapter_hf.export import export_onnx
from xmadapter_hf.testing import tiny_clip

ROOT = Path(__file__).resolve().parents[1]
# What each method's graphs return (the fields its eval forward fills in).
EXPECTED_OUTPUTS = {
    "zero-shot": ["logits", "zero_shot_logits"],
    "clip-adapter": ["logits", "zero_shot_logits"],
    "multimodal-adapter": ["logits", "zero_shot_logits"],
    "meta-adapter": ["logits", "zero_shot_logits"],
    "gda": ["logits", "zero_shot_logits", "gaussian_logits"],
    "tip-adapter": ["logits", "zero_shot_logits", "cache_logits", "image_cache_logits"],
    "tip-adapter-f": ["logits", "zero_shot_logits", "cache_logits", "image_cache_logits"],
    "xmadapter": [
        "logits", "zero_shot_logits", "cache_logits", "image_cache_logits", "text_cache_logits", "affinity_ratio",
        "gaussian_logits",  # its Gaussian term (ours, use_gaussian_term, on by default)
    ],
}  # fmt: skip


def _model(clip_and_processor, cache_embeds, method: str, **overrides) -> XMAdapterForImageClassification:
    """A model whose every parameter was moved off its initialisation (zero-initialised layers included), so that
    each part of the graph changes the outputs, as after training."""
    clip, processor = clip_and_processor
    settings = dict(sharpness=5.0, residual_ratio=2.0, text_sharpness=4.0, dynamic_affinity_ratio=True)
    model = XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method=method, **{**settings, **overrides}
    )
    model.set_cache(*cache_embeds)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.method.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def exported(clip_and_processor, cache_embeds, tmp_path_factory):
    """``exported(method) -> (model, files)``: each method built and exported (head and whole model) once."""
    done = {}

    def get(method: str):
        if method not in done:
            model = _model(clip_and_processor, cache_embeds, method)
            done[method] = model, export_onnx(model, tmp_path_factory.mktemp(method))
        return done[method]

    return get


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("graph", ["head", "full"])
@pytest.mark.parametrize("method", METHODS)
def test_onnx_matches_pytorch(exported, test_pixels, method, graph):
    model, files = exported(method)
    session = _session(files[graph])
    input_name = "image_embeds" if graph == "head" else "pixel_values"
    assert [(i.name, i.shape[0]) for i in session.get_inputs()] == [(input_name, "batch")]
    names = [o.name for o in session.get_outputs()]
    assert names == EXPECTED_OUTPUTS[method]
    assert all(o.shape[0] == "batch" for o in session.get_outputs())
    pixels = test_pixels[0]
    for batch in (1, 7):
        inputs = pixels[:batch] if graph == "full" else model.embed_images(pixels[:batch])
        with torch.no_grad():
            expected = model(**{input_name: inputs})
        got = dict(zip(names, session.run(None, {input_name: inputs.numpy()})))
        for name in names:
            want = getattr(expected, name).numpy()
            assert got[name].shape == want.shape, (name, batch)
            error = np.abs(got[name] - want).max() / np.abs(want).max()
            assert error <= 1e-4, f"{method} {graph} {name} batch {batch}: relative error {error:.2e}"


def test_grown_adapter_exports(clip_and_processor, cache_embeds, test_pixels, tmp_path):
    """An adapter given two classes after training (`add_classes`, unequal K: the cache's general layout) exports:
    the head gives PyTorch's logits over all six classes and `id2label` names the new ones."""
    model = _model(clip_and_processor, cache_embeds, "xmadapter")
    raw, labels = cache_embeds
    model.add_classes(["purple grape", "white cloud"], embeds=raw[:3], labels=torch.tensor([0, 0, 1]))
    assert model.cache_state().shots is None
    files = export_onnx(model.eval(), tmp_path, what="head")
    session = _session(files["head"])
    names = [o.name for o in session.get_outputs()]
    for batch in (1, 7):
        embeds = model.embed_images(test_pixels[0][:batch])
        with torch.no_grad():
            want = model(image_embeds=embeds)
        got = dict(zip(names, session.run(None, {"image_embeds": embeds.numpy()})))
        for name in names:
            expected = getattr(want, name).numpy()
            assert got[name].shape == expected.shape == ((batch, 6) if name != "affinity_ratio" else (batch,))
            assert np.abs(got[name] - expected).max() / np.abs(expected).max() <= 1e-4, (name, batch)
    id2label = json.loads(session.get_modelmeta().custom_metadata_map["id2label"])
    assert id2label == {str(i): name for i, name in enumerate([*CLASS_NAMES, "purple grape", "white cloud"])}


def test_metadata_and_preprocessing_settings(exported, clip_and_processor):
    model, files = exported("xmadapter")
    assert set(files) == {"head", "full", "preprocessor_config"}
    for graph in ("head", "full"):
        meta = _session(files[graph]).get_modelmeta().custom_metadata_map
        assert json.loads(meta["id2label"]) == {str(i): name for i, name in enumerate(CLASS_NAMES)}
        assert meta["method"] == "xmadapter" and meta["graph"] == graph
        assert meta["xmadapter_version"] == xmadapter_hf.__version__
        assert meta["base_model_name_or_path"] == (model.config.base_model_name_or_path or "")
        assert json.loads(meta["preprocessor_config"]) == json.loads(files["preprocessor_config"].read_text())
    saved = json.loads(files["preprocessor_config"].read_text())
    settings = clip_and_processor[1].image_processor
    assert saved["crop_size"] == settings.crop_size and saved["image_mean"] == list(settings.image_mean)
    # the text keys, W and the cache are initializers of the graph, not inputs
    assert [i.name for i in onnx.load(str(files["head"]), load_external_data=False).graph.input] == ["image_embeds"]
    assert not model.training


def _listing(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("empty-cache", ValueError, "needs a cache: call `model.build_cache(dataset)` before exporting"),
        ("half-precision", TypeError, "ONNX export runs in float32, but the model holds torch.float16 tensors"),
        ("half-backbone", TypeError, "ONNX export runs in float32, but the model holds torch.bfloat16 tensors"),
        ("unknown-graph", ValueError, "`what` must name one or more of 'head', 'full'; got ('head', 'tail')"),
        ("empty-what", ValueError, "`what` must name one or more of 'head', 'full'; got ()"),
        ("onto-a-file", ValueError, "it exists and is not a directory"),
        ("not-a-model", TypeError, "`model` must be an XMAdapterForImageClassification; got CLIPModel"),
    ],
)
def test_refused_before_anything_is_written(clip_and_processor, cache_embeds, tmp_path, case, error, message):
    clip, processor = clip_and_processor
    target = tmp_path / "out"
    target.mkdir()
    (target / "head.onnx").write_bytes(b"the user's earlier export")
    model = _model(clip_and_processor, cache_embeds, "tip-adapter-f")
    kwargs = {}
    if case == "empty-cache":
        model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method="tip-adapter")
    elif case == "half-precision":
        model.half_cache()
    elif case == "half-backbone":  # a backbone of its own: the session's is shared
        model = XMAdapterForImageClassification.from_clip(
            tiny_clip()[0], CLASS_NAMES, processor=processor, method="clip-adapter"
        )
        model.clip.to(torch.bfloat16)
    elif case == "unknown-graph":
        kwargs["what"] = ("head", "tail")
    elif case == "empty-what":
        kwargs["what"] = ()
    elif case == "onto-a-file":
        target = target / "head.onnx"
    elif case == "not-a-model":
        model = clip
    before = _listing(tmp_path)
    with pytest.raises(error, match=re.escape(message)):
        export_onnx(model, target, **kwargs)
    assert _listing(tmp_path) == before
    assert sorted(os.listdir(tmp_path / "out")) == ["head.onnx"]  # no staging directory left behind


class _StubProgram:
    """Stands in for an `ONNXProgram` (the real export is tested above): writes a few bytes when saved."""

    def __init__(self):
        self.model = SimpleNamespace(metadata_props={})

    def save(self, path, external_data=None):
        Path(path).write_bytes(b"new graph")


def test_failed_export_leaves_saved_files(clip_and_processor, cache_embeds, tmp_path, monkeypatch):
    """The head exports, the whole model fails: nothing of the call reaches the directory, the old files stay."""
    (tmp_path / "head.onnx").write_bytes(b"old head")
    (tmp_path / "model.onnx").write_bytes(b"old model")

    def failing(module, graph, example, opset):
        if graph == "full":
            raise RuntimeError("exporter failed")
        return _StubProgram()

    monkeypatch.setattr(export_module, "_export_graph", failing)
    model = _model(clip_and_processor, cache_embeds, "zero-shot").train()
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model, tmp_path)
    assert _listing(tmp_path) == {"head.onnx": b"old head", "model.onnx": b"old model"}
    assert model.training and not model.clip.training  # the model's mode is restored, the backbone stays in eval
    monkeypatch.setattr(export_module, "_export_graph", lambda *args: _StubProgram())
    (tmp_path / "head.onnx.data").write_bytes(b"weights of an earlier export with external data")
    assert export_onnx(model, tmp_path, what="head")["head"].read_bytes() == b"new graph"
    assert sorted(os.listdir(tmp_path)) == ["head.onnx", "model.onnx", "preprocessor_config.json"]


def test_docs_example_runs(tmp_path, monkeypatch):
    """docs/export.md's python blocks run in order (export, preprocessing by hand, onnxruntime) and agree with the
    PyTorch model on the same image."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "export.md").read_text(), re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/export.md", "exec"), namespace)
    model, image = namespace["model"], namespace["image"]
    with torch.no_grad():
        expected = model(**model.processor(images=[image], return_tensors="pt")).logits.numpy()
    assert np.abs(namespace["logits"] - expected).max() <= 1e-4 * np.abs(expected).max()
    assert namespace["label"] == model.config.id2label[int(expected.argmax())]
