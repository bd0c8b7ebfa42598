"""transformers' model conventions (issue 23 items 8-13), each checked here in seconds; transformers' own common
model tests run outside the suite (scripts/transformers_common_tests.sh, docs/conventions.md)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForImageClassification, PreTrainedModel

from xmadapter_hf import XMAdapterForImageClassification


def test_meta_construction_then_init_weights_defines_every_buffer(make_model):
    """Item 11: after meta-device construction, `to_empty()` and `init_weights()`, every buffer holds its
    construction value (zeros), not uninitialised memory, and forward indexes nothing out of range."""
    # a logit scale of the adapter's own: transformers' CLIPModel leaves its `logit_scale` parameter undefined after
    # to_empty() + init_weights() (its `_init_weights` does not set it), and this test is about the adapter's buffers
    config = make_model("tip-adapter", logit_scale=100.0).config
    built = XMAdapterForImageClassification(config)
    with torch.device("meta"):
        meta = XMAdapterForImageClassification(config)
    meta.to_empty(device="cpu")
    for name, buffer in meta.named_buffers():
        if not name.startswith("clip."):
            buffer.fill_(7)  # what uninitialised memory might hold
    meta.init_weights()
    built_buffers = dict(built.named_buffers())
    for name, buffer in meta.named_buffers():
        if not name.startswith("clip."):
            assert torch.equal(buffer, built_buffers[name]), name
    logits = meta(image_embeds=torch.randn(2, meta.embed_dim)).logits
    assert logits.shape == (2, config.num_classes) and torch.isfinite(logits).all()


def test_hidden_states_attentions_and_return_dict_reach_the_output(make_model, test_pixels):
    """Item 8: `output_hidden_states`/`output_attentions` (argument or config) reach the vision tower and come back
    on the output, as `CLIPForImageClassification` returns them; `config.return_dict=False` gives a tuple."""
    model = make_model("tip-adapter")
    pixels = test_pixels[0][:2]
    layers = model.clip.config.vision_config.num_hidden_layers
    out = model(pixel_values=pixels, output_hidden_states=True)
    assert len(out.hidden_states) == layers + 1 and out.attentions is None
    plain = model(pixel_values=pixels)
    assert plain.hidden_states is None and torch.equal(plain.logits, out.logits)
    model.config.output_hidden_states = True
    assert len(model(pixel_values=pixels).hidden_states) == layers + 1
    model.config.output_hidden_states = False
    model.config.return_dict = False
    assert isinstance(model(pixel_values=pixels), tuple)


def _attention_everywhere(model) -> set:
    """The attention implementation of the model's config, of every sub-model's config and of the backbone's
    sub-configs (what the attention layers read)."""
    configs = [model.config, model.clip.config.text_config, model.clip.config.vision_config]
    configs += [module.config for module in model.modules() if isinstance(module, PreTrainedModel)]
    return {config._attn_implementation for config in configs}


def test_attention_implementation_asked_for_at_construction_reaches_the_backbone(make_model, test_pixels, tmp_path):
    """Item 9: `config._attn_implementation`, `_from_config(config, attn_implementation=)` and
    `AutoModelForImageClassification.from_config(config, attn_implementation=)` reach the CLIP backbone and every
    sub-config of it (they stayed `sdpa`), and the model declares what the backbone supports."""
    model = make_model("tip-adapter")
    cls = XMAdapterForImageClassification
    assert cls._supports_sdpa and cls._supports_flash_attn and cls._supports_flex_attn
    assert _attention_everywhere(model) == {"sdpa"}  # with nothing asked for, the config says what the backbone does
    config = copy.deepcopy(model.config)
    config._attn_implementation = "eager"
    routes = {
        "config": lambda: cls(config),
        "_from_config": lambda: cls._from_config(copy.deepcopy(model.config), attn_implementation="eager"),
        "AutoModel": lambda: AutoModelForImageClassification.from_config(
            copy.deepcopy(model.config), attn_implementation="eager"
        ),
    }
    for route, build in routes.items():
        built = build()
        assert _attention_everywhere(built) == {"eager"}, route
        out = built(pixel_values=test_pixels[0][:2], output_attentions=True)  # eager attention returns its weights
        assert len(out.attentions) == built.clip.config.vision_config.num_hidden_layers, route
    built.set_attn_implementation("sdpa")
    assert _attention_everywhere(built) == {"sdpa"}
    # from_pretrained with a backbone object: the request reaches it too
    model.save_pretrained(tmp_path)
    clip = copy.deepcopy(model.clip)
    loaded = cls.from_pretrained(tmp_path, clip_model=clip, processor=model.processor, attn_implementation="eager")
    assert _attention_everywhere(loaded) == {"eager"}


def test_label_fields_follow_class_names_after_construction(make_model, test_pixels, tmp_path):
    """Item 12: `config.num_labels = 3` or `config.id2label = {...}` after construction was accepted and saved, and
    the adapter then failed to load (`id2label contradicts class_names`). A change that contradicts `class_names` is
    refused at assignment, naming what to call instead; one that agrees is accepted; what is saved loads."""
    model = make_model("tip-adapter")
    config = model.config
    n = config.num_classes
    before = copy.deepcopy(config.to_dict())
    changes = {
        "num_labels": n + 1,
        "id2label": {i: f"LABEL_{i}" for i in range(n)},
        "label2id": {"other": 0},
    }
    for name, value in changes.items():
        with pytest.raises(ValueError, match=rf"`{name}` follows `class_names`.*add_classes.*class_names=\[\.\.\.\]"):
            setattr(config, name, value)
    assert config.to_dict() == before  # nothing changed
    config.num_labels = n  # agreeing assignments are accepted (transformers' own code makes them)
    config.id2label = {str(i): name for i, name in enumerate(config.class_names)}  # JSON's string keys, normalised
    assert config.id2label == dict(enumerate(config.class_names))
    model.save_pretrained(tmp_path)
    loaded = XMAdapterForImageClassification.from_pretrained(
        tmp_path, clip_model=model.clip, processor=model.processor
    )
    assert loaded.config.id2label == config.id2label
    # config keywords set the loaded copy's attributes, as transformers' do; transformers' `num_labels=` re-heads a
    # model, ours is refused with what to call instead, and a name that is no attribute before any file is read
    with pytest.raises(ValueError, match=r"`num_labels` follows `class_names`.*add_classes"):
        XMAdapterForImageClassification.from_pretrained(tmp_path, clip_model=model.clip, num_labels=n + 1)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments: \['num_label'\]"):
        XMAdapterForImageClassification.from_pretrained(tmp_path / "absent", clip_model=model.clip, num_label=n)
    again = XMAdapterForImageClassification.from_pretrained(
        tmp_path, clip_model=model.clip, processor=model.processor, num_labels=n, output_hidden_states=True
    )
    assert again.config.output_hidden_states and not config.output_hidden_states
    assert again(pixel_values=test_pixels[0][:1]).hidden_states is not None
    # `class_names` set on a bare config keeps the labels in step; on a model's config, save refuses what the
    # tensors contradict instead of writing an adapter that cannot load
    bare = copy.deepcopy(config)
    bare.class_names = ["x", "y"]
    assert bare.id2label == {0: "x", 1: "y"} and bare.label2id == {"x": 0, "y": 1} and bare.num_labels == 2
    config.class_names = [*config.class_names, "extra"]
    with pytest.raises(ValueError, match="Nothing was saved.*add_classes"):
        model.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again").exists()
