"""A ready Hugging Face Space for an adapter: the folder `xmadapter space` writes and `xmadapter push --space`
uploads (docs/app.md).

The folder holds `app.py` (three lines that call [`~xmadapter_hf.app.serving.run_space`]: the page of `xmadapter
serve`, not a copy of it), `requirements.txt` (this library's version with its `app` extra, and CPU torch from
PyTorch's CPU index), `README.md` (the Space's YAML front matter: `sdk: gradio`, `sdk_version` the installed gradio,
`app_file: app.py`, `models:` the adapter's Hub repo where known, and a link to it) and, where the adapter is a local
folder not on the Hub, `adapter/`: a copy of its files, which the Space loads from its own repository.

Where the Space finds the model:

- ``model_id`` given (`push --space` gives the repo it pushed to), or the adapter given as a Hub repo id: the Space
  loads that repo with `from_pretrained`, which downloads the backbone its config names;
- else (a local adapter folder): `config.json`, `model.safetensors` and `preprocessor_config.json` are copied into
  `adapter/`. Its backbone must be loadable on the Space: a Hub id as recorded, or ``base_model_id`` (written into
  the copy's config, as `push --base-model-id` does), or the demo CLIP this library ships (recognised by its
  weights' sha256; the Space loads the installed package's copy).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

__all__ = ["ADAPTER_FOLDER", "TORCH_INDEX_URL", "push_space", "space_card", "write_space"]

#: The folder of the Space that holds a copy of a local adapter.
ADAPTER_FOLDER = "adapter"
#: Where the Space's pip gets CPU torch (PyPI's torch wheels for Linux are the CUDA build, gigabytes larger).
TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"
#: The files of an adapter the Space needs (our README, `split.json` and `report.json` stay behind).
ADAPTER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
#: The value of `app.py`'s BACKBONE that means "the demo CLIP of the installed xmadapter-hf".
DEMO_BACKBONE = "demo"


def _hub_url(repo_id: str, repo_type: str = "model") -> str:
    from huggingface_hub import constants

    prefix = "spaces/" if repo_type == "space" else ""
    return f"{constants.ENDPOINT.rstrip('/')}/{prefix}{repo_id}"


def _versions() -> tuple[str, str, str]:
    """(xmadapter-hf, torch without its local label, gradio): the versions this Space was written and tested with."""
    import gradio
    import torch

    from .. import __version__

    return __version__, torch.__version__.split("+")[0], gradio.__version__


def _is_demo_clip(path: str) -> bool:
    from ..demo import DemoCheckpointError, verify_demo_clip

    try:
        verify_demo_clip(path)
    except (DemoCheckpointError, OSError):
        return False
    return True


def space_card(title: str, model_id: str | None, source: str, gradio_version: str):
    """The Space's `README.md` (a `huggingface_hub.SpaceCard`): its front matter and a line linking the model."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(
        title=title, sdk="gradio", sdk_version=gradio_version, app_file="app.py",
        models=[model_id] if model_id else None, tags=["xmadapter-hf", "few-shot", "image-classification", "clip"],
        emoji="🔎", colorFrom="blue", colorTo="green", pinned=False,
        short_description="Few-shot image classification: try the adapter, add classes",
    )  # fmt: skip
    copied = f"`{Path(source).resolve().name}` (a copy in `{ADAPTER_FOLDER}/`)"
    model = f"[{model_id}]({_hub_url(model_id)})" if model_id else copied
    body = f"""# {title}

The web page of the few-shot image-classification adapter {model}, made with
[xmadapter-hf](https://pypi.org/project/xmadapter-hf/): classify an image (the top classes, their scores and what
zero-shot CLIP, the image cache and the text cache added) and add a class from a few images to your own copy of the
adapter, then download it. `app.py` calls `xmadapter_hf.app`, the page `xmadapter serve` shows; run it locally with
`pip install -r requirements.txt && python app.py`.
"""
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_space(
    adapter: str, output, *, model_id: str | None = None, revision: str | None = None,
    base_model_id: str | None = None, title: str | None = None, overwrite: bool = False,
) -> dict[str, Path]:  # fmt: skip
    """Writes a ready Space for ``adapter`` (a local adapter folder or a Hub repo id) into ``output``; returns
    {name: path} of what it wrote. See the module's docstring for where the Space finds the model.

    Raises `ValueError`, before anything is written: ``output`` is a file, or a non-empty folder without
    ``overwrite``; the adapter folder lacks a file; a local adapter's backbone is a local path that is neither the
    demo CLIP nor given a Hub id with ``base_model_id``.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"The Space folder {str(output)!r} is a file.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ValueError(f"The Space folder {str(output)!r} is not empty: pass overwrite=True to write into it.")
    local = Path(adapter).expanduser()
    backbone = None
    config = None
    if model_id is None and local.is_dir():
        missing = [name for name in ADAPTER_FILES if not (local / name).is_file()]
        if missing:
            raise ValueError(f"The adapter folder {adapter!r} lacks {', '.join(missing)}.")
        original = json.loads((local / "config.json").read_text())
        config, backbone = _space_backbone(original, base_model_id)
    elif model_id is None:
        model_id = adapter  # a Hub repo id
    xmadapter_version, torch_version, gradio_version = _versions()
    name = title or (model_id.split("/")[-1] if model_id else local.resolve().name)
    title = name if len(name) <= 30 else name[:29] + "…"

    output.mkdir(parents=True, exist_ok=True)
    written = {}
    if config is not None:
        folder = output / ADAPTER_FOLDER
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for file in ADAPTER_FILES:
            shutil.copyfile(local / file, folder / file)
        if config is not original:  # --base-model-id: recorded in the copy, as `push --base-model-id` does
            (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        written[ADAPTER_FOLDER] = folder
        source_line = f"ADAPTER = str(Path(__file__).resolve().parent / {ADAPTER_FOLDER!r})  # the copied adapter"
    else:
        source_line = f"ADAPTER = {model_id!r}  # the adapter's Hub repo"
    app = f'''"""The web page of an xmadapter-hf adapter, as `xmadapter serve` shows it: written by `xmadapter space`
