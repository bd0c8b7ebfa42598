"""Integrity on load: the backbone's identity, corrupt, damaged or incomplete checkpoints, non-finite weights, newer
versions, torn saves."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf import checkpoint as serialization
from xmadapter_hf.backbone import architecture_hash
from xmadapter_hf.integrity import DIGEST_KEY, tensors_digest
from xmadapter_hf.testing import tiny_clip


@pytest.fixture
def saved(make_model, tmp_path):
    model = make_model("xmadapter")
    model.save_pretrained(tmp_path / "adapter")
    return model, tmp_path / "adapter"


def _load(path, clip=None, processor=None, **kwargs):
    if clip is None:
        clip, processor = tiny_clip()
    return XMAdapterForImageClassification.from_pretrained(path, clip_model=clip, processor=processor, **kwargs)


def test_architecture_hash_ignores_dtype_and_paths():
    clip, _ = tiny_clip()
    reference = architecture_hash(clip)
    clip.config._name_or_path = "somewhere/else"
    assert architecture_hash(clip.to(torch.bfloat16)) == reference
    assert architecture_hash(tiny_clip(layers=3)[0]) != reference


def test_backbone_of_another_architecture_is_refused(saved):
    _, path = saved
    clip, processor = tiny_clip(layers=3)  # same projection dim, one more layer
    with pytest.raises(ValueError, match="architecture .* differs"):
        _load(path, clip, processor)


def _other_text_tower():
    """A backbone of the same architecture and vision tower as the fixtures' (seed 0), with another text tower."""
    clip, processor = tiny_clip(seed=1)
    reference, _ = tiny_clip(seed=0)
    clip.vision_model.load_state_dict(reference.vision_model.state_dict())
    clip.visual_projection.load_state_dict(reference.visual_projection.state_dict())
    return clip, processor


def test_backbone_with_another_text_encoder_is_refused_unless_rebuilt(saved, test_pixels):
    model, path = saved
    clip, processor = _other_text_tower()  # same architecture and vision tower, other text weights
    with pytest.raises(ValueError, match=r"probe cosine .* < 0.99"):
        _load(path, clip, processor)
    rebuilt = _load(path, clip, processor, rebuild_text_embeddings=True)
    assert not torch.allclose(rebuilt.class_embeds, model.class_embeds)
    fresh = XMAdapterForImageClassification.from_clip(clip, model.config.class_names, processor=processor)
    torch.testing.assert_close(rebuilt.class_embeds, fresh.class_embeds)
    assert _load(path, clip, processor, check_backbone=False) is not None


def test_backbone_loaded_in_bf16_passes_the_probe(saved):
    _, path = saved
    clip, processor = tiny_clip()
    model = _load(path, clip.to(torch.bfloat16), processor)
    assert model.clip.dtype == torch.bfloat16


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_raise_a_clear_error(saved, damage):
    _, path = saved
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 100)
    with pytest.raises(OSError, match="not a readable safetensors file"):
        _load(path)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_files_are_named(saved, missing):
    _, path = saved
    (path / missing).unlink()
    with pytest.raises(OSError, match=f"holds no {missing}"):
        _load(path)


def test_config_from_a_newer_version_is_refused(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["xmadapter_version"] = "99.0.0"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="written by xmadapter-hf 99.0.0, newer than the installed"):
        _load(path)


def test_config_and_weights_of_different_saves_are_refused(make_model, tmp_path):
    model = make_model("tip-adapter")
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    shutil.copy(tmp_path / "b" / "config.json", tmp_path / "a" / "config.json")  # new config, old weights
    with pytest.raises(ValueError, match="come from different saves"):
        _load(tmp_path / "a")


def test_directory_without_a_checkpoint_and_a_file_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="holds no config.json"):
        _load(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OSError, match="is a file"):
        _load(tmp_path / "file.txt")


def test_backbone_with_another_vision_tower_is_refused_until_the_cache_is_rebuilt(saved, cache_embeds, tmp_path):
    _, path = saved
    clip, processor = tiny_clip(seed=1)  # the same text tower as the fixtures' backbone, another vision tower
    reference, _ = tiny_clip(seed=0)
    clip.text_model.load_state_dict(reference.text_model.state_dict())
    clip.text_projection.load_state_dict(reference.text_projection.state_dict())
    with pytest.raises(ValueError, match=r"vision encoder does not match .* `build_cache` again"):
        _load(path, clip, processor)
    with pytest.raises(ValueError, match="vision encoder"):  # re-encoding the class prompts does not help
        _load(path, clip, processor, rebuild_text_embeddings=True)
    model = _load(path, clip, processor, check_backbone=False)
    with torch.no_grad():  # the way out: a cache of this backbone's embeddings (here: any, of the right shape)
        model.set_cache(cache_embeds[0] + 0.1, cache_embeds[1])
    model.save_pretrained(tmp_path / "rebuilt")
    assert _load(tmp_path / "rebuilt", clip, processor) is not None
    with pytest.raises(ValueError, match="vision encoder"):  # and now the old backbone is the other one
        _load(tmp_path / "rebuilt")


