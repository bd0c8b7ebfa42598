"""Hub: adapter-only push with our card, loading by repo id in a fresh process, the Trainer path, offline use.

Runs the real `huggingface_hub` client against `hub_server.LocalHub` on loopback. What that server does not test:
LFS/Xet uploads (every file goes as a regular blob), authentication, permissions, gated or private repos.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CLASS_NAMES
from hub_server import hub_env, local_hub_fixture, patched_endpoint  # noqa: F401
from huggingface_hub import ModelCard
from safetensors.torch import load, save_file

from xmadapter_hf import XMAdapterForImageClassification
from xmadapter_hf.hub import PUSHED_FILES, PushAdapterCallback, build_model_card
from xmadapter_hf.testing import save_tiny_clip, tiny_clip, tiny_image_dataset

BACKBONE_REPO = "local-user/tiny-clip"


@pytest.fixture
def hub_with_backbone(local_hub, tmp_path):
    """The hub holds the tiny CLIP as a backbone repo; returns (hub, local copy of the backbone)."""
    folder = Path(save_tiny_clip(tmp_path / "tiny-clip"))
    local_hub.create_repo(BACKBONE_REPO)
    local_hub.commit(BACKBONE_REPO, {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()})
    return local_hub, folder


def _adapter(folder, few_shot_dataset, method="xmadapter"):
    model = XMAdapterForImageClassification.from_clip(str(folder), CLASS_NAMES, method=method, sharpness=20.0)
    model.build_cache(few_shot_dataset, augment_views=1, show_progress=False)
    model.config.evaluation = {"accuracy": 0.75, "split": "test", "dataset": "generated stripes"}
    return model


def _run(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_push_uploads_exactly_the_adapter_and_loads_in_a_fresh_process(
    hub_with_backbone, few_shot_dataset, test_pixels, tmp_path
):
    hub, folder = hub_with_backbone
    model = _adapter(folder, few_shot_dataset)
    with patched_endpoint(hub, tmp_path / "home-push"):
        with pytest.raises(ValueError, match="local path"):
            model.push_to_hub("local-user/adapter")
        model.push_to_hub("local-user/adapter", base_model_id=BACKBONE_REPO, datasets=["generated-stripes"])
    assert hub.uploads("local-user/adapter") == [set(PUSHED_FILES)]
    files = hub.files("local-user/adapter")
    assert set(files) == set(PUSHED_FILES)
    tensors = load(files["model.safetensors"])
    assert tensors and not any(k.startswith("clip.") for k in tensors)
    assert json.loads(files["config.json"])["base_model_name_or_path"] == BACKBONE_REPO

    pixels, _ = test_pixels
    save_file({"pixels": pixels}, tmp_path / "pixels.safetensors")
    expected = model(pixel_values=pixels).logits
    code = textwrap.dedent(f"""
        import torch
        from PIL import Image
        from safetensors.torch import load_file, save_file
        import xmadapter_hf
        from transformers import AutoModelForImageClassification, pipeline
        pixels = load_file("pixels.safetensors")["pixels"]
        model = xmadapter_hf.XMAdapterForImageClassification.from_pretrained("local-user/adapter")
        auto = AutoModelForImageClassification.from_pretrained("local-user/adapter")
        classifier = pipeline("image-classification", model="local-user/adapter")
        with torch.no_grad():
            pipe_logits = classifier.model(pixel_values=pixels).logits
        labels = [p["label"] for p in classifier(Image.new("RGB", (30, 30), (200, 30, 30)), top_k=4)]
        assert sorted(labels) == sorted({CLASS_NAMES!r}), labels
        save_file({{"direct": model(pixel_values=pixels).logits, "auto": auto(pixel_values=pixels).logits,
                   "pipeline": pipe_logits}}, "logits.safetensors")
    """)
    _run(code, hub_env(hub, tmp_path / "home-fresh"), tmp_path)
    logits = load((tmp_path / "logits.safetensors").read_bytes())
    for name in ("direct", "auto", "pipeline"):
        assert torch.equal(logits[name], expected), name


def test_model_card_metadata_and_usage_snippet(hub_with_backbone, few_shot_dataset, tmp_path):
    hub, folder = hub_with_backbone
    model = _adapter(folder, few_shot_dataset, method="tip-adapter")
    with patched_endpoint(hub, tmp_path / "home-push"):
        model.push_to_hub("local-user/card", base_model_id=BACKBONE_REPO, datasets=["generated-stripes"])
    card = ModelCard(hub.files("local-user/card")["README.md"].decode())
    meta = card.data.to_dict()
    assert meta["library_name"] == "xmadapter-hf"
    assert meta["base_model"] == BACKBONE_REPO
    assert meta["pipeline_tag"] == "image-classification"
    assert "tip-adapter" in meta["tags"] and "xmadapter-hf" in meta["tags"]
    assert meta["datasets"] == ["generated-stripes"] and meta["metrics"] == ["accuracy"]
    assert "| method | tip-adapter |" in card.text and "| shots per class | 4 |" in card.text
    assert f"| sharpness (beta) | {model.config.sharpness:.4g} |" in card.text
    assert "| accuracy | 0.75 |" in card.text
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    result = _run(snippet, hub_env(hub, tmp_path / "home-snippet"), tmp_path)
    assert CLASS_NAMES[0] in result.stdout


def test_trainer_callback_pushes_our_files_and_card(hub_with_backbone, few_shot_dataset, cache_embeds, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from xmadapter_hf.training import build_optimizer

    hub, folder = hub_with_backbone
    model = _adapter(folder, few_shot_dataset, method="tip-adapter-f")
    raw, labels = cache_embeds
    dataset = Dataset.from_dict({"image_embeds": raw.tolist(), "labels": labels.tolist()}).with_format("torch")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=8, report_to=[], use_cpu=True,
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    callback = PushAdapterCallback("local-user/trained", base_model_id=BACKBONE_REPO)
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, callbacks=[callback],
        optimizers=build_optimizer(model, num_training_steps=2),
    )  # fmt: skip
    with patched_endpoint(hub, tmp_path / "home-push"):
        trainer.train()
    assert hub.uploads("local-user/trained") == [set(PUSHED_FILES)]
    readme = hub.files("local-user/trained")["README.md"].decode()
    assert "library_name: xmadapter-hf" in readme and "| method | tip-adapter-f |" in readme
    assert "training_args.bin" not in hub.files("local-user/trained")


def test_offline_loads_from_cache_and_names_a_missing_backbone(hub_with_backbone, few_shot_dataset, tmp_path):
    hub, folder = hub_with_backbone
    model = _adapter(folder, few_shot_dataset, method="tip-adapter")
    with patched_endpoint(hub, tmp_path / "home-push"):
        model.push_to_hub("local-user/offline", base_model_id=BACKBONE_REPO)
    # a cache that has the adapter but not the backbone
    partial = tmp_path / "home-partial"
    fetch = "from huggingface_hub import hf_hub_download\n" + "".join(
        f"hf_hub_download('local-user/offline', {name!r})\n" for name in PUSHED_FILES
    )
    _run(fetch, hub_env(hub, partial), tmp_path)
    load = "import xmadapter_hf\nxmadapter_hf.XMAdapterForImageClassification.from_pretrained('local-user/offline')\n"
    result = subprocess.run(
        [sys.executable, "-c", load], env=hub_env(hub, partial, offline=True), cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"Could not load the backbone '{BACKBONE_REPO}'" in result.stderr
    # once loaded online, the same load works offline from the cache
    full = tmp_path / "home-full"
    _run(load, hub_env(hub, full), tmp_path)
    requests = len(hub.requests)
    _run(load, hub_env(hub, full, offline=True), tmp_path)
    assert len(hub.requests) == requests, "offline must not reach the server"


def test_a_pushed_meta_adapter_is_applied_online_to_other_classes_in_a_fresh_process(
    hub_with_backbone, few_shot_dataset, tmp_path
):
    """Meta-Adapter's online use over the Hub: pushed with its (meta-training) classes; a fresh process loads it by
    repo id with other class names, builds the cache from their support images and predicts, with no training."""
    hub, folder = hub_with_backbone
    model = _adapter(folder, few_shot_dataset, method="meta-adapter")
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.05 * torch.randn_like(p))  # as if meta-trained
    with patched_endpoint(hub, tmp_path / "home-push"):
        model.push_to_hub("local-user/meta", base_model_id=BACKBONE_REPO)
    novel = ["purple grape", "white cloud", "black night"]
    support = tiny_image_dataset(num_classes=3, shots=2, seed=7)
    support.save_to_disk(str(tmp_path / "support"))
    probe = torch.nn.functional.normalize(torch.randn(5, model.embed_dim, generator=torch.Generator().manual_seed(0)))
    save_file({"probe": probe}, tmp_path / "probe.safetensors")
    code = textwrap.dedent(f"""
        import torch
        from datasets import load_from_disk
        from safetensors.torch import load_file, save_file
        from xmadapter_hf import XMAdapterForImageClassification
        model = XMAdapterForImageClassification.from_pretrained("local-user/meta", class_names={novel!r})
        model.build_cache(load_from_disk("support"), augment_views=1, show_progress=False)
        with torch.no_grad():
            logits = model(image_embeds=load_file("probe.safetensors")["probe"]).logits
        save_file({{"logits": logits, "q": model.method.q_proj.weight}}, "online.safetensors")
    """)
    _run(code, hub_env(hub, tmp_path / "home-fresh"), tmp_path)
    online = load((tmp_path / "online.safetensors").read_bytes())
    assert online["logits"].shape == (5, 3)
    assert torch.equal(online["q"], model.method.q_proj.weight), "the meta-trained weights arrive unchanged"
    model.save_pretrained(tmp_path / "local")
    here = XMAdapterForImageClassification.from_pretrained(
        tmp_path / "local", clip_model=model.clip, processor=model.processor, class_names=novel
    )
    here.build_cache(support, augment_views=1, show_progress=False)
    with torch.no_grad():
        torch.testing.assert_close(online["logits"], here(image_embeds=probe).logits, atol=1e-5, rtol=0)


def test_a_damaged_adapter_from_the_hub_is_refused_naming_the_file_and_the_repo(make_model, local_hub, tmp_path):
    from test_integrity import damage_tensor_bytes

    make_model("tip-adapter").save_pretrained(tmp_path / "adapter")
    damage_tensor_bytes(tmp_path / "adapter" / "model.safetensors")
    local_hub.commit("local-user/damaged", {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()})
    clip, processor = tiny_clip()
    with patched_endpoint(local_hub, tmp_path / "home"):
        with pytest.raises(
            OSError, match=r"model.safetensors' \(downloaded from the Hub repo 'local-user/damaged'\) is damaged"
        ):
            XMAdapterForImageClassification.from_pretrained("local-user/damaged", clip_model=clip, processor=processor)


@pytest.mark.parametrize("method", ["tip-adapter", "meta-adapter", "zero-shot"])
def test_saving_an_adapter_that_needs_a_cache_without_one_warns_and_the_card_says_so(
    clip_and_processor, cache_embeds, method, tmp_path, caplog
):
    clip, processor = clip_and_processor
    model = XMAdapterForImageClassification.from_clip(clip, CLASS_NAMES, processor=processor, method=method)
    needs_cache = method != "zero-shot"
    with caplog.at_level(logging.WARNING, logger="xmadapter_hf"):
        model.save_pretrained(tmp_path / "empty")
    warned = [r.getMessage() for r in caplog.records if "has no cache" in r.getMessage()]
    assert len(warned) == needs_cache and all(f"this {method} adapter has no cache" in m for m in warned)
    card = build_model_card(model.config, "me/empty").text
    assert ("**No cache.** This" in card and "`model.build_cache(support_set)`" in card) == needs_cache
    model.set_cache(*cache_embeds)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xmadapter_hf"):
        model.save_pretrained(tmp_path / "full")
    assert not caplog.records and "No cache" not in build_model_card(model.config, "me/full").text
