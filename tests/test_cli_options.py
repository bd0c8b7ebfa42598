"""The command line's options that decide nothing the library decides (issue 23): the search's grid and ranges have
one home (`search_on_validation`'s `None`s), `search` writes over nothing unasked, a `--data` is read as a path or
as a Hub name quickly and says which readings failed, argument errors say what is expected, and the options that the
loading errors recommend exist. Each test here runs in a second or less: no backbone is loaded."""

from __future__ import annotations

import inspect
import socket
import time
from pathlib import Path

import pytest


def _parser(command: str):
    from xmadapter_hf.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return subparsers.choices[command]


def _defaults(command: str) -> dict:
    return {a.dest: a.default for a in _parser(command)._actions if a.dest.startswith("search_")}


@pytest.mark.parametrize("command", ["fit", "search", "demo", "reproduce"])
def test_the_search_options_default_to_the_library(command):
    """A default of (200, 20) for --search-step selected Tip-Adapter's fixed grid for every `search` and
    `reproduce`; now no search option has a value of its own, and `--search-grid` says which search explicitly."""
    from xmadapter_hf.cli.common import SEARCH_GRID_CHOICES
    from xmadapter_hf.training.grids import SEARCH_GRIDS

    defaults = _defaults(command)
    assert defaults.pop("search_grid") is None and all(value is None for value in defaults.values()), defaults
    assert set(SEARCH_GRID_CHOICES) == set(SEARCH_GRIDS)
    (grid,) = [a for a in _parser(command)._actions if a.dest == "search_grid"]
    assert set(grid.choices) == set(SEARCH_GRIDS)


def test_the_library_entry_points_leave_the_search_to_search_on_validation():
    from xmadapter_hf.reproduce.harness import run_protocol
    from xmadapter_hf.training.fit import fit
    from xmadapter_hf.training.search import resolve_search_grid, search_hyperparameters, search_on_validation

    for function in (run_protocol, fit, search_hyperparameters, search_on_validation):
        parameters = inspect.signature(function).parameters
        assert all(parameters[name].default is None for name in ("search_grid", "search_scale", "search_step"))
    assert resolve_search_grid(None, None, None)[0] == "auto"
    assert resolve_search_grid(None, None, (20, 10))[0] == "tip-adapter-grid"
    with pytest.raises(ValueError, match="`search_step` sizes the fixed grid"):
        resolve_search_grid("auto", None, (20, 10))  # ignored silently before


