"""The parallel input pipeline (worker processes) and the embedding store (claims, shards, several processes).

The process tests launch tests/fill_store.py for real: one process alone, two processes under torchrun through
`extract_embeddings_distributed`, and two independent processes racing into one store (started together by a file
barrier, their backbone slowed so that they interleave). They all run at once, in one module fixture.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fill_store import SETTINGS, task
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset

from xmadapter_hf.data.extraction import extract_embeddings, extraction_cache_key
from xmadapter_hf.data.loader import SMALL_JOB_VIEWS, WORKERS_ENV, available_cores, resolve_num_workers
from xmadapter_hf.testing import tiny_image_dataset

ROOT = Path(__file__).resolve().parents[1]
HELPER = str(ROOT / "tests" / "fill_store.py")
TIMEOUT = 240
ITEMS = 24  # fill_store.py's task: 6 classes x 4 shots


# ------------------------------------------------------------------------------------------- worker processes
class _ThreadRecordingPairs(Dataset):
    """(image, label) pairs that record, per process, how many torch threads the process reading them runs."""

    def __init__(self, pairs, record: Path):
        self.pairs, self.record = pairs, record

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index):
        (self.record / str(os.getpid())).write_text(str(torch.get_num_threads()))
        return self.pairs[index]


def test_embeddings_are_bit_identical_for_any_number_of_workers(clip_and_processor, tmp_path):
    clip, processor = clip_and_processor
    data = tiny_image_dataset(num_classes=3, shots=4, noise=0.5)
    pairs = _ThreadRecordingPairs([(data[i]["image"], data[i]["label"]) for i in range(len(data))], tmp_path)
    kwargs = dict(augment_views=3, seed=2, show_progress=False)
    alone = extract_embeddings(clip, processor, pairs, batch_size=6, num_workers=0, **kwargs)
    workers = extract_embeddings(clip, processor, pairs, batch_size=6, num_workers=2, **kwargs)
    assert torch.equal(alone.embeds, workers.embeds) and torch.equal(alone.labels, workers.labels)
    # Workers really ran (other processes read the items), each with one torch thread, not one per core.
    threads = {int(p.name): int(p.read_text()) for p in tmp_path.iterdir()}
    assert len(set(threads) - {os.getpid()}) == 2 and all(threads[pid] == 1 for pid in threads if pid != os.getpid())
    # Across batch sizes the draws are the same; only the backbone's float rounding may differ.
    other = extract_embeddings(clip, processor, pairs, batch_size=9, num_workers=0, **kwargs)
    torch.testing.assert_close(other.embeds, alone.embeds, atol=1e-6, rtol=1e-6)


def test_num_workers_defaults_and_validation(monkeypatch):
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert resolve_num_workers(None, SMALL_JOB_VIEWS - 1) == 0, "a small job runs in the main process"
    cores = available_cores()
    assert resolve_num_workers(None, 100_000) == (0 if cores < 2 else min(cores, 32))
    assert resolve_num_workers(None, 4 * SMALL_JOB_VIEWS, view_size=32) == 0, "a small view costs less"
    assert resolve_num_workers(None, SMALL_JOB_VIEWS - 1, num_items=10) == resolve_num_workers(None, 10**6), (
        "decoding counts too"
    )
    assert resolve_num_workers(3, 1) == 3 and resolve_num_workers(0, 10**6) == 0
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_workers"):
            resolve_num_workers(bad, 10)
    monkeypatch.setenv(WORKERS_ENV, "3")  # what the CLI's --workers sets: the default, under an explicit argument
    assert resolve_num_workers(None, 1) == 3 and resolve_num_workers(1, 10**6) == 1
    monkeypatch.setenv(WORKERS_ENV, "-1")
    with pytest.raises(ValueError, match=WORKERS_ENV):
        resolve_num_workers(None, 1)


def test_bad_num_workers_is_refused_before_anything_is_written(clip_and_processor, few_shot_dataset, tmp_path):
    clip, processor = clip_and_processor
    with pytest.raises(ValueError, match="num_workers"):
        extract_embeddings(clip, processor, few_shot_dataset, num_workers=-2, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------- claims, in-process
def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def _extract_in_thread(*args, **kwargs) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["out"] = extract_embeddings(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - reported by the test
            result["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_claims_of_dead_processes_are_taken_over_and_live_ones_waited_for(clip_and_processor, tmp_path):
    clip, processor = clip_and_processor
    data = tiny_image_dataset(num_classes=2, shots=4, noise=0.5)
    kwargs = dict(augment_views=1, batch_size=2, shard_size=2, num_workers=0, show_progress=False, cache_dir=tmp_path)
    key, _ = extraction_cache_key(clip, processor, data, augment_views=1)
    claims = tmp_path / key / "claims"
    claims.mkdir(parents=True)
    here = socket.gethostname()
    # items 0-1: a process of this host that has died; items 2-3: another host's, silent for two hours;
    # items 4-5: another host's, alive (fresh heartbeat)
    for name, host, pid, items in (("a", here, _dead_pid(), [0, 1]), ("b", "elsewhere", 1, [2, 3]),
                                   ("c", "elsewhere", 1, [4, 5])):  # fmt: skip
        (claims / f"{name}.json").write_text(json.dumps({"host": host, "pid": pid, "token": name, "items": items}))
    os.utime(claims / "b.json", (time.time() - 7200, time.time() - 7200))
    thread, result = _extract_in_thread(clip, processor, data, **kwargs)
    thread.join(timeout=3)
    assert thread.is_alive(), "items claimed by a live process are waited for, not embedded twice"
    left = {p.name for p in claims.iterdir()}
    assert "c.json" in left and not left & {"a.json", "b.json"}, "the dead and silent claims are taken over"
    (claims / "c.json").unlink()  # the other host finishes without storing: its items are claimed again
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" not in result, result.get("error")
    out = result["out"]
    assert out.images_embedded == 8 and not list(claims.iterdir())
    plain = extract_embeddings(clip, processor, data, **{**kwargs, "cache_dir": None})
    assert torch.equal(out.embeds, plain.embeds)


# ------------------------------------------------------------------------------------------------ real processes
def _command(store: Path, report: Path, *extra: str, processes: int = 1) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*launcher, HELPER, str(store), str(report), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One process; two under torchrun; two racing into one store. All launched at once (about 15 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("store")
    race = ["--barrier", str(tmp / "barrier"), "--parties", "2", "--delay", "0.05"]
    commands = [
        _command(tmp / "one", tmp / "one"),
        _command(tmp / "two", tmp / "two", "--distributed", processes=2),
        _command(tmp / "race", tmp / "race-a", *race),
        _command(tmp / "race", tmp / "race-b", *race, "--reverse"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    processes = [
        subprocess.Popen(
            c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )  # fmt: skip
        for c in commands
    ]
    deadline = time.monotonic() + TIMEOUT
    for command, process in zip(commands, processes):
        try:
            output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
            output, _ = process.communicate()
            pytest.fail(f"{' '.join(command)} ran past {TIMEOUT} s:\n{output[-6000:]}")
        if process.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed ({process.returncode}):\n{output[-6000:]}")
    return tmp


def _report(runs: Path, name: str, rank: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    stem = f"{runs / name}.rank{rank}"
    return json.loads(Path(f"{stem}.json").read_text()), load_file(f"{stem}.safetensors")


def _shards(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted(folder.glob("shard-*.safetensors"))}


def _no_leftovers(folder: Path) -> None:
    assert not list(folder.glob(".*.tmp")), "no temporary file is left"
    assert not list((folder / "claims").iterdir()), "no claim is left"


@pytest.mark.integration
def test_two_processes_filling_one_store_embed_each_image_once(runs):
    (a, a_out), (b, b_out) = _report(runs, "race-a"), _report(runs, "race-b")
    assert a["cache_path"] == b["cache_path"], "two processes compute the same store key"
    assert a["items"] > 0 and b["items"] > 0, "both processes embedded part of the store"
    assert a["items"] + b["items"] == ITEMS, "each image is embedded once"
    assert a["images"] + b["images"] == ITEMS * SETTINGS["augment_views"], "each view went through the backbone once"
    folder = Path(a["cache_path"])
    _no_leftovers(folder)
    stored = []
    for name, shard in _shards(folder).items():
        with safe_open(str(folder / name), framework="pt") as handle:
            assert handle.metadata()["key"] == folder.name
        assert shard["embeds"].shape == (SETTINGS["augment_views"], len(shard["indices"]), 32)
        stored.extend(shard["indices"].tolist())
    assert sorted(stored) == list(range(ITEMS)), "every image is in exactly one shard"
    assert torch.equal(a_out["embeds"], b_out["embeds"].flip(1)), "both read the same embeddings back"
    _, alone = _report(runs, "one")
    torch.testing.assert_close(a_out["embeds"], alone["embeds"], atol=1e-6, rtol=1e-6)
    assert torch.equal(a_out["labels"], alone["labels"])


@pytest.mark.integration
def test_store_filled_by_two_processes_equals_one_process_bit_for_bit(runs, monkeypatch):
    (one, one_out), ranks = _report(runs, "one"), [_report(runs, "two", rank) for rank in (0, 1)]
    assert one["items"] == ITEMS
    assert [report["items"] for report, _ in ranks] == [ITEMS // 2, ITEMS // 2], "each process embedded its share"
    for _, out in ranks:
        assert torch.equal(out["embeds"], one_out["embeds"]) and torch.equal(out["labels"], one_out["labels"])
    two_folder, one_folder = Path(ranks[0][0]["cache_path"]), Path(one["cache_path"])
    assert two_folder.name == one_folder.name
    _no_leftovers(two_folder)
    two_shards, one_shards = _shards(two_folder), _shards(one_folder)
    assert list(two_shards) == list(one_shards) and len(one_shards) == ITEMS // SETTINGS["shard_size"]
    for name, shard in two_shards.items():
        assert all(torch.equal(shard[k], one_shards[name][k]) for k in ("indices", "embeds", "labels")), name
    # One process reads the 2-process store back without a single backbone forward.
    clip, processor, data = task()
    monkeypatch.setattr(clip, "get_image_features", lambda *a, **k: pytest.fail("a backbone forward"))
    again = extract_embeddings(clip, processor, data, cache_dir=runs / "two", **SETTINGS)
    assert again.images_embedded == 0 and torch.equal(again.embeds, one_out["embeds"])