# ---------------------------------------------------------------------------------- damaged or non-finite tensors
def damage_tensor_bytes(weights, seed: int = 0) -> None:
    """Writes random bytes into the middle of a safetensors file's tensor data, its header left intact."""
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # a u64 header length, then the JSON header, then the data
    offset = start + (len(data) - start) // 2
    data[offset : offset + 16] = torch.randint(0, 256, (16,), generator=torch.Generator().manual_seed(seed)).tolist()
    weights.write_bytes(bytes(data))


def test_damaged_tensor_bytes_are_refused_before_the_backbone_naming_the_file(saved, monkeypatch):
    _, path = saved
    weights = path / "model.safetensors"
    damage_tensor_bytes(weights)
    serialization.read_header(str(weights))  # the header is intact: only the digest can tell
    config = XMAdapterForImageClassification.config_class.from_pretrained(path)
    config.base_model_name_or_path = "some-user/some-clip"  # a backbone the load would fetch, were it reached
    before = config.to_json_string()

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded for a damaged adapter")

    monkeypatch.setattr(serialization, "load_backbone", no_backbone)
    with pytest.raises(OSError, match=f"{weights}' is damaged or was edited: .* sha256 digest"):
        XMAdapterForImageClassification.from_pretrained(path, config=config)
    assert config.to_json_string() == before


def _rewrite(weights, change, digest: bool) -> None:
    """Rewrites a saved adapter's tensors with ``change`` applied; with ``digest``, records their new digest."""
    tensors = load_file(weights)
    with safe_open(weights, framework="pt") as handle:
        metadata = dict(handle.metadata())
    change(tensors)
    metadata.pop(DIGEST_KEY)
    if digest:
        metadata[DIGEST_KEY] = tensors_digest(tensors)
    save_file(tensors, weights, metadata=metadata)


@pytest.mark.parametrize("digest", [True, False], ids=["with-digest", "without-digest"])
def test_non_finite_weights_are_refused_on_load_naming_the_tensor(saved, digest):
    _, path = saved
    _rewrite(path / "model.safetensors", lambda t: t["method.cache_keys"][1].fill_(float("nan")), digest)
    with pytest.raises(ValueError, match=r"holds non-finite values in tensor 'method.cache_keys' \(32 NaN"):
        _load(path)


def test_non_finite_weights_are_refused_on_save_before_anything_is_written(make_model, tmp_path):
    model = make_model("tip-adapter-f")
    model.save_pretrained(tmp_path / "kept")
    kept = {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()}
    with torch.no_grad():
        model.method.cache_keys[0, 0] = float("inf")
    for target in (tmp_path / "kept", tmp_path / "new"):
        with pytest.raises(ValueError, match=r"Nothing was saved .* tensor 'method.cache_keys' \(1 NaN or infinite"):
            model.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in (tmp_path / "kept").iterdir()} == kept and not (tmp_path / "new").exists()
    # a float32 value beyond float16's range is an infinity in a float16 cache: refused too
    half = make_model("tip-adapter", cache_dtype="float16")
    with torch.no_grad():
        half.cache_embeds[2, 3] = 1e6
    with pytest.raises(ValueError, match="tensor 'cache_embeds'"):
        half.save_pretrained(tmp_path / "half")


def test_the_digest_covers_names_dtypes_shapes_and_bytes():
    base = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    reference = tensors_digest(base)
    assert tensors_digest(dict(reversed(base.items()))) == reference  # key order, not insertion order
    variants = [
        {**base, "a": base["a"].reshape(3, 2)},  # same bytes, another shape
        {**base, "b": base["b"].view(torch.float16)},  # same bytes, another dtype
        {"c": base["a"], "b": base["b"]},  # another name
        {**base, "a": base["a"] + torch.tensor([[1e-7, 0, 0], [0, 0, 0]])},  # one element, by 1e-7
    ]
    assert len({reference, *map(tensors_digest, variants)}) == 1 + len(variants)
    assert tensors_digest(base, "blake2b").startswith("blake2b:")


def test_a_saved_adapter_records_the_digest_of_what_it_wrote(saved, caplog):
    _, path = saved
    weights = path / "model.safetensors"
    with safe_open(weights, framework="pt") as handle:
        recorded = handle.metadata()[DIGEST_KEY]
    assert recorded == tensors_digest(load_file(weights))
    with caplog.at_level(logging.WARNING, logger="xmadapter_hf"):
        _load(path)
    assert not caplog.records
