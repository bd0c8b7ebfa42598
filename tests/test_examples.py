"""The quickstart (the README's main job) runs end to end, offline, and its reloaded adapter predicts the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_offline(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--classes", "4", "--shots", "4", "--views", "2",
         "--epochs", "3", "--output", str(tmp_path / "adapter")],
        capture_output=True, text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reloaded predictions identical: True" in result.stdout
    assert "test accuracy" in result.stdout
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
