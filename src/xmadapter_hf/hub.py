"""The Hub: finding an adapter's files (a local directory or a repo id), pushing adapters (never backbones) with our
model card, and a Trainer callback that pushes the same way.

Files are resolved with `transformers.utils.cached_file` (the Hub download and cache, `revision`, `subfolder`,
`local_files_only`, ...), after local checks that say what is wrong with a local path. `transformers`' own
`push_to_hub` calls `save_pretrained` and then writes its own README over ours, and `Trainer.push_to_hub` uploads the
whole output directory (`training_args.bin`, a pickle, included): this module uploads exactly `config.json`,
`model.safetensors` (adapter tensors only), `preprocessor_config.json` and our `README.md`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from transformers import TrainerCallback
from transformers.utils import CONFIG_NAME, IMAGE_PROCESSOR_NAME, SAFE_WEIGHTS_NAME, cached_file

__all__ = ["PUSHED_FILES", "PushAdapterCallback", "build_model_card", "no_cache_note", "push_adapter_to_hub",
           "resolve_file"]  # fmt: skip

PUSHED_FILES = (CONFIG_NAME, SAFE_WEIGHTS_NAME, IMAGE_PROCESSOR_NAME, "README.md")


def resolve_file(path_or_repo: str, filename: str, hub_kwargs: dict) -> str:
    """The local path of ``filename`` of an adapter: in a local directory, or downloaded (and cached) from the Hub.

    Raises `OSError` naming the file and the directory or repo (a local file given as a directory, a directory
    without the file, a repo or revision the Hub does not have).
    """
    local = Path(path_or_repo)
    if local.exists() and not local.is_dir():
        raise OSError(f"{str(local)!r} is a file; expected a checkpoint directory or a Hub repo id.")
    if local.is_dir() and not (local / hub_kwargs.get("subfolder", "") / filename).is_file():
        raise OSError(f"{str(local)!r} holds no {filename}: it is not an xmadapter-hf checkpoint directory.")
    try:
        return cached_file(str(path_or_repo), filename, **hub_kwargs)
    except Exception as error:  # the hub client raises many types; say which file of which repo is missing
        raise OSError(f"Could not get {filename} of {path_or_repo!r}: {type(error).__name__}: {error}") from error


def _looks_local(name: str | None) -> bool:
    return bool(name) and (os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name))


def _format(value, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def no_cache_note(config) -> str | None:
    """What `save_pretrained` warns and the model card says about an adapter whose method needs a cache and that has
    none (saved before `build_cache`, or loaded with other `class_names`); `None` for any other adapter."""
    from .methods import get_method_class

    if config.cache_size or not get_method_class(config.method).uses_cache:
        return None
    return (
        f"this {config.method} adapter has no cache: it classifies with a cache of few-shot image embeddings and "
        "cannot classify until one is built (`model.build_cache(support_set)` after loading, with a labelled image "
        "dataset of its classes)."
    )


def build_model_card(config, repo_id: str, datasets: list[str] | None = None, space_id: str | None = None):
    """Our model card (a `huggingface_hub.ModelCard`): YAML metadata, usage, method, shots, chosen values, results;
    with ``space_id``, a link to the adapter's Space (`xmadapter push --space`)."""
    from huggingface_hub import ModelCard, ModelCardData

    evaluation = config.evaluation or {}
    metrics = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    data = ModelCardData(
        library_name="xmadapter-hf",
        base_model=config.base_model_name_or_path,
        pipeline_tag="image-classification",
        tags=["xmadapter-hf", "clip", "few-shot", "image-classification", config.method],
        datasets=datasets or None,
        metrics=sorted(metrics) or None,
        license="apache-2.0",
    )
    search = config.search_result or {}
    rows = [
        ("method", config.method),
        ("backbone", f"`{config.base_model_name_or_path}` (revision `{config.base_model_revision or 'main'}`)"),
        ("classes", config.num_classes),
        ("shots per class", config.shots if config.shots is not None else "unknown"),
        ("cache entries", config.cache_size),
        ("augmented views per cache image", config.augment_views),
    ]
    rows += [(label, _format(getattr(config, name))) for name, label in _own_fields(config.method)]
    if config.hard_sample_strength:
        rows.append(("hard-sample strength", _format(config.hard_sample_strength)))
    if search:
        rows.append(("chosen on", f"a validation split of {search.get('num_validation')} images"))
    selection = _selection_section(config.method_selection)
    if selection:
        rows.insert(1, ("method chosen by", '`method="auto"`: see *Method selection* below'))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    note = no_cache_note(config)
    warning = f"\n**No cache.** {note[0].upper()}{note[1:]}\n" if note else ""
    results = ""
    if metrics:
        split = evaluation.get("split", "unknown split")
        dataset = evaluation.get("dataset", "the user's data")
        lines = "\n".join(f"| {name} | {_format(value)} |" for name, value in sorted(metrics.items()))
        results = f"\n## Results\n\nMeasured on {dataset} ({split}).\n\n| metric | value |\n|---|---|\n{lines}\n"
    space = ""
    if space_id:
        from huggingface_hub import constants

        url = f"{constants.ENDPOINT.rstrip('/')}/spaces/{space_id}"
        space = f"\nTry it in a web page: the Space [{space_id}]({url}) (classify an image, add a class).\n"
    body = f"""# {repo_id}

A few-shot image-classification adapter made with [xmadapter-hf](https://pypi.org/project/xmadapter-hf/) on a frozen
CLIP backbone. This repository holds the adapter only; the backbone is downloaded from its own repository.
{space}{warning}
## Usage

```python
import xmadapter_hf  # registers the model type with transformers
from transformers import pipeline
from xmadapter_hf import XMAdapterForImageClassification

model = XMAdapterForImageClassification.from_pretrained("{repo_id}")
classifier = pipeline("image-classification", model="{repo_id}")
print(model.config.class_names[:5])
```

## Adapter

| setting | value |
|---|---|
{table}
{selection}{results}"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _selection_section(selection: dict | None) -> str:
    """The card's account of how `method="auto"` chose the method (`config.method_selection`); "" without one."""
    if not selection:
        return ""
    lines = []
    for row in selection.get("table", []):
        if row.get("status") == "skipped":
            reason = " ".join(str(row.get("reason", "")).replace("|", "/").split())
            note = "skipped: " + (reason if len(reason) <= 160 else reason[:157] + "...")
            lines.append(f"| {row['method']} | - | - | {note} |")
        else:
            nll = row.get("validation_nll")
            note = "**chosen**" if row.get("chosen") else ""
            lines.append(f"| {row['method']} | {row['validation_accuracy']:.4f} | "
                         f"{'-' if nll is None else f'{nll:.4f}'} | {note} |")  # fmt: skip
    return (
        f'\n## Method selection\n\nThe method was chosen by `method="auto"`: every candidate was fitted from one '
        f"extraction of the few-shot images, and the one kept has {selection.get('rule', 'the best accuracy')} "
        f"(a validation split of {selection.get('num_validation')} images; no test split was seen).\n\n"
        "| candidate | validation accuracy | validation NLL | note |\n|---|---:|---:|---|\n" + "\n".join(lines) + "\n"
    )


