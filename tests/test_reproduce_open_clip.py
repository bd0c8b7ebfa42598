"""The optional open_clip backend, run against a stand-in `open_clip` module.

open_clip needs torchvision, which does not import beside the CPU torch wheel here, and its weights cannot be
downloaded: the stand-in implements exactly the open_clip calls the backend uses (`create_model_and_transforms`,
`get_tokenizer`, a model's `encode_image`, `encode_text`, `logit_scale`, `visual.image_size`) over a tiny random
network. The real RN50 has not been run here.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from xmadapter_hf import XMAdapterForImageClassification, fit
from xmadapter_hf.reproduce import run_protocol
from xmadapter_hf.reproduce.open_clip_backend import OpenCLIPUnavailableError, load_open_clip
from xmadapter_hf.testing import tiny_image_dataset

DIM, SIZE, CONTEXT = 24, 16, 12


class _Visual(torch.nn.Module):
    image_size = SIZE

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.proj = torch.nn.Linear(8 * (SIZE // 4) ** 2, DIM)

    def forward(self, pixels):
        return self.proj(torch.relu(self.conv(pixels)).flatten(1))


class _StandInCLIP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = _Visual()
        self.token_embedding = torch.nn.Embedding(256, DIM)
        self.text_projection = torch.nn.Linear(DIM, DIM)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))

    def encode_image(self, pixels):
        return self.visual(pixels)

    def encode_text(self, ids):
        mask = (ids != 0).float()[..., None]
        pooled = (self.token_embedding(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.text_projection(pooled)


def _tokenize(texts):
    rows = [[1 + (ord(c) % 255) for c in text[:CONTEXT]] for text in texts]
    return torch.tensor([row + [0] * (CONTEXT - len(row)) for row in rows])


def _stand_in_module():
    module = types.ModuleType("open_clip")
    module.calls = []

    def create_model_and_transforms(arch, pretrained=None):
        module.calls.append((arch, pretrained))
        return _StandInCLIP(), None, None

    module.create_model_and_transforms = create_model_and_transforms
    module.get_tokenizer = lambda arch: _tokenize
    return module


@pytest.fixture
def open_clip(monkeypatch):
    module = _stand_in_module()
    monkeypatch.setitem(sys.modules, "open_clip", module)
    return module


def test_fit_save_reload(open_clip, tmp_path):
    backbone, processor = load_open_clip("RN50/openai")
    assert open_clip.calls == [("RN50", "openai")] and backbone.config.projection_dim == DIM
    names = [f"class {i}" for i in range(4)]
    model = XMAdapterForImageClassification.from_clip(
        backbone, names, processor=processor, method="tip-adapter-f", base_model_name_or_path="open_clip:RN50/openai"
    )
    train = tiny_image_dataset(4, shots=4, noise=0.8)
    validation = tiny_image_dataset(4, shots=2, noise=0.8, start_index=1000)
    model, report = fit(model, train, validation, epochs=2, augment_views=2, search_scale=(50, 50),
                        search_step=(10, 5), show_progress=False)  # fmt: skip
    assert report.steps > 0
    model.save_pretrained(tmp_path / "adapter")
    reloaded = XMAdapterForImageClassification.from_pretrained(
        tmp_path / "adapter", clip_model=backbone, processor=processor
    )
    assert reloaded.config.base_model_name_or_path == "open_clip:RN50/openai"
    assert reloaded.config.backbone_config["model_type"] == "open_clip"
    pixels = processor.image_processor(images=list(validation["image"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=pixels).logits, reloaded(pixel_values=pixels).logits, atol=1e-5)


def test_reproduce_with_open_clip(open_clip, tmp_path):
    import numpy as np
    from test_reproduce_harness import EUROSAT, _coop

    root = tmp_path / "data"
    _coop(root, "eurosat", EUROSAT, np.random.default_rng(1))
    result = run_protocol(root, ["eurosat"], ["tip-adapter"], output_dir=tmp_path / "out",
                          model="open_clip:RN50/openai", shots=[1], seeds=[1], augment_views=2,
                          search_scale=(50, 50), search_step=(10, 5))  # fmt: skip
    assert result.cells_run == 1 and result.rows[0]["backbone"] == "RN50"
    # same backbone and protocol as Tip-Adapter's table: a difference column appears
    published = result.summary[0]["published"]
    assert published[0]["comparable"] and published[0]["difference"] == pytest.approx(
        result.summary[0]["mean"] - published[0]["accuracy"], abs=1e-3
    )
    # and under Meta-Adapter's own protocol, its README's RN50 zero-shot number
    meta = run_protocol(root, ["eurosat"], ["zero-shot"], output_dir=tmp_path / "meta", model="open_clip:RN50/openai",
                        protocol="meta-adapter", shots=[1], seeds=[1], augment_views=2,
                        meta_adapter_require_all_classes=False)  # fmt: skip
    (published,) = meta.summary[0]["published"]
    assert (published["paper"], published["accuracy"], published["comparable"]) == ("meta-adapter", 4.2, True)
    assert published["difference"] == pytest.approx(meta.summary[0]["mean"] - 4.2, abs=1e-3)


def test_open_clip_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip raises ImportError
    with pytest.raises(OpenCLIPUnavailableError, match=r"open_clip extra \(pip install 'xmadapter-hf\[open_clip\]'\)"):
        load_open_clip("RN50/openai")
