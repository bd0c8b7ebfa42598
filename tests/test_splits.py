import json
import os
from collections import Counter

import datasets
import numpy as np
import pytest

from xmadapter_hf.data.splits import FewShotSplit, sample_few_shot

# 5 classes with 12..20 images each, shuffled so that class rows are interleaved.
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [12, 15, 20, 13, 18])).tolist()


def _dataset(labels=LABELS, **extra):
    return datasets.Dataset.from_dict({"label": labels, **extra})


def _labels_of(indices, labels=LABELS):
    return [labels[i] for i in indices]


def test_exactly_k_per_class_and_disjoint():
    split = sample_few_shot(_dataset(), 4, seed=3, val_shots=2)
    assert Counter(_labels_of(split.train_indices)) == {c: 4 for c in range(5)}
    assert Counter(_labels_of(split.val_indices)) == {c: 2 for c in range(5)}
    assert len(set(split.train_indices)) == len(split.train_indices)
    assert not set(split.train_indices) & set(split.val_indices)
    assert (split.shots, split.val_shots, split.seed, split.num_classes) == (4, 2, 3, 5)
    assert split.with_replacement is False and split.label_column == "label"


def test_classes_in_sorted_order_and_default_val_shots():
    split = sample_few_shot(_dataset(), 8)
    assert split.val_shots == 4  # min(shots, 4)
    train_labels = _labels_of(split.train_indices)
    assert train_labels == sorted(train_labels)
    assert _labels_of(split.val_indices) == sorted(_labels_of(split.val_indices))
    assert sample_few_shot(_dataset(), 2).val_shots == 2
    assert sample_few_shot(_dataset(), 2, val_shots=0).val_indices == []


def test_seed_changes_the_draw_but_not_the_counts():
    a = sample_few_shot(_dataset(), 4, seed=0)
    b = sample_few_shot(_dataset(), 4, seed=1)
    assert a.train_indices != b.train_indices
    assert Counter(_labels_of(a.train_indices)) == Counter(_labels_of(b.train_indices))


def test_same_seed_gives_identical_file_bytes(tmp_path):
    sample_few_shot(_dataset(), 4, seed=11).save(tmp_path / "a.json")
    sample_few_shot(_dataset(), 4, seed=11).save(tmp_path / "b.json")
    data = (tmp_path / "a.json").read_bytes()
    assert data == (tmp_path / "b.json").read_bytes()
    payload = json.loads(data)
    assert payload["format"] == "xmadapter-few-shot-split" and payload["version"] == 1
    assert [k for k in payload if k not in ("format", "version")] == [
        "train_indices",
        "val_indices",
        "shots",
        "val_shots",
        "seed",
        "label_column",
        "with_replacement",
        "source_fingerprint",
        "num_classes",
    ]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]  # no temp file left behind


