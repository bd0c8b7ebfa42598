"""The architecture of issue 13, checked: nothing outside `methods/` names a method, a method is one file, the config
validates every field (the methods' included) with `huggingface_hub`'s strict dataclasses, `import xmadapter_hf` stays
light, and the model's output is a mechanical mapping of the method's."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub.dataclasses import strict, validated_field
from huggingface_hub.errors import StrictDataclassFieldValidationError

import xmadapter_hf
from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification, XMAdapterImageClassifierOutput
from xmadapter_hf.methods import METHODS, MethodOutput, registered_methods
from xmadapter_hf.methods.clip_adapter import ClipAdapterFields
from xmadapter_hf.methods.meta_adapter import MetaAdapterFields
from xmadapter_hf.methods.multimodal import MultiModalAdapterFields

PACKAGE = Path(xmadapter_hf.__file__).parent


def _sources(exclude: str | None = None) -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if exclude is None or exclude not in p.relative_to(PACKAGE).parts]


def _named_methods(path: Path, names: set[str]) -> list[str]:
    """String constants of a file equal to a method name, but the transformers model type (`model_type`,
    `base_model_prefix`: the architecture's name, which the XMAdapter method shares) and the command's name (`PROG`
    of `cli/`: `xmadapter`, the console script)."""
    tree = ast.parse(path.read_text())
    model_type = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", "") in ("model_type", "base_model_prefix", "PROG") for t in node.targets)
    }
    return [
        f"{path.relative_to(PACKAGE)}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in model_type
    ]


def test_no_method_is_named_outside_methods():
    """`reproduce/` is left out: it names the papers' protocols (Tip-Adapter's validation rule), not our methods."""
    names = set(registered_methods())
    assert set(METHODS) <= names and len(METHODS) == 8
    named = [
        hit
        for path in _sources(exclude="methods")
        if "reproduce" not in path.parts
        for hit in _named_methods(path, names)
    ]
    # the config's one default (`method: str = validated_field(..., default="xmadapter")`) aside
    assert named == ["configuration_xmadapter.py: 'xmadapter'"], named


def test_no_method_class_is_used_outside_methods():
    """No module outside `methods/` refers to a registered method's class (an import, an `isinstance`): it asks the
    method through its hooks (`export.py` through `export_constants` and `export_forward`, for instance)."""
    from xmadapter_hf.methods import get_method_class

    classes = {get_method_class(name).__name__ for name in METHODS}
    used = [
        f"{path.relative_to(PACKAGE)}:{node.lineno}: {getattr(node, 'id', None) or node.name}"
        for path in _sources(exclude="methods")
        for node in ast.walk(ast.parse(path.read_text()))
        if (isinstance(node, ast.Name) and node.id in classes)
        or (isinstance(node, ast.alias) and node.name in classes)
    ]
    assert not used, used


def test_nothing_compares_config_method():
    compared = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(side, ast.Attribute) and side.attr == "method" for side in sides):
                    compared.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not compared, compared


@pytest.mark.parametrize(
    "fields,home",
    [
        (ClipAdapterFields, "clip_adapter.py"),
        (MultiModalAdapterFields, "multimodal.py"),
        (MetaAdapterFields, "meta_adapter.py"),
    ],
)
def test_a_method_is_one_file(fields, home):
    """Its config fields, module and recipe live in its own file: no other file of the package mentions a field."""
    for field in dataclasses.fields(fields):
        elsewhere = [p.name for p in _sources() if p.name != home and field.name in p.read_text()]
        assert not elsewhere, f"{field.name} is mentioned in {elsewhere}"
    config = XMAdapterConfig(class_names=["a", "b"])
    assert all(hasattr(config, field.name) for field in dataclasses.fields(fields))


def test_import_is_light():
    """`import xmadapter_hf` imports neither matplotlib nor (until the training path is used) datasets."""
    code = (
        "import sys, xmadapter_hf\n"
        "assert 'matplotlib' not in sys.modules and 'datasets' not in sys.modules, 'imported too much'\n"
        "xmadapter_hf.fit\n"
        "assert 'datasets' in sys.modules\n"
        "print(sorted(set(xmadapter_hf.__all__) - set(dir(xmadapter_hf))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", "every name of __all__ is importable"


#: No module of the package may reach this many lines (one module per concern; issue 25).
MAX_MODULE_LINES = 500


def test_no_module_reaches_500_lines():
    counts = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in _sources()}
    too_long = {name: count for name, count in counts.items() if count >= MAX_MODULE_LINES}
    assert not too_long, f"modules of {MAX_MODULE_LINES} lines or more (split them by concern): {too_long}"
    assert len(counts) > 50 and "modeling_xmadapter.py" in counts, "the scan sees the whole package"


def test_split_modules_keep_their_import_paths():
    """The modules split in issue 25 still export, from their old paths, every name they exported before."""
    from xmadapter_hf.reproduce import harness
    from xmadapter_hf.training import search

    kept = {
        search: ["AUTO_COARSE_STEPS", "AUTO_FINE_STEPS", *search.__all__],
        harness: ["FILES", "markdown_table", "summarize", "write_reports", *harness.__all__],
    }
    missing = [f"{module.__name__}.{name}" for module, names in kept.items() for name in names
               if not hasattr(module, name)]  # fmt: skip
    assert not missing, missing
    assert set(search.__all__) >= {"SearchResult", "search_hyperparameters", "search_on_validation", "sharpness_grid"}
    assert set(harness.__all__) >= {"FeatureStore", "META_ADAPTER_RULE", "ReproduceError", "run_protocol"}


# --------------------------------------------------------------------------------------------- strict config
@pytest.mark.parametrize(
    "field,value,error",
    [
        ("sharpness", "x", TypeError),  # a method's field, given the wrong type
        ("mma_mask", "causal", ValueError),  # a method's field, a value it does not allow
        ("use_text_cache", 1, TypeError),
        ("cache_dtype", "int8", ValueError),  # a shared field
        ("seed", 1.5, TypeError),
        ("class_names", ["a", "a"], ValueError),
    ],
)
def test_a_field_given_a_wrong_value_raises_at_assignment_and_construction(field, value, error):
    config = XMAdapterConfig(class_names=["a", "b"])
    before = getattr(config, field)
    with pytest.raises(error, match=f"`{field}`") as raised:
        setattr(config, field, value)
    assert isinstance(raised.value, StrictDataclassFieldValidationError)  # huggingface_hub's error type too
    assert getattr(config, field) == before, "a refused assignment changes nothing"
    with pytest.raises(error, match=f"`{field}`"):
        XMAdapterConfig(**{"class_names": ["a", "b"], field: value})


def test_a_registered_method_s_fields_are_config_fields():
    from xmadapter_hf.methods import AdapterMethod, MethodOutput, register_method

    def positive(value):
        if value <= 0:
            raise ValueError(f"`probe_scale` must be > 0, got {value}.")

    @strict
    @dataclasses.dataclass(kw_only=True)
    class ScaledFields:
        probe_scale: float = validated_field(positive, default=2.0)

    @register_method("test-scaled-zero-shot")
    class ScaledZeroShot(AdapterMethod):
        config_fields = ScaledFields

        def forward(self, image_embeds, state, labels=None, cache_index=None):
            logits = self.config.probe_scale * image_embeds @ state.class_embeds.t()
            return MethodOutput(logits, logits)

    config = XMAdapterConfig(method="test-scaled-zero-shot", class_names=["a", "b"], probe_scale=3.0)
    assert config.probe_scale == 3.0 and XMAdapterConfig(class_names=["a"]).probe_scale == 2.0
    assert "probe_scale" in XMAdapterConfig.method_fields()
    with pytest.raises(ValueError, match="`probe_scale` must be > 0"):
        config.probe_scale = -1.0
    with pytest.raises(TypeError, match="`probe_scale`"):
        XMAdapterConfig(class_names=["a"], probe_scale="big")
    assert XMAdapterConfig.from_dict(config.to_dict()).probe_scale == 3.0
    with pytest.raises(ValueError, match="declares the config field `probe_scale`"):

        @register_method("test-another-scale")
        class Another(AdapterMethod):
            config_fields = strict(dataclasses.make_dataclass("Other", [("probe_scale", float, 1.0)]))


def test_the_model_output_maps_the_method_output_by_name():
    method_fields = {field.name for field in dataclasses.fields(MethodOutput)}
    model_fields = {field.name for field in dataclasses.fields(XMAdapterImageClassifierOutput)}
    assert method_fields <= model_fields and model_fields - method_fields == {"loss", "image_embeds", "hidden_states",
                                                                              "attentions"}  # fmt: skip


def test_the_cache_layout_follows_the_labels(make_model, cache_embeds):
    """Sorted K-per-class caches sum classes by reshape; any other layout (or a loaded one) by index-add, equally."""
    model = make_model("tip-adapter", sharpness=5.0)
    raw, labels = cache_embeds
    assert model.cache_shots == 4
    queries = raw + 0.05
    with torch.no_grad():
        balanced = model(image_embeds=queries).logits
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        model.set_cache(raw[order], labels[order])
        assert model.cache_shots is None
        torch.testing.assert_close(model(image_embeds=queries).logits, balanced, atol=1e-6, rtol=1e-6)
        state = model.state_dict()
        model.set_cache(raw, labels)
        model.load_state_dict(state)  # a loaded cache: the layout is read again
        assert model.cache_shots is None
    assert isinstance(XMAdapterForImageClassification, type)


def test_the_trainer_example_builds_no_optimiser_and_no_helpers_of_its_own():
    """examples/train_trainer.py takes the optimiser from `recipe_arguments` + `XMAdapterTrainer`, and the examples
    use the library's datasets, sampler and epoch callback instead of defining their own."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    trainer_example = ast.parse((examples / "train_trainer.py").read_text())
    names = {node.id for node in ast.walk(trainer_example) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(trainer_example) if isinstance(node, ast.Attribute)}
    assert not names & {"optim", "build_optimizer", "create_optimizer", "get_scheduler", "AdamW", "Adam"}, names
    for path in sorted(examples.glob("*.py")):
        classes = [node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)]
        bases = {ast.unparse(base) for node in classes for base in node.bases}
        assert not bases & {"Dataset", "torch.utils.data.Dataset", "Sampler"}, f"{path.name}: {bases}"
        assert not {node.name for node in classes} & {"SetEpoch", "EmbeddingItems", "PixelItems"}, path.name
