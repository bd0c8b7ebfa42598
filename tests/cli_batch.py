"""Runs several `xmadapter` command lines as separate processes that share one import of the package.

Every command line pays the same ~4 s import of torch and transformers; the tests run a dozen of them. This script
imports `xmadapter_hf.cli` once, then forks one child per command line: each child has its own stdout and stderr
(files), runs the console script's entry point `main()` with that argv and exits with its status, exactly as
`xmadapter ...` would; the children run concurrently. Linux (fork) only.

Usage: ``python tests/cli_batch.py SPEC.json``; SPEC is ``{"out_dir": DIR, "stages": [{key: [arg, ...]}, ...]}``:
the command lines of a stage run concurrently, a stage starts when the one before it has ended (a later stage may
use what an earlier one wrote). Each command's stdout, stderr and status land in ``DIR/<key>.out``, ``.err``,
``.status``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _child(argv: list[str], out_dir: str, key: str) -> None:
    stdout = os.open(os.path.join(out_dir, f"{key}.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    stderr = os.open(os.path.join(out_dir, f"{key}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    status = 1
    try:
        from xmadapter_hf.cli import main

        sys.argv = ["xmadapter", *argv]
        status = main(argv)
    except SystemExit as exit_:  # argparse errors and --help
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # what `main` lets through (--debug): the traceback, as the interpreter prints it
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def main() -> None:
    with open(sys.argv[1]) as handle:
        spec = json.load(handle)
    import xmadapter_hf.cli  # noqa: F401 - the shared import

    for stage in spec["stages"]:
        children = {}
        for key, argv in stage.items():
            pid = os.fork()
            if pid == 0:
                _child(argv, spec["out_dir"], key)
            children[pid] = key
        while children:
            pid, status = os.wait()
            key = children.pop(pid)
            with open(os.path.join(spec["out_dir"], f"{key}.status"), "w") as handle:
                handle.write(str(os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
    main()
