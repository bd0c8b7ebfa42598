"""A real package: the sdist and the wheel build, carry the LICENSE and every package-data file, pass `twine check`,
and the wheel installed into a fresh virtualenv, away from the source tree, runs `xmadapter`.

The build runs without isolation (the project venv's setuptools, so no download), the wheel from the sdist as
`python -m build` does by default. The fresh virtualenv gets the wheel with `--no-deps` and sees the project venv's
installed dependencies through a `.pth` line (torch and transformers are not downloaded again); the project's own
editable install is not visible there (its `.pth` file is only read in the site directory it lives in).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "xmadapter_hf"


def _run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    return result


def _package_data() -> set[str]:
    """Every tracked non-Python file of the package, relative to `src/`."""
    tracked = _run(["git", "ls-files", f"src/{PACKAGE}"], cwd=ROOT).stdout.split()
    return {path.removeprefix("src/") for path in tracked if not path.endswith(".py")}


@pytest.mark.integration
def test_sdist_and_wheel_install_into_a_fresh_venv_and_run(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT], cwd=ROOT)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    _run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel])

    data = _package_data()
    assert {f"{PACKAGE}/data/datasets.json", f"{PACKAGE}/demo/clip/model.safetensors"} <= data
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert data <= names, sorted(data - names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as archive:
        assert "xmadapter = xmadapter_hf.cli:main" in archive.read(entry_points).decode()
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        members = {name.removeprefix(top + "/") for name in archive.getnames()}
    assert "LICENSE" in members and {f"src/{name}" for name in data} <= members

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=False, symlinks=True)
    python = environment / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    away = tmp_path / "elsewhere"
    away.mkdir()
    check = "import xmadapter_hf, xmadapter_hf.demo as d; print(xmadapter_hf.__file__); print(d.demo_clip_path())"
    where = _run([python, "-c", check], cwd=away, env=env).stdout.splitlines()
    assert all(line.startswith(str(site)) for line in where), where  # the wheel's copy, its demo CLIP checked
    usage = _run([environment / "bin" / "xmadapter", "--help"], cwd=away, env=env).stdout
    assert "demo" in usage and "fit" in usage and "export" in usage
    demo_usage = _run([environment / "bin" / "xmadapter", "demo", "--help"], cwd=away, env=env).stdout
    assert "--export-images" in demo_usage
