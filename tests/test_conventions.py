"""transformers' model conventions (issue 23 items 8-13), each checked here in seconds; transformers' own common
model tests run outside the suite (scripts/transformers_common_tests.sh, docs/conventions.md)."""

from __future__ import annotations

import torch

from xmadapter_hf import XMAdapterForImageClassification


def test_meta_construction_then_init_weights_defines_every_buffer(make_model):
    """Item 11: after meta-device construction, `to_empty()` and `init_weights()`, every buffer holds its
    construction value (zeros), not uninitialised memory, and forward indexes nothing out of range."""
    config = make_model("tip-adapter").config
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
