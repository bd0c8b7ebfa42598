"""Readers, templates, protocols and published numbers of ``xmadapter_hf.reproduce``, on miniature folders.

Every layout is generated in a temporary data root: a few tiny PNGs per class, CoOp's split files included.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from xmadapter_hf.data.defaults import dataset_defaults, list_datasets
from xmadapter_hf.reproduce import (
    DatasetLayoutError,
    base_novel_classes,
    base_to_novel_task,
    canonical_dataset_name,
    comparable,
    dataset_layout,
    domain_generalisation_task,
    expected_layout,
    few_shot_task,
    harmonic_mean,
    list_benchmark_datasets,
    list_template_sources,
    meta_adapter_task,
    prompt_templates,
    published_result,
    published_results,
    read_dataset,
    read_image_folder,
    stable_image_id,
)

# Images per class in train / val / test of the miniature CoOp-split datasets.
SIZES = {"train": 5, "val": 3, "test": 4}
# Class names as CoOp's split files hold them (several from Meta-Adapter's lists, to test its protocol).
COOP_CLASSES = {
    "caltech101": ["accordion", "airplane", "face", "leopard"],
    "dtd": ["paisley", "knitted", "braided", "dotted", "banded"],
    "eurosat": ["Annual Crop Land", "Forest", "River", "Sea or Lake"],
    "food101": ["apple_pie", "baby_back_ribs", "baklava"],
    "oxford_flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
    "oxford_pets": ["abyssinian", "american_bulldog", "maine_coon", "persian"],
    "stanford_cars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan"],
    "sun397": ["abbey", "indoor florist_shop", "skatepark"],
    "ucf101": ["Apply_Eye_Makeup", "Typing", "High_Jump", "Yo_Yo"],
}
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331", "n01498041", "n01514668"]
IMAGENET_NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"]
IMAGENET_NAMES += ["stingray", "rooster"]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


def _write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG)


def _make_coop(root: Path, name: str) -> None:
    layout = dataset_layout(name)
    folder = root / layout["folder"]
    images = folder if layout["paths_relative_to"] == "folder" else folder / layout["image_dir"]
    images.mkdir(parents=True, exist_ok=True)
    split = {}
    for split_name, count in SIZES.items():
        entries = []
        for label, class_name in enumerate(COOP_CLASSES[name]):
            for i in range(count):
                rel = f"{class_name.replace(' ', '_')}/{split_name}_{i}.png"
                if name == "stanford_cars":
                    rel = f"cars_{split_name}/{label:02d}{i:02d}.png"
                _write(images / rel)
                entries.append([rel, label, class_name])
        split[split_name] = entries
    (folder / layout["split_file"]).write_text(json.dumps(split))


def _make_fgvc(root: Path) -> None:
    folder = root / "fgvc_aircraft"
    variants = ["707-320", "A380", "F/A-18"]
    (folder / "images").mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    for split_name, count in SIZES.items():
        lines = []
        for label, variant in enumerate(variants):
            for i in range(count):
                image = f"{split_name[:2]}{label}{i:03d}"
                _write(folder / "images" / f"{image}.jpg")
                lines.append(f"{image} {variant}")
        (folder / f"images_variant_{split_name}.txt").write_text("\n".join(lines) + "\n")


def _classnames(path: Path, count: int = len(WNIDS)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS[:count], IMAGENET_NAMES)))


def _make_imagenet_family(root: Path) -> None:
    _classnames(root / "imagenet" / "classnames.txt")
    for sub, count in (("train", 6), ("val", 3)):
        for wnid in WNIDS:
            for i in range(count):
                _write(root / "imagenet" / "images" / sub / wnid / f"{wnid}_{i}.JPEG")
    for label in range(len(WNIDS)):
        for i in range(2):
            _write(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i}.jpeg")
    for wnid in WNIDS:
        _write(root / "imagenet-sketch" / "images" / wnid / "sketch_0.JPEG")
    for folder, sub, present in (
        ("imagenet-adversarial", "imagenet-a", [1, 4, 6]),
        ("imagenet-rendition", "imagenet-r", [0, 6]),
    ):
        for index in present:
            for i in range(2):
                _write(root / folder / sub / WNIDS[index] / f"{i}.jpg")
        (root / folder / sub / "README.txt").write_text("not a class")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name in COOP_CLASSES:
        _make_coop(root, name)
    _make_fgvc(root)
    _make_imagenet_family(root)
    return root


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("name", sorted(COOP_CLASSES))
def test_coop_split_readers(data_root, name):
    dataset = read_dataset(name, data_root, verify_files=True)
    names = COOP_CLASSES[name]
    assert dataset.name == name and dataset.source == dataset_layout(name)["split_file"]
    assert list(dataset.source_class_names) == names
    assert list(dataset.class_names) == [n.replace("_", " ") for n in names]
    for split, count in SIZES.items():
        part = dataset.split(split)
        assert len(part) == count * len(names)
        assert part.labels == [label for label in range(len(names)) for _ in range(count)]
        assert [r.index for r in part] == list(range(len(part)))
        assert all(Path(r.path).is_file() and r.path.endswith(r.relative_path) for r in part)


def test_class_names_cleaned_as_coop():
    # The last cleaning step both codebases apply when they build prompts.
    from xmadapter_hf.reproduce import clean_class_name

    assert clean_class_name("Apply_Eye_Makeup") == "Apply Eye Makeup"
    assert clean_class_name("indoor florist_shop") == "indoor florist shop"


def test_fgvc_reader(data_root):
    dataset = read_dataset("FGVCAircraft", data_root, verify_files=True)
    assert dataset.class_names == ("707-320", "A380", "F/A-18")
    assert {s: len(p) for s, p in dataset.splits.items()} == {s: 3 * n for s, n in SIZES.items()}
    assert dataset.split("test")[0].relative_path == "images/te0000.jpg"


def test_imagenet_reader(data_root):
    dataset = read_dataset("imagenet", data_root, verify_files=True)
    assert dataset.class_names == tuple(IMAGENET_NAMES) and dataset.class_keys == tuple(WNIDS)
    assert set(dataset.splits) == {"train", "test"}  # CoOp: ImageNet's val folder is the test set
    assert len(dataset.split("train")) == 6 * 8 and len(dataset.split("test")) == 3 * 8
    assert dataset.split("test")[3].relative_path == "images/val/n01443537/n01443537_0.JPEG"
    with pytest.raises(KeyError, match="has no 'val' split"):
        dataset.split("val")


def test_imagenet_variants_and_domain_generalisation(data_root):
    imagenet = read_dataset("imagenet", data_root)
    v2 = read_dataset("imagenetv2", data_root)
    assert v2.class_names == imagenet.class_names and set(v2.splits) == {"test"}
    assert v2.split("test").labels == [label for label in range(8) for _ in range(2)]
    sketch = read_dataset("ImageNet-Sketch", data_root)
    assert sketch.class_keys == imagenet.class_keys
    expected = {"imagenet_a": [1, 4, 6], "imagenet_r": [0, 6]}
    for name, ids in expected.items():
        target = read_dataset(name, data_root)  # classnames.txt comes from imagenet/, README.txt is skipped
        task = domain_generalisation_task(imagenet, target)
        assert task.source_label_ids == tuple(ids)
        assert task.class_names == tuple(IMAGENET_NAMES[i] for i in ids)
        assert task.test.labels == [label for label in range(len(ids)) for _ in range(2)]
    for target in (v2, sketch):
        assert domain_generalisation_task(imagenet, target).source_label_ids == tuple(range(8))
    with pytest.raises(ValueError, match="adapts on ImageNet"):
        domain_generalisation_task(v2, sketch)


def test_imagenet_names_from_clip_without_classnames_txt(tmp_path):
    # 1000 WordNet-id folders in imagenet/images/train and no classnames.txt: CLIP's names, in sorted-wnid order.
    wnids = [f"n{i:08d}" for i in range(1000)]
    for wnid in wnids:
        (tmp_path / "imagenet" / "images" / "train" / wnid).mkdir(parents=True)
    _write(tmp_path / "imagenet-rendition" / "imagenet-r" / wnids[2] / "a.jpg")
    target = read_dataset("imagenet_r", tmp_path)
    assert target.class_keys == (wnids[2],) and target.class_names == ("great white shark",)


def test_image_folder_reader_applies_coop_renames(tmp_path):
    raw = ["BACKGROUND_Google", "Faces", "Faces_easy", "airplanes", "ant"]
    for split in ("train", "validation", "test"):
        for class_folder in raw:
            _write(tmp_path / "caltech" / split / class_folder / "0.png")
    dataset = read_image_folder(tmp_path / "caltech", name="caltech101", verify_files=True)
    assert dataset.source_class_names == ("face", "airplane", "ant") and set(dataset.splits) == {
        "train",
        "val",
        "test",
    }
    assert dataset.split("val")[0].relative_path == "validation/Faces/0.png"
    cases = {
        "eurosat": (["AnnualCrop", "SeaLake"], ("Annual Crop Land", "Sea or Lake")),
        "ucf101": (["ApplyEyeMakeup", "Yo_Yo"], ("Apply_Eye_Makeup", "Yo_Yo")),
        "oxford_pets": (["Abyssinian"], ("abyssinian",)),
        "stanford_cars": (["AM General Hummer SUV 2000"], ("2000 AM General Hummer SUV",)),
    }
    for name, (folders, expected) in cases.items():
        for class_folder in folders:
            _write(tmp_path / name / "train" / class_folder / "0.png")
        assert read_image_folder(tmp_path / name, name=name).source_class_names == expected
    plain = read_image_folder(tmp_path / "ucf101")  # no name: folder names, no renames
    assert plain.name == "ucf101" and plain.class_names == ("ApplyEyeMakeup", "Yo Yo")


def test_to_hf_lazy_image_and_class_label(data_root):
    dataset = read_dataset("dtd", data_root)
    hf = dataset.to_hf()
    assert set(hf) == {"train", "val", "test"}
    test = hf["test"]
    assert isinstance(test.features["image"], datasets.Image)
    assert test.features["label"].names == list(dataset.class_names)
    assert test.column_names == ["image", "label", "image_id", "path"]
    assert test[0]["image"].size == (4, 4) and test[0]["image_id"] == dataset.split("test")[0].image_id


def test_missing_layout_errors_show_the_layout(tmp_path, data_root):
    with pytest.raises(DatasetLayoutError, match=r"dtd \(the dataset folder\) is missing") as err:
        read_dataset("dtd", tmp_path)
    assert "|-- split_zhou_DescribableTextures.json" in str(err.value)
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="split_zhou_DescribableTextures.json is missing"):
        read_dataset("dtd", tmp_path)
    (tmp_path / "fgvc_aircraft" / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="variants.txt is missing"):
        read_dataset("fgvc", tmp_path)
    _write(tmp_path / "imagenet-adversarial" / "imagenet-a" / WNIDS[0] / "0.jpg")
    with pytest.raises(DatasetLayoutError, match="classnames.txt is missing"):
        read_dataset("imagenet_a", tmp_path)
    with pytest.raises(DatasetLayoutError, match="none of the split folders"):
        read_image_folder(tmp_path / "dtd")
    with pytest.raises(ValueError, match="Unknown dataset 'cifar10'"):
        read_dataset("cifar10", data_root)
    assert expected_layout("caltech101", "/d").splitlines()[:2] == ["/d/caltech-101/", "|-- 101_ObjectCategories/"]


def test_malformed_split_file(tmp_path):
    (tmp_path / "eurosat" / "2750").mkdir(parents=True)
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": [["a.png", 0, "x"]]}))
    with pytest.raises(ValueError, match="'train', 'val' and 'test'"):
        read_dataset("eurosat", tmp_path)
    bad = {"train": [["a.png", 0, "x"]], "val": [["b.png", 0, "y"]], "test": []}
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="label 0 is named both"):
        read_dataset("eurosat", tmp_path)


def test_names_and_aliases():
    assert list_benchmark_datasets()[:11] == list_datasets()
    assert canonical_dataset_name("Flowers102") == "oxford_flowers"
    assert canonical_dataset_name("imagenet-adversarial") == "imagenet_a"


# ---------------------------------------------------------------- identities


def test_image_ids_are_stable_across_subsets_and_roots(data_root, tmp_path):
    dataset = read_dataset("ucf101", data_root)
    full = dataset.split("train")
    for shots, seed in ((1, 1), (2, 3)):
        for record in few_shot_task(dataset, shots, seed).train:
            assert full[record.index] == record
    record = full[0]
    assert record.image_id == stable_image_id("ucf101", record.relative_path)
    # The id depends on the relative path only, not on where the data root lies.
    _make_coop(tmp_path, "ucf101")
    assert read_dataset("ucf101", tmp_path).split("train").image_ids == full.image_ids
    assert len(set(full.image_ids)) == len(full)


# ---------------------------------------------------------------- protocols


def test_few_shot_sampling_is_deterministic_with_coop_validation(data_root):
    dataset = read_dataset("caltech101", data_root)
    task = few_shot_task(dataset, 2, seed=1)
    again = few_shot_task(read_dataset("caltech101", data_root), 2, seed=1)
    assert task.indices() == again.indices()
    assert task.indices()["train"] != few_shot_task(dataset, 2, seed=2).indices()["train"]
    assert task.train.labels == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (task.validation, task.val_source, task.val_shots) == ("coop", "val", 2)
    assert task.val.labels == task.train.labels  # min(K, 4) = 2 per class, from the val split
    val = few_shot_task(dataset, 8, seed=1).val  # min(8, 4) = 4 per class asked, the val split has 3: one repeat
    assert len(val) == 4 * 4 and len(set(val.image_ids)) == 3 * 4
    assert task.test == dataset.split("test")


def test_tip_adapter_validation_is_the_whole_val_split(data_root):
    dataset = read_dataset("oxford_pets", data_root)
    task = few_shot_task(dataset, 4, seed=3, validation="tip-adapter")
    assert task.val == dataset.split("val") and task.val_shots is None
    assert task.train == few_shot_task(dataset, 4, seed=3).train  # the rule changes validation only
    with pytest.raises(ValueError, match="validation must be one of"):
        few_shot_task(dataset, 4, seed=3, validation="test")


def test_imagenet_validation_comes_from_train_disjoint(data_root):
    dataset = read_dataset("imagenet", data_root)
    for validation in ("coop", "tip-adapter"):
        task = few_shot_task(dataset, 2, seed=1, validation=validation)
        assert (task.val_source, task.val_shots) == ("train", 2)
        assert len(task.train) == len(task.val) == 16
        assert not set(task.indices()["train"]) & set(task.indices()["val"])


def test_few_shot_repeats_only_for_short_classes(data_root):
    task = few_shot_task(read_dataset("dtd", data_root), 7, seed=1)  # 5 train images per class
    first = task.indices()["train"][:7]
    assert sorted(set(first)) == list(range(5)) and len(first) == 7


def test_base_to_novel_split(data_root):
    assert base_novel_classes(5) == ([0, 1, 2], [3, 4]) and base_novel_classes(4) == ([0, 1], [2, 3])
    task = few_shot_task(read_dataset("dtd", data_root), 2, seed=1)
    b2n = base_to_novel_task(task)
    assert b2n.base_label_ids == (0, 1, 2) and b2n.novel_label_ids == (3, 4)
    assert b2n.base.class_names == ("paisley", "knitted", "braided")
    assert b2n.novel.class_names == ("dotted", "banded")
    assert b2n.base.train.labels == [0, 0, 1, 1, 2, 2] and set(b2n.base.test.labels) == {0, 1, 2}
    assert b2n.novel.test.labels == [0] * 4 + [1] * 4
    assert [r.image_id for r in b2n.novel.test] == [r.image_id for r in task.test if r.label >= 3]
    assert harmonic_mean(80.0, 60.0) == pytest.approx(480 / 7) and harmonic_mean(0, 0) == 0.0


def test_meta_adapter_protocol(data_root):
    dtd = read_dataset("dtd", data_root)
    task = meta_adapter_task(dtd, shots=2, seed=1, require_all_classes=False)
    # Meta-Adapter's lists: paisley, knitted are base; braided, dotted, banded novel. Labels index all 5 classes.
    assert task.base_label_ids == (0, 1) and task.novel_label_ids == (2, 3, 4) and task.notes == ()
    assert task.train.labels == [0, 0, 1, 1] and task.support.labels == [c for c in range(5) for _ in range(2)]
    assert task.test.labels == [2, 2, 3, 3, 4, 4] and task.test.class_names == dtd.class_names
    assert {r.index for r in task.support} <= set(range(len(dtd.split("val"))))
    with pytest.raises(ValueError, match="missing from the dataset"):
        meta_adapter_task(dtd, shots=2)

    pets = read_dataset("oxford_pets", data_root)
    official = meta_adapter_task(pets, shots=2, require_all_classes=False)
    assert set(official.train.labels) == set(official.test.labels) == {0, 1, 2, 3} and len(official.notes) == 2
    plain = meta_adapter_task(pets, shots=2, official=False, require_all_classes=False)
    assert set(plain.train.labels) == {0, 1} and set(plain.test.labels) == {2, 3}
    eurosat = meta_adapter_task(read_dataset("eurosat", data_root), shots=2, require_all_classes=False)
    assert set(eurosat.train.labels) == {0, 1, 2, 3} and set(eurosat.test.labels) == {0, 2}  # Annual Crop, River
    ucf = meta_adapter_task(read_dataset("ucf101", data_root), shots=2, require_all_classes=False)
    assert len(ucf.support) == 4 * 16 and len(set(ucf.support.image_ids)) == 4 * 3  # 16 a class, from 3 val images
    assert ucf.base_label_ids == (0, 1) and set(ucf.test.labels) == {2, 3}

    imagenet = meta_adapter_task(read_dataset("imagenet", data_root), shots=2, require_all_classes=False)
    assert imagenet.novel_label_ids == (6,) and imagenet.test.labels == [6, 6, 6]  # every test image of class 6
    assert not {r.index for r in imagenet.train} & {r.index for r in imagenet.support}
    with pytest.raises(ValueError, match="covers"):
        meta_adapter_task(read_dataset("food101", data_root))


# ---------------------------------------------------------------- templates and published numbers


def test_prompt_templates():
    assert list_template_sources() == ["clip", "coop", "tip-adapter"]
    for name in list_benchmark_datasets()[:11]:
        assert prompt_templates(name, "tip-adapter") == dataset_defaults(name)["prompt_templates"]
        assert all("{}" in t for source in list_template_sources() for t in prompt_templates(name, source))
    assert len(prompt_templates("imagenet")) == 80 and len(prompt_templates("ucf101")) == 48
    assert prompt_templates("imagenet_r", "coop") == ["a photo of a {}."]
    with pytest.raises(ValueError, match="do not cover 'imagenet_a'"):
        prompt_templates("imagenet_a", "tip-adapter")


def test_published_numbers():
    tip = published_results(paper="tip-adapter", method="tip-adapter", dataset="imagenet")
    assert [(r.shots, r.accuracy) for r in tip] == [(16, 62.01), (8, 61.45), (4, 60.98), (2, 60.96), (1, 60.7)]
    assert all(r.selected_on_test for r in tip)  # main_imagenet.py searches on test
    assert published_result("tip-adapter", "dtd", 16).selected_on_test is False
    assert published_result("tip-adapter-f", "Flowers102", 1).accuracy == 79.98
    assert all(r.selected_on_test for r in published_results(method="tip-adapter-f"))
    assert published_result("clip-adapter", "stanford_cars", 8).selected_on_test is None
    assert published_result("zero-shot", "sun397", 0, paper="tip-adapter").accuracy == 58.52
    assert len(published_results(paper="tip-adapter")) == 11 * (1 + 3 * 5)
    mean = sum(r.accuracy for r in published_results(method="tip-adapter-f", shots=16)) / 11
    assert mean == pytest.approx(75.83, abs=0.005)  # the 11-dataset mean of Tip-Adapter's RN50 table

    meta = published_result("meta-adapter", "eurosat", 16, protocol="meta-adapter")
    assert meta.accuracy == 66.7 and meta.source["path"] == "README.md"
    assert any("OxfordPets and EuroSAT" in note for note in meta.notes)
    zero = {r.dataset: r.accuracy for r in published_results(paper="meta-adapter", method="zero-shot")}
    expected = {"sun397": 29.0, "ucf101": 21.1, "caltech101": 60.6, "dtd": 10.0, "fgvc": 0.4, "eurosat": 4.2}
    assert zero == {**expected, "oxford_pets": 84.0}
    assert published_result("zero-shot", "dtd", 0, protocol="meta-adapter", backbone="rn-50").accuracy == 10.0
    with pytest.raises(KeyError, match="published for this method and dataset"):
        published_result("tip-adapter-f", "dtd", 3)
    assert comparable(meta, backbone="RN50", protocol="meta-adapter")
    assert not comparable(meta, backbone="RN50", protocol="few-shot")
    assert not comparable(published_result("tip-adapter", "dtd", 16), backbone="ViT-B/16", protocol="few-shot")

    gda = published_results(paper="gda")  # mrflogs/ICLR24 exp.log, its "ours" rows
    assert len(gda) == 11 * 5 and {r.method for r in gda} == {"gda"}
    assert [r.accuracy for r in published_results(method="gda", dataset="EuroSAT")] == [86.12, 81.7, 75.4, 67.88, 58.3]
    assert sum(r.accuracy for r in published_results(method="gda", shots=16)) / 11 == pytest.approx(76.05, abs=0.005)
    assert {r.dataset for r in gda if r.selected_on_test} == {"imagenet"}  # val_features = test_features there
    assert published_result("gda", "dtd", 1).source["repository"] == "https://github.com/mrflogs/ICLR24"


def test_docs_list_every_layout_and_their_code_compiles():
    text = (Path(__file__).resolve().parents[1] / "docs" / "reproduce.md").read_text()
    for name in list_benchmark_datasets():
        layout = dataset_layout(name)
        assert f"`{name}`" in text and f"`{layout['folder']}/`" in text, name
        for entry in layout["required"]:  # e.g. "images/train/" is named in the docs as `images/train/`
            assert f"`{entry}" in text or f"`{Path(entry).name}" in text, (name, entry)
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        compile(block, "docs/reproduce.md", "exec")