def test_round_trip(tmp_path):
    dataset = _dataset()
    split = sample_few_shot(dataset, 3, seed=5)
    split.save(tmp_path / "split.json")
    assert FewShotSplit.load(tmp_path / "split.json", dataset=dataset) == split
    assert FewShotSplit.load(str(tmp_path / "split.json")) == split


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "split.json"
    first = sample_few_shot(_dataset(), 3, seed=0)
    first.save(path)
    before = path.read_bytes()
    second = sample_few_shot(_dataset(), 3, seed=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        second.save(path)
    assert path.read_bytes() == before
    second.save(path, overwrite=True)
    assert FewShotSplit.load(path) == second
    assert sorted(os.listdir(tmp_path)) == ["split.json"]


def test_load_checks_the_fingerprint(tmp_path):
    path = tmp_path / "split.json"
    split = sample_few_shot(_dataset(), 3)
    split.save(path)
    other = _dataset(LABELS[::-1])
    with pytest.raises(ValueError) as info:
        FewShotSplit.load(path, dataset=other)
    assert split.source_fingerprint in str(info.value)
    assert other._fingerprint in str(info.value)


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="xmadapter-few-shot-split"):
        FewShotSplit.load(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        FewShotSplit.load(path)
    payload = sample_few_shot(_dataset(), 2).to_dict()
    del payload["shots"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="'shots'"):
        FewShotSplit.load(path)


def test_apply_selects_the_rows():
    dataset = _dataset(extra=list(range(len(LABELS))))
    split = sample_few_shot(dataset, 3, val_shots=1)
    train, val = split.apply(dataset)
    assert isinstance(train, datasets.Dataset) and isinstance(val, datasets.Dataset)
    assert (len(train), len(val)) == (15, 5)
    assert train["extra"][:] == split.train_indices
    assert val["label"][:] == _labels_of(split.val_indices)
    with pytest.raises(ValueError, match="rows"):
        split.apply(dataset.select(range(10)))
    with pytest.raises(TypeError, match="list"):
        split.apply(LABELS)


def test_too_few_images_raises():
    labels = [0] * 10 + [1] * 3 + [2] * 10
    with pytest.raises(ValueError) as info:
        sample_few_shot(labels, 2)  # needs 2 + 2
    message = str(info.value)
    assert "Class 1 has 3 images but 4 are needed" in message
    assert "with_replacement=True" in message and "val_shots" in message
    # Enough without validation images.
    assert len(sample_few_shot(labels, 2, val_shots=1).val_indices) == 3


def test_with_replacement_fills_short_classes():
    labels = [0] * 10 + [1] * 3 + [2] * 6
    split = sample_few_shot(labels, 5, val_shots=2, with_replacement=True)
    train = Counter(_labels_of(split.train_indices, labels))
    assert train == {0: 5, 1: 5, 2: 5}
    # Class 1 (3 images): each image used, then repeats; nothing is left for validation.
    class_1 = [i for i in split.train_indices if labels[i] == 1]
    assert set(class_1) == {10, 11, 12}
    # Class 2 (6 images): 5 distinct training images, the one left goes to validation.
    class_2 = [i for i in split.train_indices if labels[i] == 2]
    assert len(set(class_2)) == 5
    assert Counter(_labels_of(split.val_indices, labels)) == {0: 2, 2: 1}
    assert not set(split.train_indices) & set(split.val_indices)


def test_missing_class_raises_even_with_replacement():
    with pytest.raises(ValueError, match="Class 1 has 0 images"):
        sample_few_shot([0, 0, 2, 2], 1, val_shots=0, with_replacement=True)
    features = datasets.Features({"label": datasets.ClassLabel(names=["a", "b", "c"])})
    dataset = datasets.Dataset.from_dict({"label": [0, 0, 1, 1]}, features=features)
    with pytest.raises(ValueError, match="Class 2 has 0 images"):
        sample_few_shot(dataset, 1, val_shots=0)


def test_plain_sequences_and_fingerprint():
    split = sample_few_shot(LABELS, 3, seed=2)
    assert split.source_fingerprint.startswith("sha256:")
    assert split.train_indices == sample_few_shot(np.array(LABELS), 3, seed=2).train_indices
    # The draw depends on the labels and the seed, not on the container.
    assert split.train_indices == sample_few_shot(_dataset(), 3, seed=2).train_indices
    assert sample_few_shot(_dataset(), 3).source_fingerprint == _dataset()._fingerprint


def test_label_list_split_loads_against_dataset(tmp_path):
    path = tmp_path / "split.json"
    sample_few_shot(LABELS, 2).save(path)
    assert FewShotSplit.load(path, dataset=_dataset()).train_indices == sample_few_shot(LABELS, 2).train_indices
    with pytest.raises(ValueError, match="sha256:"):
        FewShotSplit.load(path, dataset=LABELS[1:])


def test_reads_only_the_label_column_of_a_formatted_dataset():
    dataset = datasets.Dataset.from_dict({"target": LABELS, "label": ["x"] * len(LABELS)}).with_format("numpy")
    split = sample_few_shot(dataset, 2, label_column="target")
    assert split.label_column == "target" and len(split.train_indices) == 10
    with pytest.raises(ValueError, match="no column 'labels'"):
        sample_few_shot(dataset, 2, label_column="labels")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"shots": 0}, ValueError, "shots must be positive"),
        ({"shots": 2.0}, TypeError, "shots must be an int"),
        ({"shots": True}, TypeError, "shots must be an int"),
        ({"shots": 2, "val_shots": -1}, ValueError, "val_shots"),
        ({"shots": 2, "seed": "0"}, TypeError, "seed"),
    ],
)
def test_argument_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        sample_few_shot(LABELS, **kwargs)


def test_bad_labels_and_datasets():
    with pytest.raises(ValueError, match="empty"):
        sample_few_shot([], 1)
    with pytest.raises(ValueError, match="empty"):
        sample_few_shot(_dataset([]), 1)
    with pytest.raises(ValueError, match="non-negative, got -1 at index 2"):
        sample_few_shot([0, 1, -1], 1)
    with pytest.raises(TypeError, match="integers"):
        sample_few_shot([0, 1.5], 1)
    with pytest.raises(TypeError, match="str"):
        sample_few_shot("0101", 1)
    with pytest.raises(TypeError, match="DatasetDict"):
        sample_few_shot(datasets.DatasetDict({"train": _dataset()}), 1)
