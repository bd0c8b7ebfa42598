"""The generated reference pages (docs/cli.md from the `xmadapter` parser, docs/config.md from `XMAdapterConfig`'s
docstring) are what scripts/generate_docs.py writes now: a changed option or config field fails here until the pages
are regenerated (`.venv/bin/python scripts/generate_docs.py`)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT, load_repo_module


@pytest.fixture(scope="module")
def generate_docs():
    return load_repo_module("scripts/generate_docs.py")


def test_generated_pages_are_up_to_date():
    """In a fresh process: the tests register methods of their own (`register_method`), which `--method`'s choices
    would then list."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--check", "--only", "cli", "config"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_cli_page_has_every_command_and_option(generate_docs):
    from xmadapter_hf.cli import COMMANDS, build_parser

    text = (ROOT / "docs" / "cli.md").read_text()
    subparsers = generate_docs._subparsers(build_parser())
    for command in COMMANDS:
        assert f"## xmadapter {command.name}\n" in text
        for action in subparsers.choices[command.name]._actions:
            for option in action.option_strings:
                assert f"`{option}" in text or f", {option}" in text, (command.name, option)


def _field_default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def test_config_page_has_every_field_with_its_default(generate_docs):
    """Every field `XMAdapterConfig` declares is in its docstring's `Args:` (hence on the page), and a stated
    "defaults to X" is the field's default."""
    from xmadapter_hf import XMAdapterConfig

    own = {f.name: f for f in dataclasses.fields(XMAdapterConfig) if f.name in XMAdapterConfig.__annotations__}
    documented = {name: kind for name, kind, _ in generate_docs.config_fields(XMAdapterConfig.__doc__)}
    assert list(documented) == list(own)  # all of them, in declaration order
    for name, kind in documented.items():
        stated = re.search(r"defaults to `?(.*?)`?$", kind)
        default = _field_default(own[name])
        assert (stated.group(1) if stated else None) == (None if default is None else _as_written(default)), name
    page = (ROOT / "docs" / "config.md").read_text()
    assert all(f"| `{name}` |" in page for name in own)


def test_config_page_has_every_method_field_with_its_default(generate_docs):
    """The fields the registered methods declare (their `config_fields`) are documented in the declaring class's
    `Args:` with their defaults, and are on the page."""
    from xmadapter_hf.methods import METHODS, get_method_class

    declared = {
        f.name: (None, f)
        for name in METHODS
        if get_method_class(name).config_fields is not None
        for f in dataclasses.fields(get_method_class(name).config_fields)
    }
    documented = {name: kind for _, _, entries in generate_docs.method_field_groups() for name, kind, _ in entries}
    assert sorted(documented) == sorted(declared)
    for name, kind in documented.items():
        stated = re.search(r"defaults to `?(.*?)`?$", kind)
        default = _field_default(declared[name][1])
        assert (stated.group(1) if stated else None) == (None if default is None else _as_written(default)), name
    page = (ROOT / "docs" / "config.md").read_text()
    assert all(f"| `{name}` |" in page for name in declared)


def _as_written(value) -> str:
    return str(value) if isinstance(value, (bool, float)) else json.dumps(value)


def test_check_mode_reports_a_stale_page(generate_docs, monkeypatch, tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text("old\n")
    (tmp_path / "docs" / "config.md").write_text(generate_docs.config_reference())
    monkeypatch.setattr(generate_docs, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["generate_docs.py", "--check", "--only", "cli", "config"])
    assert generate_docs.main() == 1
    assert "out of date: docs/cli.md" in capsys.readouterr().err
    assert (tmp_path / "docs" / "cli.md").read_text() == "old\n"  # --check writes nothing


def test_an_output_region_is_replaced_and_a_missing_one_named(generate_docs):
    page = "before\n<!-- generated: x -->\nold\n<!-- end generated: x -->\nafter\n"
    assert generate_docs._with_output(page, "x", "new") == page.replace("old", "new")
    with pytest.raises(ValueError, match="no region <!-- generated: y -->"):
        generate_docs._with_output(page, "y", "new")


def test_the_study_region_is_the_committed_log_s_tables(generate_docs):
    """docs/accuracy.md's study tables are what the committed log gives (no fit rerun): a new row in
    benchmarks/results/study.jsonl fails here until `accuracy_study.py --study --no-run` (or this script) rewrites
    them."""
    page = (ROOT / "docs" / "accuracy.md").read_text()
    assert generate_docs._with_output(page, "study", generate_docs.study_output()) == page


def test_the_readme_has_the_demo_region():
    text = (ROOT / "README.md").read_text()
    region = text.split("<!-- generated: demo -->\n", 1)[1].split("\n<!-- end generated: demo -->", 1)[0]
    assert region.startswith("```\ntest accuracy (%) on the demo task") and region.endswith("\n```")
