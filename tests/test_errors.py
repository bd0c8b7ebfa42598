"""The catalogue of bad inputs: each gets a clear error, raised before any state changes, files left untouched.

`docs/errors.md` is generated from this catalogue (`python tests/test_errors.py > docs/errors.md`), and a test
checks that it lists every case with its current message.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_dataset
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from conftest import CLASS_NAMES  # noqa: E402
from test_integrity import damage_tensor_bytes  # noqa: E402

from xmadapter_hf import METHODS, XMAdapterConfig, XMAdapterForImageClassification  # noqa: E402
from xmadapter_hf.calibration import calibrate  # noqa: E402
from xmadapter_hf.data.extraction import extract_embeddings  # noqa: E402
from xmadapter_hf.data.splits import sample_few_shot  # noqa: E402
from xmadapter_hf.integrity import DIGEST_KEY, tensors_digest  # noqa: E402
from xmadapter_hf.methods import base as method_base  # noqa: E402
from xmadapter_hf.testing import save_tiny_clip, tiny_clip, tiny_image_dataset  # noqa: E402
from xmadapter_hf.training import build_optimizer  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass
class Case:
    id: str
    area: str
    what: str
    error: type
    call: object  # callable(ctx) -> None


class Context:
    """What the cases act on: a model with a cache, a model without, a working directory with files in it."""

    def __init__(self, root: Path):
        self.clip, self.processor = tiny_clip()
        self.root = root
        self.dataset = tiny_image_dataset(num_classes=4, shots=2, noise=0.8)
        extracted = extract_embeddings(self.clip, self.processor, self.dataset, augment_views=0, show_progress=False)
        self.raw, self.labels = extracted.embeds[0], extracted.labels
        self.model = self.build("xmadapter")
        self.model.set_cache(self.raw, self.labels)
        self.empty = self.build("tip-adapter")
        self.gda = self.build("gda")
        self.gda.set_cache(self.raw, self.labels)
        (root / "existing.json").write_text('{"keep": true}\n')
        (root / "checkpoint").mkdir()
        self.model.save_pretrained(root / "checkpoint")
        (root / "images").mkdir()
        Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "images" / "ok.png")
        (root / "images" / "notes.png").write_text("not an image")
        (root / "images" / "broken.png").write_bytes((root / "images" / "ok.png").read_bytes()[:40])
        for name in ("cat", "dog"):  # a `datasets` image folder with one corrupt file
            (root / "folder" / name).mkdir(parents=True)
            shutil.copy(root / "images" / "ok.png", root / "folder" / name / "ok.png")
        (root / "folder" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
        self.image_folder = load_dataset("imagefolder", data_dir=str(root / "folder"), split="train")
        # models whose classes the image-file cases cover, so that the label checks (which come first) pass
        self.single = XMAdapterForImageClassification.from_clip(self.clip, ["thing"], processor=self.processor)
        self.pets = XMAdapterForImageClassification.from_clip(self.clip, ["cat", "dog"], processor=self.processor)
        for name in ("cat", "dog", "fox"):  # an image folder whose class "dog" is empty: its ClassLabel lacks "dog"
            (root / "gaps" / name).mkdir(parents=True)
            if name != "dog":
                shutil.copy(root / "images" / "ok.png", root / "gaps" / name / "ok.png")
        self.gaps = load_dataset("imagefolder", data_dir=str(root / "gaps"), split="train")
        self.animals = XMAdapterForImageClassification.from_clip(
            self.clip, ["cat", "dog", "fox"], processor=self.processor
        )
        _edited_copy(root / "checkpoint", root / "claims-huge-cache", cache_size=10**10)
        # a backbone checkpoint with a weight missing (transformers would initialise it at random)
        save_tiny_clip(root / "incomplete-clip")
        weights = load_file(root / "incomplete-clip" / "model.safetensors")
        del weights["visual_projection.weight"]
        save_file(weights, root / "incomplete-clip" / "model.safetensors", metadata={"format": "pt"})
        _edited_copy(
            root / "checkpoint", root / "on-incomplete-clip", base_model_name_or_path=str(root / "incomplete-clip")
        )
        shutil.copytree(root / "checkpoint", root / "damaged")  # random bytes in its tensor data, header intact
        damage_tensor_bytes(root / "damaged" / "model.safetensors")
        shutil.copytree(root / "checkpoint", root / "non-finite")  # a NaN, with the digest of the tensors as they are
        _with_a_nan(root / "non-finite" / "model.safetensors")
        shutil.copytree(root / "checkpoint", root / "other-digest")  # a digest of an algorithm no version uses
        _edit_metadata(root / "other-digest" / "model.safetensors", **{DIGEST_KEY: "whirlpool2:" + "0" * 64})
        self.other_vision, _ = tiny_clip(seed=1)  # the same text tower, another vision tower
        self.other_vision.text_model.load_state_dict(self.clip.text_model.state_dict())
        self.other_vision.text_projection.load_state_dict(self.clip.text_projection.state_dict())

    def build(self, method, **kwargs):
        return XMAdapterForImageClassification.from_clip(
            self.clip, CLASS_NAMES, processor=self.processor, method=method, **kwargs
        )

    def folder(self, *names, label=0):
        """A torch dataset of (path, label) pairs, as an image-folder loader yields them (for `self.single`)."""
        return [(str(self.root / "images" / name), label) for name in names]


def _edited_copy(source: Path, target: Path, **changes) -> None:
    """A copy of a checkpoint directory whose config.json has ``changes``."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))


