"""`python -m xmadapter_hf`: the `xmadapter` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
