"""Reliability: properties (hypothesis), atomic saves under injected failures, determinism, image modes, no pickle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASS_NAMES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import xmadapter_hf
from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf import checkpoint as serialization
from xmadapter_hf import functional as Fn
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.methods.cache import affinity
from xmadapter_hf.testing import tiny_clip, tiny_image_dataset
from xmadapter_hf.training import build_optimizer

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _unit(seed, rows, dim=32, non_negative=False):
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    return Fn.l2_normalize(x.abs() if non_negative else x)


# ------------------------------------------------------------------------------------------------- properties
@FAST
@given(seed=st.integers(0, 2**31), sharpness=st.floats(1e-3, 100.0), rows=st.integers(1, 12))
def test_affinities_lie_in_zero_one(seed, sharpness, rows):
    # Embeddings with non-negative cosines, as CLIP's are: with sharpness <= 100 (the config's limit) the affinity
    # exp(-beta (1 - cos)) >= exp(-100) stays above float32's smallest value; fp32 dot products of unit vectors reach
    # 1.0000004, hence the 1e-5 slack at the top.
    queries, keys = _unit(seed, rows, non_negative=True), _unit(seed + 1, 20, non_negative=True)
    a = affinity(queries, keys, sharpness)
    assert a.dtype == torch.float32
    assert (a > 0).all() and (a <= 1 + 1e-5).all()
    # a key against itself: cos is 1 up to fp32 rounding (~3e-7), which the sharpness multiplies (up to 100x)
    torch.testing.assert_close(affinity(keys, keys, sharpness).diagonal(), torch.ones(20), atol=1e-4, rtol=0)


@FAST
@given(seed=st.integers(0, 2**31), ratio=st.floats(0.0, 1.0))
def test_fused_affinity_lies_between_its_parts(seed, ratio):
    image = torch.rand(4, 10, generator=torch.Generator().manual_seed(seed))
    text = torch.rand(4, 10, generator=torch.Generator().manual_seed(seed + 1))
    fused = Fn.fuse_affinities(image, text, torch.tensor(ratio))
    assert (fused >= torch.minimum(image, text) - 1e-6).all() and (fused <= torch.maximum(image, text) + 1e-6).all()


@FAST
@given(seed=st.integers(0, 2**31), method=st.sampled_from(["tip-adapter", "tip-adapter-f", "xmadapter"]))
def test_permuting_the_cache_leaves_logits_unchanged(make_model, cache_embeds, seed, method):
    model = make_model(method, sharpness=7.0)
    raw, labels = cache_embeds
    permutation = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    permuted = make_model(method, sharpness=7.0)
    permuted.set_cache(raw[permutation], labels[permutation])
    with torch.no_grad():
        for (name, p), q in zip(model.method.named_parameters(), permuted.method.parameters()):
            q.copy_(p[permutation] if name == "cache_keys" else p)
    queries = raw + 0.05
    torch.testing.assert_close(model(image_embeds=queries).logits, permuted(image_embeds=queries).logits)


@FAST
@given(seed=st.integers(0, 2**31), sharpness=st.floats(0.5, 50.0), alpha=st.floats(0.0, 10.0))
def test_reductions_hold_for_any_setting(make_model, cache_embeds, seed, sharpness, alpha):
    settings_ = dict(sharpness=sharpness, residual_ratio=alpha)
    xm = make_model("xmadapter", use_text_cache=False, hard_sample_strength=0.0, use_gaussian_term=False, **settings_)
    tip = make_model("tip-adapter", **settings_)
    queries = cache_embeds[0] + 0.1 * torch.randn(16, 32, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(xm(image_embeds=queries).logits, tip(image_embeds=queries).logits)
    assert torch.equal(xm(image_embeds=queries).zero_shot_logits, tip(image_embeds=queries).zero_shot_logits)


@FAST
@given(method=st.sampled_from(xmadapter_hf.registered_methods()))
def test_save_load_is_idempotent(make_model, clip_and_processor, cache_embeds, tmp_path_factory, method):
    clip, processor = clip_and_processor
    model = make_model(method, sharpness=4.0)
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    model.save_pretrained(first)
    loaded = XMAdapterForImageClassification.from_pretrained(first, clip_model=clip, processor=processor)
    loaded.save_pretrained(second)
    a, meta_a = serialization.read_weights(str(first / "model.safetensors"))
    b, meta_b = serialization.read_weights(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import json

    config_a, config_b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert config_a.pop("save_id") != config_b.pop("save_id")
    assert config_a == config_b


# ---------------------------------------------------------------------------------------------- atomic saves
def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_failure_during_a_write_leaves_the_directory_as_it_was(make_model, tmp_path, monkeypatch):
    model = make_model("tip-adapter-f")
    model.save_pretrained(tmp_path)
    (tmp_path / "trainer_state.json").write_text("{}")  # a Trainer's file: never touched
    before = _tree(tmp_path)
    with torch.no_grad():
        model.method.cache_keys.add_(1.0)

    def broken_save(tensors, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert _tree(tmp_path) == before, "no temporary file left, nothing replaced"


def test_failure_between_the_replaces_is_detected_on_load(make_model, clip_and_processor, tmp_path, monkeypatch):
    clip, processor = clip_and_processor
    model = make_model("tip-adapter-f")
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        model.method.cache_keys.add_(1.0)
    real_replace = os.replace
    calls = []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the weights are in place, the config is not
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(serialization.os, "replace", replace_then_fail)
    with pytest.raises(OSError, match="power cut"):
        model.save_pretrained(tmp_path)
    monkeypatch.setattr(serialization.os, "replace", real_replace)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="come from different saves"):
        XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=clip, processor=processor)


def test_save_leaves_other_files_alone(make_model, tmp_path):
    (tmp_path / "optimizer.pt.json").write_text("keep me")
    make_model("xmadapter").save_pretrained(tmp_path)
    assert (tmp_path / "optimizer.pt.json").read_text() == "keep me"


def test_every_saved_file_gets_the_umask_s_mode(make_model, tmp_path):
    """safetensors writes its file with mode 0600 (a temporary file's); the save gives it the umask's mode, as the
    config and the image settings get from `open`."""
    model = make_model("tip-adapter")
    for umask in (0o022, 0o077):
        previous = os.umask(umask)
        try:
            model.save_pretrained(tmp_path / oct(umask))
        finally:
            os.umask(previous)
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / oct(umask)).iterdir()}
        assert set(modes) == {"config.json", "model.safetensors", "preprocessor_config.json"}
        assert set(modes.values()) == {0o666 & ~umask}, (oct(umask), {k: oct(v) for k, v in modes.items()})


# ---------------------------------------------------------------------------------------------- determinism
def _train_once(seed: int) -> dict[str, torch.Tensor]:
    clip, processor = tiny_clip()
    model = XMAdapterForImageClassification.from_clip(
        clip, CLASS_NAMES, processor=processor, method="xmadapter", sharpness=8.0, seed=seed
    )
    model.build_cache(tiny_image_dataset(num_classes=4, shots=2, noise=0.8), augment_views=2, seed=seed,
                      show_progress=False)  # fmt: skip
    optimizer, _ = build_optimizer(model, num_training_steps=3)
    model.train()
    for step in range(3):
        index = torch.randint(0, 8, (4,), generator=torch.Generator().manual_seed(seed * 100 + step))
        loss = model(image_embeds=model.cache_embeds[index].float() + 0.01, labels=model.cache_labels[index]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.adapter_state_dict().items()}


def test_same_seed_gives_a_bit_identical_adapter():
    torch.manual_seed(123)  # the global RNG state must not matter
    first = _train_once(seed=7)
    torch.manual_seed(456)
    second = _train_once(seed=7)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _train_once(seed=8)
    assert not all(torch.equal(first[k], other[k]) for k in first)


# ---------------------------------------------------------------------------------------------- image modes
def _modes(picture: np.ndarray) -> dict[str, Image.Image]:
    rgb = Image.fromarray(picture)
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    return {
        "rgb": rgb,
        "grayscale": gray,
        "rgba-opaque": rgba,
        "palette": rgb.quantize(colors=256),
        "gray-16bit": Image.fromarray(np.asarray(gray).astype(np.uint16) * 257),
    }


def test_images_that_are_not_8bit_rgb_are_handled(clip_and_processor, tmp_path):
    clip, processor = clip_and_processor
    picture = np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8)
    modes = _modes(picture)
    paths = {}
    for name, image in modes.items():
        paths[name] = tmp_path / f"{name}.png"
        image.save(paths[name])
    dataset = [(str(paths[name]), 0) for name in modes]
    embeds = extract_embeddings(clip, processor, dataset, augment_views=0, show_progress=False).embeds[0]
    index = {name: i for i, name in enumerate(modes)}
    # 16-bit grayscale equals the same picture saved as 8-bit grayscale
    torch.testing.assert_close(embeds[index["gray-16bit"]], embeds[index["grayscale"]])
    torch.testing.assert_close(embeds[index["rgba-opaque"]], embeds[index["rgb"]])
    assert torch.isfinite(embeds).all()
    # a fully transparent RGBA image is composited on white
    clear = Image.new("RGBA", (30, 30), (10, 200, 30, 0))
    white = Image.new("RGB", (30, 30), (255, 255, 255))
    pair = extract_embeddings(clip, processor, [(clear, 0), (white, 0)], augment_views=0, show_progress=False)
    torch.testing.assert_close(pair.embeds[0][0], pair.embeds[0][1])


# ---------------------------------------------------------------------------------------------- no pickle
def test_the_package_never_pickles_or_trusts_remote_code():
    """Scans the package's code (not its prose) for pickle/dill imports or calls, `torch.load` without
    `weights_only=True`, and `trust_remote_code=True`."""
    import ast

    package = Path(xmadapter_hf.__file__).parent
    offences = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib") for n in names):
                    offences.append(f"{where}: imports {names}")
            if isinstance(node, ast.Attribute) and node.attr in ("pickle", "dill"):
                offences.append(f"{where}: uses .{node.attr}")
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if name.endswith("torch.load") and keywords.get("weights_only") != "True":
                    offences.append(f"{where}: {name} without weights_only=True")
                if keywords.get("trust_remote_code") == "True":
                    offences.append(f"{where}: trust_remote_code=True")
    assert not offences, offences
    assert len(list(package.rglob("*.py"))) > 10, "the scan must see the package"
