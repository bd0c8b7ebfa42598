"""`xmadapter space ADAPTER --output DIR`: write a folder that is a ready Hugging Face Space for the adapter's page.

The folder (docs/app.md): `app.py` (it calls `xmadapter_hf.app.run_space`, the page `xmadapter serve` shows),
`requirements.txt` (this library's version with its `app` extra, CPU torch from PyTorch's CPU index), `README.md`
(the Space's front matter: `sdk: gradio`, `sdk_version` the installed gradio, `app_file: app.py`, `models:` the
adapter's Hub repo where known). Where the Space finds the model: a Hub repo id as ADAPTER, or `--model-id`, is loaded
from the Hub; a local adapter folder is copied into DIR/adapter/ (its backbone: the Hub id it records, or
`--base-model-id`, or the demo CLIP the library ships). Try it with `cd DIR && pip install -r requirements.txt &&
python app.py`; upload it with `xmadapter push ADAPTER REPO_ID --space SPACE_ID` (beside the model) or any Hub client.
Needs the `app` extra: pip install "xmadapter-hf[app]".
"""

from __future__ import annotations

from .common import Command, check_adapter, check_output_folder, require_gradio


def add_arguments(parser) -> None:
    parser.add_argument("adapter", help="the adapter directory (or Hub repo id)")
    parser.add_argument("--output", required=True, help="the Space folder to write (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output")
    parser.add_argument(
        "--model-id", help="the Hub repo the adapter is pushed to: the Space loads it from there (default for a "
        "local folder: a copy in DIR/adapter/)",
    )  # fmt: skip
    parser.add_argument("--revision", help="the revision of the adapter's Hub repo the Space loads (default: main)")
    parser.add_argument("--base-model-id", help="the backbone's Hub id, for a copied adapter built on a local one")
    parser.add_argument("--title", help="the Space's title (default: the adapter's name)")


def run(args) -> int:
    output = check_output_folder(args.output, args.overwrite, label="output")
    check_adapter(args.adapter)
    require_gradio("`xmadapter space` needs gradio")  # the Space's sdk_version is the installed gradio's
    from ..app.space import write_space

    written = write_space(
        args.adapter, output, model_id=args.model_id, revision=args.revision, base_model_id=args.base_model_id,
        title=args.title, overwrite=args.overwrite,
    )  # fmt: skip
    names = ", ".join(f"{name}/" if path.is_dir() else name for name, path in written.items())
    print(f"wrote {output} ({names})")
    print(f"try it: cd {output} && pip install -r requirements.txt && python app.py")
    return 0


COMMAND = Command(
    name="space",
    help="write a ready Hugging Face Space (gradio) for an adapter's web page",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
