"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`) on `XMAdapterForImageClassification`.

The two test files come from the source distribution of the installed transformers version, fetched by
`scripts/fetch_transformers_tests.py` (never copied into this repository); `scripts/transformers_common_tests.sh`
fetches them and runs this file, which the suite does not collect (its name does not start with `test_`). The tests
that fail by design are skipped below, each with its reason; docs/conventions.md lists them.
"""

from __future__ import annotations

import copy
import sys
import unittest
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from fetch_transformers_tests import cache_folder  # noqa: E402

if not (cache_folder() / "transformers_tests" / "test_modeling_common.py").is_file():
    raise RuntimeError("transformers' common tests are not fetched: run `bash scripts/transformers_common_tests.sh`.")
sys.path.insert(0, str(cache_folder()))

from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import (  # noqa: E402
    ModelTesterMixin,
    floats_tensor,
    skip_weight_init,
)

from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification  # noqa: E402
from xmadapter_hf.testing import tiny_clip_config  # noqa: E402

#: The tests that cannot pass by design, with the reason (docs/conventions.md repeats them).
BY_DESIGN = {
    "test_resize_tokens_embeddings": "a frozen-backbone adapter has no token embeddings of its own to resize",
    "test_retain_grad_hidden_states_attentions": (
        "the frozen backbone runs without autograd (no gradient reaches it, by design: training touches the adapter "
        "only), so its hidden states and attentions carry no gradient to retain"
    ),
    "test_model_weights_reload_no_missing_tied_weights": (
        "the test replaces model.safetensors by a file of another save; the checkpoint's integrity checks refuse it "
        "(its save id differs from the config's) instead of loading an adapter with every tensor missing"
    ),
}


class XMAdapterConfigTester(ConfigTester):
    """transformers' `ConfigTester`, where `num_labels` follows `class_names` (issue 23 item 12): the stock check sets
    `num_labels=5` and then 3 on a 3-class config and expects id2label to follow; here a number of labels that
    contradicts `class_names` is refused, at construction and at assignment, and the agreeing one is accepted."""

    def create_and_test_config_with_num_labels(self):
        n = len(self.inputs_dict["class_names"])
        config = self.config_class(**self.inputs_dict, num_labels=n)
        self.parent.assertEqual((len(config.id2label), len(config.label2id)), (n, n))
        with self.parent.assertRaisesRegex(ValueError, "num_labels"):
            self.config_class(**self.inputs_dict, num_labels=n + 2)
        with self.parent.assertRaisesRegex(ValueError, "add_classes"):
            config.num_labels = n + 2
        self.parent.assertEqual((len(config.id2label), len(config.label2id)), (n, n))


class XMAdapterModelTester:
    """A tiny pinned CLIP backbone (2 layers, 32 wide, 8 px images in 2 px patches) under a 3-class adapter."""

    def __init__(self, parent, batch_size=3, image_size=8, patch_size=2, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_classes=3, shots=2, method="xmadapter"):  # fmt: skip
        self.parent = parent
        self.batch_size, self.image_size, self.patch_size = batch_size, image_size, patch_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = (
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
        )
        self.num_classes, self.shots, self.method = num_classes, shots, method
        self.num_channels = 3
        self.seq_length = (image_size // patch_size) ** 2 + 1  # the vision tower's tokens: patches and [CLS]
        self.is_training = True

    def get_config(self) -> XMAdapterConfig:
        backbone = tiny_clip_config(
            projection_dim=16, image_size=self.image_size, hidden_size=self.hidden_size,
            layers=self.num_hidden_layers, heads=self.num_attention_heads,
        )  # fmt: skip
        backbone.vision_config.patch_size = self.patch_size
        described = backbone.to_diff_dict()
        described["model_type"] = backbone.model_type
        for key in ("transformers_version", "dtype", "architectures"):
            described.pop(key, None)
        return XMAdapterConfig(
            method=self.method, class_names=[f"class {i}" for i in range(self.num_classes)], backbone_config=described,
            cache_size=self.num_classes * self.shots, shots=self.shots, projection_dim=16, logit_scale=100.0,
        )  # fmt: skip

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), {"pixel_values": pixel_values}


class XMAdapterModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (XMAdapterForImageClassification,)
    test_resize_embeddings = False  # see BY_DESIGN
    test_torch_exportable = False
    has_attentions = True

    def setUp(self):
        self.model_tester = XMAdapterModelTester(self)
        self.config_tester = XMAdapterConfigTester(self, config_class=XMAdapterConfig, has_text_modality=False,
                                          common_properties=[], **self._config_kwargs())  # fmt: skip

    def _config_kwargs(self) -> dict:
        config = self.model_tester.get_config()
        return {"class_names": config.class_names, "backbone_config": config.backbone_config}

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = copy.deepcopy(inputs_dict)
        if return_labels:
            inputs_dict["labels"] = torch.arange(self.model_tester.batch_size) % self.model_tester.num_classes
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self):
        # As transformers' own tests of CLIP's vision models: the input embedding of an image model is its patch
        # embedding (a Conv2d, not an nn.Embedding), and there is no output embedding but a Linear or none.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = XMAdapterForImageClassification(copy.deepcopy(config))
        self.assertIsInstance(model.get_input_embeddings(), torch.nn.Conv2d)
        output = model.get_output_embeddings()
        self.assertTrue(output is None or isinstance(output, torch.nn.Linear))

    def test_init_weights_can_init_buffers(self):
        # The stock test compares buffers with `==`; the memo's `exact` fingerprint is NaN while nothing is remembered
        # (it then matches no fingerprint), and NaN == NaN is false: the same check, comparing NaN as equal.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        with skip_weight_init():
            built = XMAdapterForImageClassification(copy.deepcopy(config))
        with torch.device("meta"):
            meta = XMAdapterForImageClassification(copy.deepcopy(config))
        meta.to_empty(device="cpu")
        meta.init_weights()
        built_buffers, meta_buffers = dict(built.named_buffers()), dict(meta.named_buffers())
        self.assertEqual(sorted(built_buffers), sorted(meta_buffers))
        different = [
            k for k, v in built_buffers.items() if not torch.equal(v.nan_to_num(7.0), meta_buffers[k].nan_to_num(7.0))
        ]
        self.assertEqual(different, [], "buffers not defined by `_init_weights` after meta-device construction")


for _name, _reason in BY_DESIGN.items():
    setattr(XMAdapterModelTest, _name, unittest.skip(f"by design: {_reason}")(lambda self: None))
