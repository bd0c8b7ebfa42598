"""Fetches transformers' common model tests for the installed transformers version (not kept in this repository).

`ModelTesterMixin` (`tests/test_modeling_common.py`) and `ConfigTester` (`tests/test_configuration_common.py`) are
not part of the transformers wheel: they ship in its source distribution. This script asks pip for that sdist
(`pip download --no-deps --no-binary :all: transformers==<installed version>`), extracts the two files into
`.cache/transformers-tests/<version>/transformers_tests/` (ignored by git) and adds the three helper modules they
import but the sdist lacks, as small stubs of our own (`tests/transformers_common/stubs/`). A second run finds the
files in place and does nothing. Used by `scripts/transformers_common_tests.sh`; see docs/conventions.md.

    .venv/bin/python scripts/fetch_transformers_tests.py   # prints the package's parent folder (for PYTHONPATH)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUBS = ROOT / "tests" / "transformers_common" / "stubs"
#: the sdist's files we run, and where each of our stubs goes inside the package (the modules they import)
FILES = ("test_modeling_common.py", "test_configuration_common.py")
STUB_TARGETS = {
    "export_stub.py": "exporters/test_export.py",
    "generation_stub.py": "generation/test_utils.py",
    "configuration_utils_stub.py": "utils/test_configuration_utils.py",
}


def cache_folder(transformers_version: str | None = None) -> Path:
    """The folder whose `transformers_tests` package holds the common tests of ``transformers_version``."""
    return ROOT / ".cache" / "transformers-tests" / (transformers_version or version("transformers"))


def fetch(transformers_version: str | None = None) -> Path:
    """Makes sure the package is in place (downloading the sdist when it is not); returns its parent folder."""
    transformers_version = transformers_version or version("transformers")
    folder = cache_folder(transformers_version)
    package = folder / "transformers_tests"
    if not all((package / name).is_file() for name in FILES):
        with tempfile.TemporaryDirectory() as download:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            command += [f"transformers=={transformers_version}", "--dest", download]
            subprocess.run(command, check=True)
            archives = sorted(Path(download).glob("transformers-*.tar.gz"))
            if not archives:
                raise SystemExit(f"pip downloaded no transformers {transformers_version} sdist into {download}.")
            folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=folder))
            try:
                with tarfile.open(archives[0]) as archive:
                    for name in FILES:
                        member = archive.getmember(f"transformers-{transformers_version}/tests/{name}")
                        handle = archive.extractfile(member)
                        (staging / name).write_bytes(handle.read())
                package.mkdir(parents=True, exist_ok=True)
                for name in FILES:
                    shutil.move(staging / name, package / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    # the stubs are ours: copied on every run, so that an edit of them takes effect
    (package / "__init__.py").write_text("")
    for stub, target in STUB_TARGETS.items():
        path = package / target
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").write_text("")
        shutil.copyfile(STUBS / stub, path)
    return folder


if __name__ == "__main__":
    print(fetch(sys.argv[1] if len(sys.argv) > 1 else None))