def test_search_grid_auto_with_a_range_is_one_line_before_any_work(tmp_path, capsys):
    from xmadapter_hf.cli import main

    command = ["search", str(tmp_path / "nothing"), "--validation", str(tmp_path), "--output", str(tmp_path / "out")]
    assert main([*command, "--search-grid", "auto", "--search-step", "20", "10"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("xmadapter search: error: --search-step sizes the tip-adapter-grid; --search-grid auto")


def test_search_needs_an_output_or_in_place_and_never_its_own_folder(tmp_path, capsys):
    from xmadapter_hf.cli import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "config.json").write_text("{}")
    before = sorted(adapter.iterdir())
    cases = [
        ([], "pass --output DIR to write the searched adapter to a new folder, or --in-place"),
        (["--in-place", "--output", str(tmp_path / "x")], "not both"),
        (["--output", str(adapter)], "is the adapter itself: pass --in-place"),
        (["--output", str(tmp_path)], "is not empty: pass --overwrite"),
    ]
    for extra, message in cases:
        assert main(["search", str(adapter), "--validation", str(tmp_path), *extra]) in (1, 2)
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("xmadapter search: error: ") and message in line, line
    assert sorted(adapter.iterdir()) == before and not (tmp_path / "x").exists()


def test_export_refuses_a_non_empty_folder(tmp_path, capsys):
    from xmadapter_hf.cli import main

    output = tmp_path / "onnx"
    output.mkdir()
    (output / "mine.txt").write_text("kept")
    assert main(["export", str(tmp_path / "adapter"), str(output)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"xmadapter export: error: output {str(output)!r} is not empty: pass --overwrite to write into it"
    assert [p.name for p in output.iterdir()] == ["mine.txt"]


@pytest.mark.parametrize("value", ["abc", "0", "-3", "2.5"])
def test_a_count_that_is_no_positive_integer_says_so(value, capsys):
    from xmadapter_hf.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--data", "x", "--output", "y", "--shots", value])
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"argument --shots: expected a positive integer, got '{value}'" in line and "positive_int" not in line


@pytest.mark.parametrize("source", ["./missing", "~/missing-xmadapter-folder", "/no/such/folder", "a/b/c", "dir/"])
def test_a_data_path_fails_at_once_without_asking_the_hub(source, monkeypatch):
    from huggingface_hub import HfApi

    from xmadapter_hf.cli.common import CLIError
    from xmadapter_hf.cli.data import open_data

    monkeypatch.setattr(HfApi, "dataset_info", lambda *a, **k: pytest.fail("a path was looked up on the Hub"))
    with pytest.raises(CLIError, match=f"--data '{source}': no such folder"):
        open_data(source)


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_a_hub_name_is_looked_up_within_the_timeout_and_the_error_names_both_readings(online, monkeypatch):
    """A Hub that accepts the connection and never answers (`load_dataset` alone retried for 30-40 s)."""
    import huggingface_hub.constants

    from xmadapter_hf.cli import data
    from xmadapter_hf.cli.common import CLIError

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(data, "HUB_TIMEOUT", 0.5)
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: pytest.fail("read before the Hub answered"))
    started = time.monotonic()
    try:
        with pytest.raises(CLIError) as error:
            data.open_data("someone/no-such-dataset")
    finally:
        silent.close()
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert message.startswith("--data 'someone/no-such-dataset': no such folder here, and the Hub did not say")
    assert "within 0.5 s" in message and "HF_HUB_OFFLINE=1" in message


def test_a_name_missing_from_the_hub_says_so(online, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    from xmadapter_hf.cli.common import CLIError
    from xmadapter_hf.cli.data import open_data

    def missing(self, repo_id, **kwargs):
        assert kwargs["timeout"] == 4.0
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as raised for a 404 (needs no response)
        Exception.__init__(error, "404 Client Error: Repository Not Found")
        raise error

    monkeypatch.setattr(HfApi, "dataset_info", missing)
    with pytest.raises(CLIError, match="'user/none': no such folder here, and no dataset of that name on the Hub"):
        open_data("user/none")


def test_offline_a_hub_name_is_read_from_the_cache_only(monkeypatch):
    from huggingface_hub import HfApi

    from xmadapter_hf.cli.common import CLIError
    from xmadapter_hf.cli.data import open_data

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HfApi, "dataset_info", lambda *a, **k: pytest.fail("asked the Hub while offline"))

    def not_cached(name, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr("datasets.load_dataset", not_cached)
    with pytest.raises(CLIError) as error:
        open_data("beans")
    assert str(error.value).startswith("--data 'beans': no such folder here, and as a Hub dataset name: not in the "
                                       "local Hub cache (HF_HUB_OFFLINE is set)")  # fmt: skip


@pytest.mark.parametrize("command", ["eval", "predict", "search", "add-classes", "push", "export"])
def test_the_loading_options_the_errors_recommend_exist(command):
    options = {o for a in _parser(command)._actions for o in a.option_strings}
    assert {"--no-check-backbone", "--rebuild-text-embeddings"} <= options


def test_the_loading_options_reach_from_pretrained_and_its_errors_name_them(tmp_path, monkeypatch, capsys):
    from xmadapter_hf import XMAdapterForImageClassification
    from xmadapter_hf.cli import main

    seen = {}

    def loader(cls, source, **kwargs):
        seen.update(kwargs)
        raise ValueError("its class text embeddings would be wrong. Pass `rebuild_text_embeddings=True` to re-encode "
                         "the class prompts with this backbone, or `check_backbone=False`.")  # fmt: skip

    monkeypatch.setattr(XMAdapterForImageClassification, "from_pretrained", classmethod(loader))
    monkeypatch.setattr("xmadapter_hf.cli.common.check_adapter", lambda source: None)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    flags = ["--no-check-backbone", "--rebuild-text-embeddings"]
    assert main(["predict", str(tmp_path / "adapter"), str(image), *flags]) == 1
    assert seen == {"check_backbone": False, "rebuild_text_embeddings": True}
    (line,) = capsys.readouterr().err.splitlines()
    assert "Pass --rebuild-text-embeddings to re-encode the class prompts with this backbone, or " in line
    assert line.endswith("--no-check-backbone.") and "`check_backbone" not in line
    assert main(["predict", str(tmp_path / "adapter"), str(image)]) == 1
    assert seen == {"check_backbone": True, "rebuild_text_embeddings": False}
    assert Path(image).is_file()
