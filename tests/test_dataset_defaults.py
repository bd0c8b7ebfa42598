"""Tests of the per-dataset defaults shipped as package data."""

from __future__ import annotations

import pytest

from xmadapter_hf.data.defaults import dataset_defaults, list_datasets
from xmadapter_hf.training.search import residual_ratio_grid, sharpness_grid

DATASETS = [
    "caltech101",
    "dtd",
    "eurosat",
    "fgvc",
    "food101",
    "imagenet",
    "oxford_flowers",
    "oxford_pets",
    "stanford_cars",
    "sun397",
    "ucf101",
]
FIELDS = {
    "search_scale": list,
    "search_step": list,
    "init_sharpness": float,
    "init_residual_ratio": float,
    "augment_views": int,
    "learning_rate": float,
    "epochs": int,
    "prompt_templates": list,
}
# Tip-Adapter's configs: search_scale [beta_max, alpha_max] and initial alpha.
APPENDIX = {
    "caltech101": ([12, 5], 3),
    "dtd": ([13, 13], 2),
    "eurosat": ([12, 10], 2),
    "fgvc": ([30, 30], 5),
    "food101": ([10, 10], 1.17),
    "imagenet": ([7, 3], 1.17),
    "oxford_flowers": ([50, 50], 10),
    "oxford_pets": ([7, 3], 1.17),
    "stanford_cars": ([20, 10], 3),
    "sun397": ([12, 10], 1.17),
    "ucf101": ([7, 3], 3),
}


def test_list_datasets() -> None:
    assert list_datasets() == DATASETS


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_has_every_field(name: str) -> None:
    defaults = dataset_defaults(name)
    assert set(defaults) == set(FIELDS)
    for field, kind in FIELDS.items():
        assert isinstance(defaults[field], kind), field
    scale, alpha = APPENDIX[name]
    assert defaults["search_scale"] == scale and defaults["init_residual_ratio"] == alpha
    assert defaults["search_step"] == [200, 20]
    assert defaults["init_sharpness"] == 1.0 and defaults["augment_views"] == 10
    assert defaults["learning_rate"] == 1e-3
    assert defaults["epochs"] == (100 if name == "eurosat" else 20)
    assert defaults["prompt_templates"] and all("{}" in t for t in defaults["prompt_templates"])
    # The values plug straight into the search grids.
    assert len(sharpness_grid(defaults["search_scale"][0], defaults["search_step"][0])) == 200
    assert len(residual_ratio_grid(defaults["search_scale"][1], defaults["search_step"][1])) == 20


def test_imagenet_values() -> None:
    defaults = dataset_defaults("imagenet")
    assert defaults["search_scale"] == [7.0, 3.0]
    assert defaults["init_residual_ratio"] == 1.17
    assert defaults["prompt_templates"] == [
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ]


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("oxford_pets", "a photo of a {}, a type of pet."),
        ("dtd", "{} texture."),
        ("eurosat", "a centered satellite photo of {}."),
        ("ucf101", "a photo of a person doing {}."),
        ("caltech101", "a photo of a {}."),
        ("stanford_cars", "a photo of a {}."),
        ("sun397", "a photo of a {}."),
        ("food101", "a photo of {}, a type of food."),
        ("oxford_flowers", "a photo of a {}, a type of flower."),
        ("fgvc", "a photo of a {}, a type of aircraft."),
    ],
)
def test_single_templates(name: str, template: str) -> None:
    assert dataset_defaults(name)["prompt_templates"] == [template]


def test_names_are_case_insensitive() -> None:
    assert dataset_defaults("ImageNet") == dataset_defaults("imagenet")
    assert dataset_defaults("OXFORD_PETS") == dataset_defaults("oxford_pets")


def test_unknown_name_raises_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="caltech101.*ucf101"):
        dataset_defaults("cifar10")
    with pytest.raises(TypeError, match="str"):
        dataset_defaults(None)


def test_returns_a_copy() -> None:
    first = dataset_defaults("imagenet")
    first["search_scale"][0] = 99.0
    first["prompt_templates"].append("{}")
    first["epochs"] = 1
    second = dataset_defaults("imagenet")
    assert second["search_scale"] == [7.0, 3.0]
    assert len(second["prompt_templates"]) == 7
    assert second["epochs"] == 20
