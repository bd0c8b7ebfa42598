"""The `xmadapter` command line, run as a user runs it, on the demo CLIP and the demo images.

Good paths: `fit` on an exported demo folder, then `eval`, `predict`, `search`, `export` and `push` (to the loopback
fake Hub of `hub_server.py`) on the adapter it wrote, and a reduced `demo`; `add-classes` and `--support` on small
adapters that `fit` writes (the grown adapter, nothing overwritten, the Python API's top-1). Bad input: every
subcommand at least once, each exiting non-zero with exactly one line on stderr. `push` runs as a fresh `python -m
xmadapter_hf` process (the console script runs from the installed wheel in test_packaging.py); the `add-classes` and
`--support` tests call `main` in the test's process; every other command line runs in a process forked from one
that imported the package once (`cli_batch.py`), as each would pay the ~4 s import of torch and transformers
otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hub_server import hub_env, local_hub_fixture  # noqa: F401
from PIL import Image

from xmadapter_hf.demo import DEMO_CLASSES, export_images

ROOT = Path(__file__).resolve().parents[1]
COMMAND_NAMES = (
    "demo",
    "fit",
    "eval",
    "predict",
    "search",
    "add-classes",
    "push",
    "export",
    "reproduce",
    "serve",
    "space",
)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _run(command: list[str], env=ENV) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _batch(stages: list[dict[str, list]], folder: Path) -> dict[str, subprocess.CompletedProcess]:
    """Each command line (without the leading `xmadapter`) in its own process forked after one shared import; the
    command lines of a stage run concurrently, the stages one after the other."""
    folder.mkdir(parents=True, exist_ok=True)
    stages = [{k: [str(a) for a in v] for k, v in stage.items()} for stage in stages]
    (folder / "spec.json").write_text(json.dumps({"out_dir": str(folder), "stages": stages}))
    driver = _run([sys.executable, str(ROOT / "tests" / "cli_batch.py"), str(folder / "spec.json")],
                  env={**ENV, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert driver.returncode == 0, driver.stderr[-3000:]
    return {
        key: subprocess.CompletedProcess(
            ["xmadapter", *argv],
            int((folder / f"{key}.status").read_text()),
            (folder / f"{key}.out").read_text(),
            (folder / f"{key}.err").read_text(),
        )  # fmt: skip
        for stage in stages
        for key, argv in stage.items()
    }


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.args, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    return export_images(tmp_path_factory.mktemp("demo") / "images", shots=4, seed=0)


def _image_folder(root: Path, names=("cat", "dog"), images: int = 3, rng=None) -> Path:
    """`root/<name>/<i>.png`: `images` random 24 x 24 RGB images per class."""
    rng = np.random.default_rng(0) if rng is None else rng
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(images):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _folder_with_an_empty_class_and_an_rgba_image(root: Path) -> Path:
    rng = np.random.default_rng(0)
    _image_folder(root, rng=rng)
    Image.fromarray(rng.integers(0, 255, (24, 24, 4), dtype=np.uint8), "RGBA").save(root / "cat" / "rgba.png")
    (root / "empty bird").mkdir()
    return root


@pytest.fixture(scope="module")
def batch(demo_folder, tmp_path_factory):
    """`fit` and a reduced `demo`, then every other command on the fitted adapter and bad input to every command:
    ({key: result}, the work folder, the own folder with an empty class)."""
    work = tmp_path_factory.mktemp("cli")
    adapter = work / "adapter"
    own = _folder_with_an_empty_class_and_an_rgba_image(work / "own")
    image = demo_folder / "test" / "red zigzag" / "000.png"
    first = {
        "fit": ["fit", "--data", demo_folder, "--shots", 4, "--augment-views", 2, "--epochs", 5, "--test", "test",
                "--output", adapter],
        # the demo in CI: 1 and 16 shots, two seeds, 2 views (see test_reduced_demo_...)
        "demo": ["demo", "--shots", 1, 16, "--methods", "zero-shot", "tip-adapter-f", "xmadapter", "--augment-views",
                 2, "--seed", 0, 1, "--output", work / "demo"],
    }  # fmt: skip
    second = {
        # with 2 worker processes: fit's test score (a small job at 32 px: no workers by default) must not change
        "eval": ["eval", adapter, "--data", demo_folder, "--json", "--plot", work / "cm.png", "--workers", 2],
        "predict": ["predict", adapter, image, demo_folder / "test" / "blue grid", "--json", "--top-k", 2],
        "search": ["search", adapter, "--data", demo_folder, "--output", work / "searched"],
        "export": ["export", adapter, work / "onnx", "--what", "head"],
        "bad demo": ["demo", "--methods", "no-such-method"],
        "bad fit": ["fit", "--data", own, "--output", work / "out"],
        "bad fit data": ["fit", "--data", work / "missing", "--output", work / "out"],
        "bad eval": ["eval", demo_folder, "--data", demo_folder],  # a folder of images is no adapter
        "bad predict": ["predict", adapter, work / "missing.png"],
        "bad search": ["search", work, "--data", demo_folder, "--in-place"],
        "search without output": ["search", adapter, "--data", demo_folder],
        "bad export folder": ["export", adapter, demo_folder, "--what", "head"],  # not empty
        "bad shots": ["fit", "--data", demo_folder, "--shots", "abc", "--output", work / "out"],
        "bad hub name": ["fit", "--data", "no-such-user/no-such-dataset", "--output", work / "out"],  # offline
        "bad push": ["push", adapter, "me/adapter"],  # a local backbone and no --base-model-id
        "bad add-classes": ["add-classes", adapter, "--support", work / "missing", "--output", work / "grown"],
        "bad export": ["export", adapter, work / "onnx-bad", "--what", "everything"],
        "bad space": ["space", adapter, "--output", demo_folder],  # not empty
        "bad push space": ["push", adapter, "me/adapter", "--base-model-id", "me/clip", "--space", "no-namespace"],
        "debug fit data": ["--debug", "fit", "--data", work / "missing", "--output", work / "out"],
        **{f"help {name}": [name, "--help"] for name in COMMAND_NAMES},
    }
    third = {"search in place": ["search", work / "searched", "--data", demo_folder, "--in-place"]}  # search's copy
    return _batch([first, second, third], work / "results"), work, own


def test_fit_writes_the_adapter_its_split_and_a_report_naming_each_split(batch, demo_folder):
    results, work, _ = batch
    output = work / "adapter"
    stdout = _ok(results["fit"])
    assert f"validation accuracy (the validation split of the image folder {demo_folder}, 256 images)" in stdout
    assert f"test accuracy (the test split of the image folder {demo_folder}, 400 images)" in stdout
    assert sorted(p.name for p in output.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "report.json", "split.json",
    ]  # fmt: skip
    report = json.loads((output / "report.json").read_text())
    assert report["validation"]["images"] == 256 and report["test"]["images"] == 400
    assert report["validation"]["used_for_search"] is True
    assert report["test"]["accuracy"] > report["test"]["zero_shot_accuracy"]  # measured 0.52 vs 0.44
    config = json.loads((output / "config.json").read_text())
    assert config["class_names"] == list(DEMO_CLASSES) and config["shots"] == 4
    assert config["temperature"] > 0 and report["fit"]["temperature"] == config["temperature"]  # fitted on validation


def test_eval_predict_search_export_on_the_fitted_adapter(batch, demo_folder):
    results, work, _ = batch
    adapter = work / "adapter"
    evaluation = json.loads(_ok(results["eval"]))
    assert evaluation["images"] == 400 and evaluation["data"].startswith("the test split")
    assert set(evaluation["per_class"]) == set(DEMO_CLASSES)
    assert sum(map(sum, evaluation["confusion_matrix"])) == 400
    assert evaluation["accuracy"] == pytest.approx(
        json.loads((adapter / "report.json").read_text())["test"]["accuracy"]
    )
    assert (work / "cm.png").stat().st_size > 1000

    predictions = json.loads(_ok(results["predict"]))
    assert len(predictions) == 1 + 25 and predictions[0]["image"] == str(
        demo_folder / "test" / "red zigzag" / "000.png"
    )
    temperature = json.loads((adapter / "config.json").read_text())["temperature"]
    for entry in predictions:
        assert len(entry["predictions"]) == 2 and 0 < entry["affinity_ratio"] < 1
        assert entry["temperature"] == temperature and sum(p["score"] for p in entry["predictions"]) <= 1 + 1e-6
        assert entry["predictions"][0]["logit"] >= entry["predictions"][1]["logit"]  # ranked by logit
        for p in entry["predictions"]:  # XMAdapter's logit: zero-shot + image cache + text cache + Gaussian term
            assert set(p["parts"]) == {"zero_shot", "image_cache", "text_cache", "gaussian"}
            assert sum(p["parts"].values()) == pytest.approx(p["logit"], abs=1e-4)

    searched = _ok(results["search"])
    assert "searched on the validation split of the image folder" in searched and "residual ratio" in searched
    config = json.loads((work / "searched" / "config.json").read_text())
    assert config["search_result"]["split"] == "validation" and config["search_result"]["num_validation"] == 256
    assert config["temperature"] > 0 and "scores' temperature refitted on the same split" in searched
    # the library's search, as `fit` ran it (a default --search-step of 200 20 chose Tip-Adapter's grid before)
    assert config["search_result"]["search_grid"] == "auto" and "256 images, auto grid)" in searched
    assert (work / "searched" / "split.json").read_bytes() == (adapter / "split.json").read_bytes()
    in_place = _ok(results["search in place"])  # on the copy, after the lines above read it
    assert in_place.rstrip().endswith(f"wrote {work / 'searched'} (in place)") and "auto grid" in in_place
    assert sorted(p.name for p in (work / "searched").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "split.json",
    ]  # fmt: skip

    assert "head:" in _ok(results["export"]) and (work / "onnx" / "head.onnx").is_file()


def test_push_sends_the_adapter_with_the_given_base_model_id_and_its_space(batch, local_hub, tmp_path):  # noqa: F811
    import gradio

    from xmadapter_hf import __version__

    _, work, _ = batch
    environment = {**hub_env(local_hub, tmp_path / "hf-home"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "xmadapter_hf", "push", str(work / "adapter"), "me/demo-adapter"]
    result = _run(command + ["--base-model-id", "local-user/demo-clip", "--space", "me/demo-space"], environment)
    out = _ok(result)
    assert "pushed" in out and "pushed its Space to me/demo-space" in out
    files = local_hub.files("me/demo-adapter")
    assert set(files) >= {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
    assert json.loads(files["config.json"])["base_model_name_or_path"] == "local-user/demo-clip"
    # the Space, next to the model: it loads the pushed repo, and the two link to each other
    space = local_hub.files("me/demo-space", repo_type="space")
    assert set(space) == {"app.py", "requirements.txt", "README.md"}  # no copy of the adapter: it is on the Hub
    assert "ADAPTER = 'me/demo-adapter'" in space["app.py"].decode()
    assert "from xmadapter_hf.app import run_space" in space["app.py"].decode()
    assert f"xmadapter-hf[app]=={__version__}" in space["requirements.txt"].decode().splitlines()
    readme = space["README.md"].decode()
    assert f"sdk: gradio\nsdk_version: {gradio.__version__}\napp_file: app.py\n" in readme
    assert "models:\n- me/demo-adapter\n" in readme and f"({local_hub.endpoint}/me/demo-adapter)" in readme
    assert f"the Space [me/demo-space]({local_hub.endpoint}/spaces/me/demo-space)" in files["README.md"].decode()


def _one_line_error(result: subprocess.CompletedProcess, command: str) -> str:
    assert result.returncode != 0, (result.args, result.stdout[-2000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1, (result.args, result.stderr[-3000:])
    assert lines[0].startswith(f"xmadapter {command}: error: "), lines[0]
    return lines[0]


def test_bad_input_ends_every_command_with_one_line(batch):
    results, work, own = batch
    assert "invalid choice: 'no-such-method'" in _one_line_error(results["bad demo"], "demo")
    assert f"'{own / 'empty bird'}' holds no images" in _one_line_error(results["bad fit"], "fit")
    assert "missing': no such folder" in _one_line_error(results["bad fit data"], "fit")
    assert "is not an adapter directory: it has no config.json" in _one_line_error(results["bad eval"], "eval")
    assert "missing.png': no such file" in _one_line_error(results["bad predict"], "predict")
    assert "not an adapter directory: it has no config.json" in _one_line_error(results["bad search"], "search")
    assert "--base-model-id" in _one_line_error(results["bad push"], "push")
    assert "--support " in (line := _one_line_error(results["bad add-classes"], "add-classes"))
    assert "missing': no such folder" in line
    assert "invalid choice: 'everything'" in _one_line_error(results["bad export"], "export")
    line = _one_line_error(results["bad space"], "space")
    assert "images' is not empty: pass --overwrite to write into it" in line
    assert "--space must be a Space id, user/name; got 'no-namespace'" in _one_line_error(
        results["bad push space"], "push"
    )
    line = _one_line_error(results["search without output"], "search")
    assert "pass --output DIR to write the searched adapter to a new folder, or --in-place" in line
    line = _one_line_error(results["bad export folder"], "export")
    assert "images' is not empty: pass --overwrite to write into it" in line
    assert "--shots: expected a positive integer, got 'abc'" in _one_line_error(results["bad shots"], "fit")
    line = _one_line_error(results["bad hub name"], "fit")  # HF_HUB_OFFLINE=1: the cache only, and both readings
    assert "'no-such-user/no-such-dataset': no such folder here, and as a Hub dataset name: not in the local" in line
    assert not (work / "out").exists() and not (work / "onnx-bad").exists() and not (work / "grown").exists()


def test_every_command_has_help_and_debug_shows_the_traceback(batch):
    from xmadapter_hf.cli import COMMANDS

    results, _, _ = batch
    assert [command.name for command in COMMANDS] == list(COMMAND_NAMES)
    for name in COMMAND_NAMES:
        usage = _ok(results[f"help {name}"])
        assert (
            usage.startswith(f"usage: xmadapter {name} ")
            and "--debug" in usage
            and results[f"help {name}"].stderr == ""
        )
    debug = results["debug fit data"]
    assert debug.returncode == 1 and debug.stderr.startswith("Traceback (most recent call last):")
    assert "CLIError: --data " in debug.stderr.splitlines()[-1] and "missing': no such folder" in debug.stderr


def test_fit_on_an_own_folder_with_an_rgba_image_gets_the_labels_right(tmp_path, capsys):
    """Without the empty class folder, the same folder fits (the RGBA image read as RGB), labels from the folders;
    a class too small for K shots plus a validation image is named, and --no-search fits it with a warning."""
    from safetensors.torch import load_file

    from xmadapter_hf.cli import main

    folder = _folder_with_an_empty_class_and_an_rgba_image(tmp_path / "own")
    (folder / "empty bird").rmdir()
    common = ["fit", "--data", str(folder), "--method", "tip-adapter", "--augment-views", "1", "--no-progress"]
    assert main([*common, "--shots", "2", "--output", str(tmp_path / "adapter")]) == 0
    config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert config["class_names"] == ["cat", "dog"]
    assert load_file(tmp_path / "adapter" / "model.safetensors")["cache_labels"].tolist() == [0, 0, 1, 1]
    split = json.loads((tmp_path / "adapter" / "split.json").read_text())
    # cat has 4 images (rows 0-3, the RGBA one included), dog 3 (rows 4-6): 2 shots + 1 validation image each
    assert all(i < 4 for i in split["train_indices"][:2]) and all(i >= 4 for i in split["train_indices"][2:])
    assert len(split["val_indices"]) == 2
    capsys.readouterr()

    assert main([*common, "--shots", "3", "--output", str(tmp_path / "short")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "class 'dog' has 3 images, too few for 3 shots plus 1 validation image(s)" in line
    assert "--validation DIR" in line and "--no-search" in line and not (tmp_path / "short").exists()

    assert main([*common, "--shots", "3", "--no-search", "--output", str(tmp_path / "unsearched")]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "warning: --no-search: tip-adapter keeps residual ratio 1.0 and sharpness 1.0 (the config's defaults), not "
        "values chosen on validation images"
    ]
    assert "validation: none" in captured.out
    assert json.loads((tmp_path / "unsearched" / "report.json").read_text())["validation"] is None


def test_reduced_demo_shows_the_prior_and_the_gain_for_every_seed(batch):
    """The demo in CI: 1 and 16 shots, two seeds, 2 views. Measured over seeds 0-7 with these settings: zero-shot
    44.2% (chance 6.25%), the best adapter at 16 shots 13.7-17.8 points above it (10 views: 14.0-17.8)."""
    results, work, _ = batch
    output = work / "demo"
    stdout = _ok(results["demo"])
    assert "test accuracy (%) on the demo task's test split (400 images, chance 6.25), mean ± std over seeds" in stdout
    assert "| xmadapter |" in stdout and "image cache (affinity ratio)" in stdout
    rows = json.loads((output / "results.json").read_text())
    assert len(rows) == 2 * 2 * 3
    chance = 1 / len(DEMO_CLASSES)
    for seed in (0, 1):
        accuracy = {(r["method"], r["shots"]): r["test_accuracy"] for r in rows if r["seed"] == seed}
        zero_shot = accuracy["zero-shot", 16]
        assert zero_shot > 2 * chance
        assert max(accuracy["tip-adapter-f", 16], accuracy["xmadapter", 16]) >= zero_shot + 0.10, (seed, accuracy)
    assert "test split calibration, expected calibration error (15 bins) and NLL" in stdout
    for row in rows:  # the temperature fitted on validation never makes the test split's calibration worse
        assert row["temperature"] > 0 and row["ece_after"] <= row["ece_before"], row
        assert row["zero_shot_ece_after"] <= row["zero_shot_ece_before"], row
    for name in ("few_shot_curve.png", "affinity_ratio.png", "table.md"):
        assert (output / name).stat().st_size > 100


def test_fit_report_names_the_split_and_fit_runs_without_a_search(clip_and_processor, few_shot_dataset):
    from xmadapter_hf import FitReport, XMAdapterForImageClassification, fit

    text = str(FitReport(method="tip-adapter", num_train=8, num_validation=4, augment_views=1, accuracy=0.5,
                         zero_shot_accuracy=0.25))  # fmt: skip
    assert "validation accuracy (4 images): 0.5000 (zero-shot 0.2500)" in text
    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(clip, ["a", "b", "c", "d"], processor=processor,
                                                      method="tip-adapter")  # fmt: skip
    with pytest.raises(ValueError, match="search=False"):
        fit(model, few_shot_dataset, None, augment_views=0, show_progress=False)
    model, report = fit(model, few_shot_dataset, None, augment_views=0, show_progress=False, search=False)
    assert report.search_before is None and model.config.residual_ratio == 1.0 and model.config.search_result is None
    assert "no validation split: no accuracy measured" in str(report)


def _fit(folder: Path, output: Path, method: str, *extra) -> Path:
    """`xmadapter fit` of a small adapter: 2 shots, 1 augmented view, no validation search."""
    from xmadapter_hf.cli import main

    argv = ["fit", "--data", folder, "--method", method, "--shots", 2, "--augment-views", 1, "--no-search",
            "--no-progress", "--output", output, *extra]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return output


def test_predict_and_eval_refuse_a_damaged_adapter_with_one_line(tmp_path, capsys):
    """Random bytes inside model.safetensors' tensor data (header intact) once loaded silently: `predict` printed
    `nan%` and `eval` exited 0. Now both end with one line naming the file, and a non-zero status."""
    import torch
    from test_integrity import damage_tensor_bytes

    from xmadapter_hf import XMAdapterForImageClassification
    from xmadapter_hf.cli import main
    from xmadapter_hf.testing import save_tiny_clip

    folder = _image_folder(tmp_path / "own", images=2)
    model = XMAdapterForImageClassification.from_clip(save_tiny_clip(tmp_path / "clip"), ["cat", "dog"],
                                                      method="tip-adapter")  # fmt: skip
    model.set_cache(
        torch.randn(4, model.embed_dim, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 0, 1, 1])
    )
    model.save_pretrained(tmp_path / "adapter")
    adapter, image = str(tmp_path / "adapter"), str(folder / "cat" / "0.png")
    assert main(["predict", adapter, image]) == 0 and "cat" in capsys.readouterr().out  # it loads before the damage
    weights = tmp_path / "adapter" / "model.safetensors"
    damage_tensor_bytes(weights)
    for command in (["predict", adapter, image], ["eval", adapter, "--data", str(folder)]):
        assert main(command) == 1
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert line.startswith(f"xmadapter {command[0]}: error: ") and f"{weights}' is damaged or was edited" in line
        assert "nan" not in captured.out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _new_classes(root: Path) -> Path:
    return _image_folder(root, ("kiwi", "plum", "fig"), images=2, rng=np.random.default_rng(1))


def test_add_classes_writes_a_grown_adapter_and_overwrites_nothing(tmp_path, capsys):
    from safetensors.torch import load_file

    from xmadapter_hf.cli import main

    adapter = _fit(_image_folder(tmp_path / "own"), tmp_path / "adapter", "tip-adapter")
    support = _new_classes(tmp_path / "new")
    before = [_files(adapter), _files(support)]
    capsys.readouterr()
    grow = ["add-classes", str(adapter), "--support", str(support), "--no-progress", "--output"]
    assert main([*grow, str(tmp_path / "grown")]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert "tip-adapter adapter" in line and "2 -> 5 classes, cache 4 -> 10 entries" in line
    config = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert config["class_names"] == ["cat", "dog", "fig", "kiwi", "plum"]  # the folders' names, sorted
    assert config["cache_size"] == 10 and config["classes_added"] == 3 and config["shots"] == 2
    labels = load_file(tmp_path / "grown" / "model.safetensors")["cache_labels"]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    grown = _files(tmp_path / "grown")

    for output, message in ((tmp_path / "grown", "is not empty"), (adapter, "is the adapter itself")):
        assert main([*grow, str(output)]) == 1
        (error,) = capsys.readouterr().err.splitlines()
        assert error.startswith("xmadapter add-classes: error: --output ") and message in error
    assert [_files(adapter), _files(support)] == before and _files(tmp_path / "grown") == grown


@pytest.mark.parametrize("method", ["meta-adapter", "tip-adapter"])
def test_predict_and_eval_with_support_match_the_python_api(method, demo_folder, tmp_path, capsys):
    """`--support DIR` = `from_pretrained(adapter, class_names=DIR's classes)` + `build_cache(DIR)`, no training:
    an adapter fit on two random-image classes, applied to three demo classes (their 4 training images each)."""
    import shutil

    import datasets
    import torch

    from xmadapter_hf import XMAdapterForImageClassification
    from xmadapter_hf.cli import main

    adapter = _fit(_image_folder(tmp_path / "own"), tmp_path / "adapter", method, "--epochs", 1)
    names = ["blue grid", "green rings", "orange checks"]
    support, test = tmp_path / "support", tmp_path / "test"
    for name in names:
        shutil.copytree(demo_folder / "train" / name, support / name)
        (test / name).mkdir(parents=True)
        for image in sorted((demo_folder / "test" / name).iterdir())[:4]:
            shutil.copy(image, test / name)
    capsys.readouterr()
    online = ["--support", str(support), "--no-progress", "--json"]
    assert main(["predict", str(adapter), str(test), "--top-k", "1", *online]) == 0
    cli = [entry["predictions"][0]["label"] for entry in json.loads(capsys.readouterr().out)]
    assert main(["eval", str(adapter), "--data", str(test), *online]) == 0
    evaluation = json.loads(capsys.readouterr().out)

    paths = [str(p) for name in names for p in sorted((support / name).iterdir())]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    dataset = datasets.Dataset.from_dict({"image": paths, "label": [i // 4 for i in range(12)]}, features=features)
    model = XMAdapterForImageClassification.from_pretrained(adapter, class_names=names)
    model.build_cache(dataset, augment_views=1, show_progress=False)  # fit's views and seed (0)
    files = [p for name in names for p in sorted((test / name).iterdir())]
    pixels = model.processor.image_processor(images=[Image.open(p).convert("RGB") for p in files], return_tensors="pt")
    with torch.no_grad():
        python = [names[i] for i in model(pixel_values=pixels["pixel_values"]).logits.argmax(-1).tolist()]
    assert cli == python and len(set(python)) > 1  # a prediction per image, and not one class for all
    correct = sum(predicted == file.parent.name for predicted, file in zip(python, files))
    assert evaluation["images"] == 12 and evaluation["accuracy"] == pytest.approx(correct / 12)
    assert evaluation["method"] == method and set(evaluation["per_class"]) == set(names)


def test_workers_option_is_the_extractions_default_for_the_command_only(demo_folder, monkeypatch):
    from xmadapter_hf.cli import main
    from xmadapter_hf.cli.common import CLIError
    from xmadapter_hf.data import WORKERS_ENV

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    seen = {}

    def stop(*args, **kwargs):  # where the command would load the adapter and extract
        seen["workers"] = os.environ.get(WORKERS_ENV)
        raise CLIError("stopped here")

    monkeypatch.setattr("xmadapter_hf.cli.evaluate.load_adapter", stop)
    assert main(["eval", str(demo_folder), "--data", str(demo_folder), "--workers", "3"]) == 1
    assert seen == {"workers": "3"} and WORKERS_ENV not in os.environ, "set for the command, restored after it"
