"""Tests of the fake Hub in ``hub_server.py``, driven by the real ``huggingface_hub`` / ``transformers`` clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hub_server import LocalHub, hub_env, local_hub_fixture, patched_endpoint  # noqa: F401 (fixture `local_hub`)

REPO = "tester/fake-hub-check"
FILES = {
    "config.json": b'{"answer": 42}\n',
    "weights/part-0.bin": bytes(range(256)) * 40,
    "notes.txt": b"plain text\n",
}


def _run_child(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _write_folder(root, files: dict[str, bytes]) -> None:
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


def test_create_repo_and_upload_folder_record_exactly_what_was_sent(local_hub: LocalHub, tmp_path) -> None:
    import huggingface_hub as hf

    folder = tmp_path / "folder"
    _write_folder(folder, FILES)
    with patched_endpoint(local_hub, tmp_path / "home"):
        url = hf.create_repo(REPO, exist_ok=True)
        assert url.repo_id == REPO
        assert hf.create_repo(REPO, exist_ok=True).repo_id == REPO  # 409 -> exist_ok path
        hf.upload_folder(repo_id=REPO, folder_path=folder, commit_message="first")

        assert local_hub.files(REPO) == FILES
        assert local_hub.uploads(REPO) == [set(FILES)]
        info = hf.model_info(REPO)
        assert info.sha == local_hub.head(REPO)
        assert sorted(s.rfilename for s in info.siblings) == sorted(FILES)
        assert sorted(hf.list_repo_files(REPO)) == sorted(FILES)

        # Second push: the client's preupload no-op check (remote git oid) drops unchanged files.
        (folder / "notes.txt").write_bytes(b"changed\n")
        hf.upload_folder(repo_id=REPO, folder_path=folder, commit_message="second")
        assert local_hub.uploads(REPO) == [set(FILES), {"notes.txt"}]
        assert local_hub.files(REPO)["notes.txt"] == b"changed\n"
        assert [c["message"] for c in local_hub.commits(REPO)] == ["initial commit", "first", "second"]

        hf.delete_file("notes.txt", repo_id=REPO)
        assert "notes.txt" not in local_hub.files(REPO)
        assert local_hub.commits(REPO)[-1]["deleted"] == {"notes.txt"}

    assert local_hub.unhandled == [] and local_hub.errors == []


def test_missing_file_raises_entry_not_found_in_process(local_hub: LocalHub, tmp_path) -> None:
    import huggingface_hub as hf
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    local_hub.commit(REPO, FILES)
    with patched_endpoint(local_hub, tmp_path / "home"):
        with pytest.raises(EntryNotFoundError):
            hf.hf_hub_download(REPO, "nope.txt")
        with pytest.raises(RevisionNotFoundError):
            hf.hf_hub_download(REPO, "config.json", revision="no-such-branch")
        with pytest.raises(RepositoryNotFoundError):
            hf.hf_hub_download("tester/no-such-repo", "config.json")
        # the miss was cached against the commit, like with the real Hub
        no_exist = tmp_path / "home" / "hub" / "models--tester--fake-hub-check" / ".no_exist" / local_hub.head(REPO)
        assert (no_exist / "nope.txt").exists()


def test_hf_hub_download_in_fresh_subprocess(local_hub: LocalHub, tmp_path) -> None:
    local_hub.commit(REPO, FILES)
    code = """
        import json, sys
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
        out = {}
        for name in ("config.json", "weights/part-0.bin"):
            with open(hf_hub_download(sys.argv[1], name), "rb") as f:
                out[name] = f.read().hex()
        try:
            hf_hub_download(sys.argv[1], "missing.txt")
        except EntryNotFoundError as exc:
            out["missing"] = type(exc).__name__
        print(json.dumps(out))
    """
    proc = _run_child(code, hub_env(local_hub, tmp_path / "home"), REPO)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bytes.fromhex(out["config.json"]) == FILES["config.json"]
    assert bytes.fromhex(out["weights/part-0.bin"]) == FILES["weights/part-0.bin"]
    assert out["missing"] == "RemoteEntryNotFoundError"
    heads = [(m, p) for m, p in local_hub.requests if m == "HEAD"]
    assert ("HEAD", f"/{REPO}/resolve/main/config.json") in heads
    assert local_hub.unhandled == [] and local_hub.errors == []


def test_snapshot_download(local_hub: LocalHub, tmp_path) -> None:
    import huggingface_hub as hf

    sha = local_hub.commit(REPO, FILES)
    with patched_endpoint(local_hub, tmp_path / "home"):
        folder = hf.snapshot_download(REPO)
        partial = hf.snapshot_download(REPO, allow_patterns=["*.json"], local_dir=tmp_path / "partial")
    assert os.path.samefile(partial, tmp_path / "partial")
    assert os.path.basename(folder) == sha
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
    assert got == FILES
    assert (tmp_path / "partial" / "config.json").read_bytes() == FILES["config.json"]
    assert not (tmp_path / "partial" / "notes.txt").exists()
    assert local_hub.unhandled == [] and local_hub.errors == []


def test_tiny_clip_push_to_hub_then_from_pretrained_in_subprocess_and_offline(local_hub: LocalHub, tmp_path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=99, max_position_embeddings=20, bos_token_id=0, pad_token_id=1, eos_token_id=2)
    layers = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    config = CLIPConfig(
        text_config={**text, **layers},
        vision_config={**layers, "image_size": 30, "patch_size": 2},
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    repo_id = "tester/tiny-clip"
    with patched_endpoint(local_hub, tmp_path / "push-home"):
        model.push_to_hub(repo_id)
    assert local_hub.uploads(repo_id) == [{"config.json", "model.safetensors", "README.md"}]

    code = """
        import sys, torch
        from transformers import AutoConfig, CLIPModel
        config = AutoConfig.from_pretrained(sys.argv[1])
        assert type(config).__name__ == "CLIPConfig", type(config)
        assert config.projection_dim == 32 and config.vision_config.image_size == 30
        model = CLIPModel.from_pretrained(sys.argv[1])
        torch.save(model.state_dict(), sys.argv[2])
    """
    home = tmp_path / "home"
    online = tmp_path / "online.pt"
    _run_child(code, hub_env(local_hub, home), repo_id, str(online))
    expected = model.state_dict()
    loaded = torch.load(online)
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)

    # Offline: the same HF_HOME serves everything from the cache, the server sees no request at all.
    before = len(local_hub.requests)
    offline = tmp_path / "offline.pt"
    _run_child(code, hub_env(local_hub, home, offline=True), repo_id, str(offline))
    assert len(local_hub.requests) == before
    assert torch.equal(torch.load(offline)["logit_scale"], expected["logit_scale"])
    assert local_hub.unhandled == [] and local_hub.errors == []


def test_patched_endpoint_restores_everything(local_hub: LocalHub, tmp_path) -> None:
    from huggingface_hub import constants, hf_api
    from transformers.utils import hub as transformers_hub

    before = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE, hf_api.api.endpoint)
    shared = transformers_hub.hf_api()  # the shared HfApi exists before patching
    shared_endpoint = shared.endpoint
    with patched_endpoint(local_hub, tmp_path / "home") as endpoint:
        assert endpoint == local_hub.endpoint
        assert constants.ENDPOINT == hf_api.api.endpoint == transformers_hub.hf_api().endpoint == endpoint
        assert constants.HF_HUB_CACHE == str(tmp_path / "home" / "hub")
        assert os.environ["HF_TOKEN"] != ""
    after = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE, hf_api.api.endpoint)
    assert after == before
    assert transformers_hub.hf_api() is shared and shared.endpoint == shared_endpoint


def test_raw_http_unknown_endpoint_range_and_stop() -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never via a proxy
    with LocalHub() as hub:
        with pytest.raises(urllib.error.HTTPError) as info:
            opener.open(f"{hub.endpoint}/api/spaces-hardware?x=1", timeout=10)
        assert info.value.code == 404
        assert "does not implement" in json.loads(info.value.read())["error"]
        assert hub.unhandled == [("GET", "/api/spaces-hardware?x=1")]

        # resumed downloads send a Range header
        hub.commit(REPO, {"blob.bin": bytes(range(100))})
        request = urllib.request.Request(
            f"{hub.endpoint}/{REPO}/resolve/main/blob.bin", headers={"Range": "bytes=10-"}
        )
        with opener.open(request, timeout=10) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == "bytes 10-99/100"
            assert response.read() == bytes(range(10, 100))
        endpoint = hub.endpoint
    with pytest.raises(urllib.error.URLError):
        opener.open(f"{endpoint}/api/whoami-v2", timeout=5)
    with pytest.raises(KeyError):
        hub.files("tester/never-created")
