"""Adapters saved by versions 0.1.0 and 0.2.0 keep loading with the same logits (issue 12, "Done when" 4 and 9), with
a warning that their weights record no digest of their tensors (issue 23, item 3: the digest came with 0.3.0).

"The same" is to float rounding, 1e-5 of the largest logit: CPU kernels round differently with another thread count
or instruction set (with torch's 2 threads on the machine that wrote the fixtures they are bit-identical), while a
changed formula (0.1.0's text query map against today's default, say) moves logits by orders of magnitude more.

The fixtures under `tests/fixtures/v0.1.0/` were written by `tests/fixtures/make_v010_fixtures.py` with version 0.1.0,
before any change of issue 12: one adapter per method on a tiny saved CLIP, and the logits 0.1.0 gave on fixed inputs.
Those under `tests/fixtures/v0.2.0/` were written the same way by `make_v020_fixtures.py` with version 0.2.0 (on the
0.1.0 fixtures' backbone), Meta-Adapter included.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "v0.1.0"
FIXTURES_020 = ROOT / "tests" / "fixtures" / "v0.2.0"
ADAPTERS = [
    "zero-shot",
    "tip-adapter",
    "tip-adapter-f",
    "clip-adapter",
    "multimodal-adapter",
    "xmadapter",
    "xmadapter-half",
]


def assert_warned_no_digest(caplog, path: Path, version: str) -> None:
    """Exactly one warning says that the weights file records no digest of its tensors, naming the file and the
    version that wrote it."""
    warned = [r.getMessage() for r in caplog.records if "no digest of its tensors" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert f"{path / 'model.safetensors'}' was saved by xmadapter-hf {version}," in warned[0]


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=1e-5 * expected.abs().max().item())


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURES / "reference.safetensors")


@pytest.mark.parametrize("name", ADAPTERS)
def test_a_010_adapter_loads_with_the_same_logits_and_a_warning(reference, name, monkeypatch, caplog):
    monkeypatch.chdir(ROOT)  # the configs name their backbone by its path from the repository root
    with caplog.at_level(logging.WARNING, logger="xmadapter_hf"):
        model = XMAdapterForImageClassification.from_pretrained(FIXTURES / name)
    warned = [r.getMessage() for r in caplog.records if "probe_image_embed" in r.getMessage()]
    assert warned and "0.1.0" in warned[0], "a missing integrity field must be reported"
    assert_warned_no_digest(caplog, FIXTURES / name, "0.1.0")
    assert model.config.method == name.removesuffix("-half")
    assert model.config.temperature is None  # written before the scores' temperature: raw softmax, same logits
    with torch.no_grad():
        on_embeds = model(image_embeds=reference["image_embeds"]).logits
        on_pixels = model(pixel_values=reference["pixel_values"]).logits
    assert_same_logits(on_embeds, reference[f"{name}.embeds"])
    assert_same_logits(on_pixels, reference[f"{name}.pixels"])
    if name.startswith("xmadapter"):  # written before `text_query` existed: 0.1.0's independent query map
        assert model.config.text_query == "independent"
    if name == "xmadapter-half":
        assert model.method.cache_keys.dtype == torch.float16 and not model.method.cache_keys.requires_grad


def test_a_010_config_cannot_build_a_backbone_but_a_resaved_one_can(reference, monkeypatch, caplog, tmp_path):
    config = XMAdapterConfig.from_pretrained(FIXTURES / "xmadapter")
    assert config.backbone_config is None
    with pytest.raises(ValueError, match="from_pretrained"):
        XMAdapterForImageClassification(config)
    with pytest.raises(ValueError, match="from_pretrained"):
        AutoModelForImageClassification.from_config(config)
    monkeypatch.chdir(ROOT)
    model, info = XMAdapterForImageClassification.from_pretrained(FIXTURES / "xmadapter", output_loading_info=True)
    assert info["missing_keys"] == {"probe_image_embed"} and info["unexpected_keys"] == set()
    model.save_pretrained(tmp_path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmadapter_hf"):
        again = XMAdapterForImageClassification.from_pretrained(tmp_path)
    assert not caplog.records, "a checkpoint saved by this version has every integrity field"
    with torch.no_grad():
        logits = again(image_embeds=reference["image_embeds"]).logits
    assert_same_logits(logits, reference["xmadapter.embeds"])
    assert XMAdapterConfig.from_pretrained(tmp_path).backbone_config["model_type"] == "clip"


@pytest.fixture(scope="module")
def reference_020():
    return load_file(FIXTURES_020 / "reference.safetensors")


@pytest.mark.parametrize("name", [*ADAPTERS, "meta-adapter"])
def test_a_020_adapter_loads_with_the_same_logits_and_a_warning(reference_020, name, monkeypatch, caplog):
    monkeypatch.chdir(ROOT)  # the configs name their backbone by its path from the repository root
    with caplog.at_level(logging.WARNING, logger="xmadapter_hf"):
        model = XMAdapterForImageClassification.from_pretrained(FIXTURES_020 / name)
    assert_warned_no_digest(caplog, FIXTURES_020 / name, "0.2.0")
    assert model.config.method == name.removesuffix("-half")
    assert model.config.temperature is None
    with torch.no_grad():
        on_embeds = model(image_embeds=reference_020["image_embeds"]).logits
        on_pixels = model(pixel_values=reference_020["pixel_values"]).logits
    assert_same_logits(on_embeds, reference_020[f"{name}.embeds"])
    assert_same_logits(on_pixels, reference_020[f"{name}.pixels"])