def _own_fields(method: str) -> list[tuple[str, str]]:
    """(name, label) of the config fields the method declares (its `config_fields`), which the card lists: the label
    is the name in words with the symbol of docs/methods.md, e.g. "sharpness (beta)"."""
    from .methods import get_method_class

    fields = get_method_class(method).config_fields
    rows = []
    for field in dataclasses.fields(fields) if fields is not None else ():
        symbol = field.metadata.get("symbol")
        rows.append((field.name, field.name.replace("_", " ") + (f" ({symbol})" if symbol else "")))
    return rows


def push_adapter_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    base_model_id: str | None = None,
    datasets: list[str] | None = None,
    space_id: str | None = None,
) -> str:
    """Uploads exactly the adapter files and our card to ``repo_id``; returns the commit URL.

    A `base_model_name_or_path` that is a local path would make the pushed repo unusable: it is refused unless
    ``base_model_id`` names the Hub id to record in the pushed config and card. ``space_id``: the card links the
    adapter's Space there (`xmadapter push --space` uploads it after the adapter).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or not repo_id.strip():
        raise ValueError(f"`repo_id` must be a non-empty string like 'user/name'; got {repo_id!r}.")
    base = base_model_id or model.config.base_model_name_or_path
    if not base or (base_model_id is None and _looks_local(base)):
        raise ValueError(
            f"The backbone is recorded as {base!r}, a local path (or nothing): a pushed adapter could not load it. "
            "Pass `base_model_id=` with the backbone's Hub id (e.g. 'openai/clip-vit-base-patch16')."
        )
    if model.processor is None:
        raise ValueError("The model has no processor: its image settings are needed for `pipeline(...)` users.")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="xmadapter-push-") as folder:
        model.save_pretrained(folder)
        config_path = Path(folder) / CONFIG_NAME
        saved = json.loads(config_path.read_text())
        saved["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        card_config = type(model.config).from_dict(saved)
        build_model_card(card_config, repo_id, datasets=datasets, space_id=space_id).save(Path(folder) / "README.md")
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=list(PUSHED_FILES),
            commit_message=commit_message or f"Upload {model.config.method} adapter with xmadapter-hf",
            revision=revision,
            create_pr=create_pr,
        )
    return str(getattr(info, "commit_url", info))


class PushAdapterCallback(TrainerCallback):
    """Pushes the adapter files and our card at the end of training (main process only), instead of
    `Trainer.push_to_hub`, which would upload the whole output directory, `training_args.bin` (a pickle) included.

    ```python
    >>> trainer = Trainer(model=model, args=args, callbacks=[PushAdapterCallback("user/my-adapter")])  # doctest: +SKIP
    ```
    """

    def __init__(self, repo_id: str, **push_kwargs):
        self.repo_id = repo_id
        self.push_kwargs = push_kwargs
        self.pushed_url: str | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self.pushed_url = push_adapter_to_hub(model, self.repo_id, **self.push_kwargs)
        return control
