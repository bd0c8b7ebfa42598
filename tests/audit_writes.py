"""Runs a Python script under an audit hook that records every write its process makes inside one directory.

    python tests/audit_writes.py WATCHED_DIR REPORT_DIR script.py [script arguments...]

Used under `torchrun` by tests/test_distributed.py to show which process wrote the checkpoint: each process writes
``REPORT_DIR/writes_rank{RANK}.json``, the list of (event, path) pairs it made under ``WATCHED_DIR`` (files opened for
writing, including `tempfile.mkstemp`'s, renames/replaces, mode changes, directory creations and removals). Files
written from native code without a Python-level `open` (safetensors' Rust writer) show up through the staging
directory, the `os.chmod` that gives them the umask's mode and the `os.replace` that moves them into place
(`xmadapter_hf.checkpoint.save_adapter`).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> None:
    watched, report_dir, script, *script_args = sys.argv[1:]
    watched = os.path.abspath(watched)
    writes: list[tuple[str, str]] = []

    def inside(path) -> bool:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return False  # a file descriptor
        path = os.path.abspath(os.fspath(path))
        return path == watched or path.startswith(watched + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _WRITE_FLAGS)
            if writing and inside(path):
                writes.append((event, os.fspath(path)))
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod", "shutil.copyfile"):
            paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if any(inside(p) for p in paths):
                writes.append((event, " -> ".join(os.fsdecode(os.fspath(p)) for p in paths)))

    def report() -> None:
        rank = os.environ.get("RANK", "0")
        target = Path(report_dir) / f"writes_rank{rank}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(writes, indent=1))

    atexit.register(report)
    sys.addaudithook(hook)
    # As `python script.py` would: the script's own directory first on the path, its arguments in argv.
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