(xmadapter-hf {xmadapter_version}). `python app.py` serves it on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT where they are
set (a Space sets them), else on 0.0.0.0 on a Space and 127.0.0.1 elsewhere, port 7860 or the next free one."""

from pathlib import Path

from xmadapter_hf.app import run_space

{source_line}
run_space(ADAPTER, revision={revision!r}, backbone={backbone!r}, title={title!r})
'''
    requirements = (
        "# written by `xmadapter space`: this library's version, and CPU torch from PyTorch's CPU index (PyPI's\n"
        f"# Linux torch is the CUDA build, gigabytes larger)\n--extra-index-url {TORCH_INDEX_URL}\n"
        f"torch=={torch_version}\nxmadapter-hf[app]=={xmadapter_version}\n"
    )
    for file, text in (("app.py", app), ("requirements.txt", requirements)):
        (output / file).write_text(text)
        written[file] = output / file
    space_card(title, model_id, adapter, gradio_version).save(output / "README.md")
    written["README.md"] = output / "README.md"
    return written


def _space_backbone(config: dict, base_model_id: str | None) -> tuple[dict, str | None]:
    """The config to copy and `app.py`'s BACKBONE (`None`: the recorded one) for a local adapter."""
    from ..hub import _looks_local

    recorded = config.get("base_model_name_or_path")
    if base_model_id is not None:
        if not base_model_id.strip() or _looks_local(base_model_id):
            raise ValueError(
                f"`base_model_id` must be a Hub id like 'openai/clip-vit-base-patch16'; got {base_model_id!r}."
            )
        return {**config, "base_model_name_or_path": base_model_id}, None
    if recorded and not _looks_local(recorded):
        return config, None
    if recorded and _is_demo_clip(recorded):
        return config, DEMO_BACKBONE
    raise ValueError(
        f"The adapter's backbone is the local path {recorded!r}, which the Space cannot read (and it is not the demo "
        "CLIP): pass `base_model_id=` (--base-model-id) with its Hub id (e.g. 'openai/clip-vit-base-patch16')."
    )


def push_space(
    model_id: str, space_id: str, *, revision: str | None = None, token: str | bool | None = None,
    private: bool | None = None, title: str | None = None, commit_message: str | None = None,
) -> str:  # fmt: skip
    """Writes the Space of the adapter pushed to ``model_id`` (loaded from there, at ``revision``) and uploads it to
    the Space repo ``space_id`` (created where missing, `sdk: gradio`); returns the commit URL."""
    from huggingface_hub import HfApi

    if not isinstance(space_id, str) or len(space_id.strip().split("/")) != 2:
        raise ValueError(f"The Space id must be 'user/name'; got {space_id!r}.")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="xmadapter-space-") as folder:
        write_space(model_id, folder, model_id=model_id, revision=revision, title=title, overwrite=True)
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=space_id, repo_type="space", folder_path=folder,
            commit_message=commit_message or f"Space for the xmadapter-hf adapter {model_id}",
        )  # fmt: skip
    return str(getattr(info, "commit_url", info))
