"""The quickstart (the README's Python block) runs end to end, offline, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_quickstart_is_the_readme_block():
    source = (ROOT / "examples" / "quickstart.py").read_text()
    inside = source.split("    # --- the README's block\n")[1].split("    # --- end of the README's block\n")[0]
    assert textwrap.dedent(inside) == readme_blocks()[0]


def test_quickstart_runs_offline_and_cleans_up(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation accuracy (256 images)" in result.stdout  # the report says which split
    assert "[{'label': " in result.stdout and "true class of that test image" in result.stdout
    assert list(temp.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