def _edit_metadata(weights: Path, **changes) -> None:
    """Rewrites a safetensors file with ``changes`` to its metadata, its tensors as they are."""
    with safe_open(weights, framework="pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(weights), weights, metadata={**metadata, **changes})


def _with_a_nan(weights: Path) -> None:
    """Puts a NaN into a saved adapter's learned keys and records the digest of the tensors as they then are."""
    tensors = load_file(weights)
    with safe_open(weights, framework="pt") as handle:
        metadata = handle.metadata()
    tensors["method.cache_keys"][0, 0] = float("nan")
    save_file(tensors, weights, metadata={**metadata, DIGEST_KEY: tensors_digest(tensors)})


def _save_a_nan(ctx):
    model = ctx.build("tip-adapter-f")
    model.set_cache(ctx.raw, ctx.labels)
    with torch.no_grad():
        model.method.cache_keys[0, 0] = float("nan")
    model.save_pretrained(ctx.root / "nan-adapter")


def _load(path, kwargs):
    """from_pretrained of a directory under the context's root, with ``kwargs(ctx)``."""
    return lambda ctx: XMAdapterForImageClassification.from_pretrained(ctx.root / path, **kwargs(ctx))


def _config(**kwargs):
    return lambda ctx: XMAdapterConfig(**{"class_names": CLASS_NAMES, **kwargs})


def _forward(**kwargs):
    return lambda ctx: ctx.model(**kwargs(ctx) if callable(kwargs) else kwargs)


def _bomb(ctx):
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100
    try:
        ctx.single.build_cache(ctx.folder("ok.png"), augment_views=0, show_progress=False)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _one_shot(ctx):
    """GDA given one image per class and no augmented views: no spread to estimate its covariance from."""
    first = torch.stack([torch.nonzero(ctx.labels == c)[0, 0] for c in range(len(CLASS_NAMES))])
    ctx.gda.set_cache(ctx.raw[first], ctx.labels[first])


def _stale_step(ctx):
    """A model of its own (the context's stay untouched): an optimiser, then `add_classes`, then a training step."""
    model = ctx.build("tip-adapter-f")
    model.set_cache(ctx.raw, ctx.labels)
    optimizer, _ = build_optimizer(model, num_training_steps=1)
    model.add_classes(["kiwi"], embeds=ctx.raw[:1], labels=torch.tensor([0]))
    model.train()
    model(image_embeds=ctx.raw, labels=ctx.labels).loss.backward()
    optimizer.step()


E = torch.zeros(2, 32)
CASES = [
    # ---------------------------------------------------------------------------------------- forward inputs
    Case("pixels-wrong-shape", "forward", "pixel values of shape (B, 1, H, W)", ValueError,
         lambda ctx: ctx.model(pixel_values=torch.zeros(2, 1, 30, 30))),
    Case("pixels-int-dtype", "forward", "integer pixel values", TypeError,
         lambda ctx: ctx.model(pixel_values=torch.zeros(2, 3, 30, 30, dtype=torch.uint8))),
    Case("pixels-not-a-tensor", "forward", "a list as pixel values", TypeError,
         lambda ctx: ctx.model(pixel_values=[[0.0]])),
    Case("embeds-wrong-dim", "forward", "image embeddings of the wrong dim", ValueError,
         lambda ctx: ctx.model(image_embeds=torch.zeros(2, 16))),
    Case("embeds-int-dtype", "forward", "integer image embeddings", TypeError,
         lambda ctx: ctx.model(image_embeds=torch.zeros(2, 32, dtype=torch.long))),
    Case("embeds-3d", "forward", "image embeddings with a view axis (V, B, C)", ValueError,
         lambda ctx: ctx.model(image_embeds=torch.zeros(3, 2, 32))),
    Case("no-input", "forward", "neither pixel values nor embeddings", ValueError, lambda ctx: ctx.model()),
    Case("both-inputs", "forward", "both pixel values and embeddings", ValueError,
         lambda ctx: ctx.model(pixel_values=torch.zeros(2, 3, 30, 30), image_embeds=E)),
    Case("labels-out-of-range", "forward", "a label >= the number of classes", ValueError,
         lambda ctx: ctx.model(image_embeds=E, labels=torch.tensor([0, 7]))),
    Case("labels-float", "forward", "float labels", ValueError,
         lambda ctx: ctx.model(image_embeds=E, labels=torch.tensor([0.0, 1.0]))),
    Case("labels-wrong-length", "forward", "labels of another batch size", ValueError,
         lambda ctx: ctx.model(image_embeds=E, labels=torch.tensor([0, 1, 2]))),
    Case("cache-index-out-of-range", "forward", "a cache index >= the cache size", ValueError,
         lambda ctx: ctx.model(image_embeds=E, cache_index=torch.tensor([0, 99]))),
    Case("no-cache-yet", "forward", "a cache method before build_cache", ValueError,
         lambda ctx: ctx.empty(image_embeds=E)),
    # ------------------------------------------------------------------------------------------------ cache
    Case("cache-nan", "cache", "NaN embeddings at cache building", ValueError,
         lambda ctx: ctx.model.set_cache(torch.full((4, 32), float("nan")), torch.arange(4))),
    Case("cache-inf", "cache", "Inf embeddings at cache building", ValueError,
         lambda ctx: ctx.model.set_cache(torch.full((4, 32), float("inf")), torch.arange(4))),
    Case("cache-wrong-dim", "cache", "cache embeddings of the wrong dim", ValueError,
         lambda ctx: ctx.model.set_cache(torch.zeros(4, 8), torch.arange(4))),
    Case("cache-empty-dataset", "cache", "an empty dataset", ValueError,
         lambda ctx: ctx.model.build_cache(ctx.dataset.select([]), show_progress=False)),
    Case("cache-class-without-shots", "cache", "a class with no image", ValueError,
         lambda ctx: ctx.model.set_cache(torch.randn(3, 32), torch.tensor([0, 1, 2]))),
    Case("gda-support-without-spread", "cache", "GDA's cache from 1 shot per class without augmented views",
         ValueError, _one_shot),
    Case("cache-label-out-of-range", "cache", "a label outside the classes", ValueError,
         lambda ctx: ctx.model.set_cache(torch.randn(5, 32), torch.tensor([0, 1, 2, 3, 9]))),
    Case("cache-float-label", "cache", "a non-integer label in the dataset", TypeError,
         lambda ctx: ctx.model.build_cache([(str(ctx.root / "images" / "ok.png"), 0.5)], augment_views=0,
                                           show_progress=False)),
    Case("cache-negative-views", "cache", "a negative number of augmented views", ValueError,
         lambda ctx: ctx.model.build_cache(ctx.dataset, augment_views=-1, show_progress=False)),
    Case("folder-non-image-file", "cache", "a text file among the images", ValueError,
         lambda ctx: ctx.single.build_cache(ctx.folder("ok.png", "notes.png"), augment_views=0, show_progress=False)),
    Case("folder-corrupt-image", "cache", "a truncated image file", ValueError,
         lambda ctx: ctx.single.build_cache(ctx.folder("broken.png"), augment_views=0, show_progress=False)),
    Case("imagefolder-corrupt-image", "cache", "a corrupt file in a `datasets` image folder", ValueError,
         lambda ctx: ctx.pets.build_cache(ctx.image_folder, augment_views=0, show_progress=False)),
    Case("folder-decompression-bomb", "cache", "an image above PIL's decompression-bomb limit", ValueError, _bomb),
    Case("cache-from-a-path", "cache", "a folder path where a dataset is expected", TypeError,
         lambda ctx: ctx.empty.build_cache(str(ctx.root / "folder"), show_progress=False)),
    Case("imagefolder-empty-class", "cache", "an image folder with an empty class folder (ClassLabel names differ)",
         ValueError, lambda ctx: ctx.animals.build_cache(ctx.gaps, augment_views=0, show_progress=False)),
    Case("dataset-label-out-of-range", "cache", "a dataset label outside the classes (before any backbone work)",
         ValueError, lambda ctx: ctx.empty.build_cache(tiny_image_dataset(num_classes=5, shots=1))),
    Case("dataset-class-without-images", "cache", "a dataset without images of a class (before any backbone work)",
         ValueError, lambda ctx: ctx.empty.build_cache(tiny_image_dataset(num_classes=3, shots=1))),
    # --------------------------------------------------------------------------------------------- classes
    Case("add-existing-class", "classes", "add_classes with a name the model has", ValueError,
         lambda ctx: ctx.model.add_classes(["blue sky"], embeds=ctx.raw[:1], labels=torch.tensor([0]))),
    Case("add-repeated-class", "classes", "add_classes with a name twice", ValueError,
         lambda ctx: ctx.model.add_classes(["kiwi", "kiwi"], embeds=ctx.raw[:2], labels=torch.tensor([0, 1]))),
    Case("add-no-classes", "classes", "add_classes with an empty list", ValueError,
         lambda ctx: ctx.model.add_classes([], embeds=ctx.raw[:1], labels=torch.tensor([0]))),
    Case("add-class-name-string", "classes", "add_classes with a string instead of a list", TypeError,
         lambda ctx: ctx.model.add_classes("kiwi", embeds=ctx.raw[:1], labels=torch.tensor([0]))),
    Case("add-class-without-support", "classes", "add_classes to a model with a cache, without support images",
         ValueError, lambda ctx: ctx.model.add_classes(["kiwi"])),
    Case("add-empty-class", "classes", "add_classes with a new class that has no support image", ValueError,
         lambda ctx: ctx.model.add_classes(["kiwi", "plum"], embeds=ctx.raw[:2], labels=torch.tensor([0, 0]))),
    Case("add-support-wrong-dim", "classes", "add_classes with support embeddings of the wrong dim", ValueError,
         lambda ctx: ctx.model.add_classes(["kiwi"], embeds=torch.zeros(2, 8), labels=torch.tensor([0, 0]))),
    Case("add-support-label-out-of-range", "classes", "add_classes with a support label beyond the new classes",
         ValueError, lambda ctx: ctx.model.add_classes(["kiwi"], embeds=ctx.raw[:2], labels=torch.tensor([0, 1]))),
    Case("stale-optimizer", "classes", "an optimiser built before add_classes, stepped after it", RuntimeError,
         _stale_step),
    Case("load-with-repeated-class-names", "classes", "from_pretrained(class_names=) with a name twice", ValueError,
         _load("checkpoint", lambda ctx: dict(clip_model=ctx.clip, processor=ctx.processor,
                                              class_names=["kiwi", "kiwi"]))),
    # ----------------------------------------------------------------------------------------------- config
    Case("unknown-method", "config", "an unknown method", ValueError, _config(method="lora")),
    Case("zero-sharpness", "config", "zero sharpness", ValueError, _config(sharpness=0.0)),
    Case("negative-sharpness", "config", "negative sharpness", ValueError, _config(sharpness=-2.0)),
    Case("sharpness-above-100", "config", "sharpness above 100 (exp underflows)", ValueError,
         _config(text_sharpness=150.0)),
    Case("zero-temperature", "config", "a scores' temperature of 0", ValueError, _config(temperature=0.0)),
    Case("calibrate-labels-out-of-range", "config", "calibrate() with a label outside the classes", ValueError,
         lambda ctx: calibrate(ctx.model, ctx.raw, torch.full((len(ctx.labels),), 4))),
    Case("template-without-braces", "config", "a prompt template without {}", ValueError,
         _config(prompt_templates=["a photo of a cat"])),
    Case("duplicate-class-names", "config", "duplicate class names", ValueError,
         lambda ctx: XMAdapterConfig(class_names=["cat", "dog", "cat"])),
    Case("empty-class-name", "config", "an empty class name", ValueError,
         lambda ctx: XMAdapterConfig(class_names=["cat", " "])),
    Case("id2label-contradicts", "config", "id2label that contradicts class_names", ValueError,
         _config(id2label={0: "red apple", 1: "zebra", 2: "blue sky", 3: "yellow sun"})),
    Case("num-labels-contradicts", "config", "num_labels that contradicts class_names", ValueError,
         _config(num_labels=7)),
    Case("field-wrong-type", "config", "a config field of the wrong type", TypeError, _config(residual_ratio="2")),
    Case("flag-wrong-type", "config", "a number where a flag is expected", TypeError, _config(use_text_cache=1)),
    Case("hard-samples-without-text-cache", "config", "hard-sample weighting with the text cache off", ValueError,
         _config(use_text_cache=False, hard_sample_strength=1.0)),
    # ------------------------------------------------------------------------------------------ construction
    Case("backbone-not-clip", "construction", "a backbone that is not a dual encoder", TypeError,
         lambda ctx: XMAdapterForImageClassification.from_clip(torch.nn.Linear(2, 2), CLASS_NAMES,
                                                               processor=ctx.processor)),
    Case("processor-without-tokenizer", "construction", "an image processor where a CLIPProcessor is needed",
         TypeError, lambda ctx: XMAdapterForImageClassification.from_clip(ctx.clip, CLASS_NAMES,
                                                                          processor=ctx.processor.image_processor)),
    Case("optimizer-training-free", "construction", "an optimiser for a training-free method", ValueError,
         lambda ctx: build_optimizer(ctx.empty, num_training_steps=10)),
    Case("search-without-cache-method", "construction", "a validation search for zero-shot", ValueError,
         lambda ctx: ctx.build("zero-shot").search_hyperparameters(ctx.raw, ctx.labels)),
    Case("search-before-build-cache", "construction", "a validation search before `build_cache`", ValueError,
         lambda ctx: ctx.empty.search_hyperparameters(ctx.raw, ctx.labels)),
    Case("config-without-backbone", "construction", "`cls(config)` with a 0.1.0 config (no recorded architecture)",
         ValueError, lambda ctx: XMAdapterForImageClassification(XMAdapterConfig(class_names=CLASS_NAMES))),
    # ---------------------------------------------------------------------------------------- saving, loading
    Case("save-onto-a-file", "files", "save_pretrained onto an existing file", OSError,
         lambda ctx: ctx.model.save_pretrained(ctx.root / "existing.json")),
    Case("load-directory-without-checkpoint", "files", "from_pretrained of a directory without a checkpoint",
         OSError, lambda ctx: XMAdapterForImageClassification.from_pretrained(ctx.root / "images",
                                                                              clip_model=ctx.clip)),
    Case("load-unexpected-argument", "files", "an unknown keyword argument to from_pretrained", TypeError,
         lambda ctx: XMAdapterForImageClassification.from_pretrained(ctx.root / "checkpoint", clip_model=ctx.clip,
                                                                     colour="red")),
    Case("load-config-claims-huge-cache", "files", "a config.json whose cache_size disagrees with the weights",
         ValueError, _load("claims-huge-cache", lambda ctx: dict(clip_model=ctx.clip, processor=ctx.processor))),
    Case("load-other-vision-tower", "files", "a backbone with the same text tower but another vision tower",
         ValueError, _load("checkpoint", lambda ctx: dict(clip_model=ctx.other_vision, processor=ctx.processor))),
    Case("load-incomplete-backbone", "files", "a backbone checkpoint with a weight missing", ValueError,
         _load("on-incomplete-clip", lambda ctx: {})),
    Case("load-damaged-weights", "files", "a model.safetensors whose tensor bytes were damaged (header intact)",
         OSError, _load("damaged", lambda ctx: dict(clip_model=ctx.clip, processor=ctx.processor))),
    Case("load-non-finite-weights", "files", "a model.safetensors holding a NaN (its digest matching)", ValueError,
         _load("non-finite", lambda ctx: dict(clip_model=ctx.clip, processor=ctx.processor))),
    Case("load-unknown-digest", "files", "a model.safetensors whose digest names an unknown algorithm", OSError,
         _load("other-digest", lambda ctx: dict(clip_model=ctx.clip, processor=ctx.processor))),
    Case("save-non-finite", "files", "save_pretrained of an adapter holding a NaN", ValueError, _save_a_nan),
    Case("load-integer-dtype", "files", "an integer `dtype` for from_pretrained", TypeError,
         _load("checkpoint", lambda ctx: dict(clip_model=ctx.clip, dtype=torch.int8))),
    Case("split-too-few-images", "files", "fewer than K images in a class for a few-shot split", ValueError,
         lambda ctx: sample_few_shot(ctx.dataset, shots=5)),
    Case("split-save-onto-existing", "files", "saving a split file over an existing file", OSError,
         lambda ctx: sample_few_shot(ctx.dataset, shots=1, val_shots=0).save(ctx.root / "existing.json")),
    Case("push-local-backbone", "files", "pushing an adapter whose backbone is a local path", ValueError,
         lambda ctx: _local_backbone_model(ctx).push_to_hub("user/adapter")),
]  # fmt: skip


def _local_backbone_model(ctx):
    model = copy.copy(ctx.model)
    model.config = copy.deepcopy(ctx.model.config)
    model.config.base_model_name_or_path = str(ctx.root / "checkpoint")
    return model


def _snapshot(ctx) -> tuple:
    files = {
        str(p.relative_to(ctx.root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ctx.root.rglob("*"))
        if p.is_file()
    }
    states = []
    for model in (ctx.model, ctx.empty, ctx.gda, ctx.single, ctx.pets, ctx.animals):
        states.append(({k: v.clone() for k, v in model.state_dict().items()}, model.config.to_json_string()))
    return files, states


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return Context(tmp_path_factory.mktemp("errors"))


def test_the_catalogue_has_at_least_30_cases():
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_a_clear_error_and_changes_nothing(context, case):
    before = _snapshot(context)
    with pytest.raises(case.error) as info:
        case.call(context)
    message = str(info.value)
    assert len(message) > 20, f"the message must say what was expected: {message!r}"
    files, states = _snapshot(context)
    assert files == before[0], "files the call did not mean to touch must stay byte-identical"
    for (state, config), (state0, config0) in zip(states, before[1]):
        assert config == config0
        assert state.keys() == state0.keys() and all(torch.equal(state[k], state0[k]) for k in state)


@contextlib.contextmanager
def _library_methods_only():
    """The registry as a fresh import has it: messages that list the methods do not depend on which test modules
    registered methods of their own (pytest imports them all before running any test)."""
    registry = method_base._REGISTRY
    saved = dict(registry)
    for name in set(saved) - set(METHODS):
        del registry[name]
    try:
        yield
    finally:
        registry.clear()
        registry.update(saved)


def render(context) -> str:
    with _library_methods_only():
        return _render(context)


def _render(context) -> str:
    lines = [
        "# Errors",
        "",
        "Every bad input below gets the error shown, raised before any state changes; files the call did not mean to",
        "touch stay byte-identical (`tests/test_errors.py` checks each case; this page is generated from it with",
        "`python tests/test_errors.py > docs/errors.md`). Paths are shown as `<tmp>`.",
        "",
    ]
    area = None
    for case in CASES:
        if case.area != area:
            area = case.area
            lines += [f"## {area}", "", "| case | input | error | message |", "|---|---|---|---|"]
        try:
            case.call(context)
            message = "(no error: this is a bug)"
        except case.error as error:
            message = str(error)
        message = re.sub(r"/[^ '\"]*/errors\d*", "<tmp>", message).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{case.id}` | {case.what} | `{case.error.__name__}` | {message} |")
        if case is CASES[-1] or CASES[CASES.index(case) + 1].area != area:
            lines.append("")
    return "\n".join(lines)


def test_docs_list_every_case_with_its_message(context):
    text = DOCS.read_text()
    for case in CASES:
        assert f"| `{case.id}` |" in text, f"docs/errors.md misses {case.id}: regenerate it"
    assert render(context).strip() == text.strip(), "docs/errors.md is stale: regenerate it (see its header)"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "errors0"
        root.mkdir()
        print(render(Context(root)))
