"""Data parallelism and mixed precision, run for real: 2 CPU processes (torchrun + gloo), bf16 autocast on CPU.

The examples are launched as subprocesses, once each per module (a launch costs seconds): the Accelerate loop on the
embedding path and the Trainer on the pixel path, each with 2 processes and with 1 process at the same global batch
(per-process batch 4 x 2 processes = 8 x 1 process, accumulation 2, shuffled, hard-sample weighting on), plus the
Accelerate loop in bf16. Every process writes a report: JSON and safetensors (never pickle).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xmadapter_hf import functional as Fn
from xmadapter_hf.data.distributed import extract_embeddings_distributed, shard_bounds
from xmadapter_hf.data.extraction import extract_embeddings
from xmadapter_hf.methods.cache import affinity
from xmadapter_hf.testing import tiny_image_dataset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# 10 classes x 4 shots: 40 images, 80 (view, image) training items, both divisible by the global batch of 8 (so that
# Accelerate never pads a training batch); 410 test images: 2 x 4 does not divide them, so evaluation is padded and
# gather_for_metrics must drop the padding. Noise 0.75: learnable (fp32 top-1 about 5x chance) but not trivial.
TASK = "--classes 10 --shots 4 --views 2 --test-shots 41 --noise 0.75 --seed 3 --steps 10 --accumulation 2".split()
TASK += ["--hard-sample-strength", "1.0"]
TIMEOUT = 300


def _launch(tmp: Path, name: str, script: str, args: list[str], processes: int) -> Path:
    """Runs an example with 1 process (plain python) or N (torchrun); returns its report directory."""
    dump, output = tmp / name / "dump", tmp / name / "adapter"
    script_args = [*args, "--dump-dir", str(dump), "--output", str(output)]
    if processes == 1:
        command = [sys.executable, str(EXAMPLES / script), *script_args]
    else:
        # The audit wrapper records, per process, every write into the checkpoint directory.
        wrapped = [str(ROOT / "tests" / "audit_writes.py"), str(output), str(tmp / name / "audit")]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        command += [*wrapped, str(EXAMPLES / script), *script_args]
    (tmp / name / "tmp").mkdir(parents=True)
    env = dict(
        os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp / name / "tmp"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    # A session of its own, so that a hung run is killed with every process torchrun started, not torchrun alone.
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} ran past {TIMEOUT} s:\n{stdout[-4000:]}\n{stderr[-8000:]}")
    if process.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({process.returncode}):\n{stdout[-4000:]}\n{stderr[-8000:]}")
    return tmp / name


def _report(run: Path, rank: int = 0) -> dict:
    return json.loads((run / "dump" / f"rank{rank}.json").read_text())


def _tensors(run: Path, what: str, rank: int = 0) -> dict[str, torch.Tensor]:
    return load_file(run / "dump" / f"rank{rank}_{what}.safetensors")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Launches every run of this module once (about a minute on 2 cores)."""
    tmp = tmp_path_factory.mktemp("distributed")
    return {
        "accelerate-2": _launch(tmp, "accelerate-2", "train_accelerate.py", [*TASK, "--batch-size", "4"], 2),
        "accelerate-1": _launch(tmp, "accelerate-1", "train_accelerate.py", [*TASK, "--batch-size", "8"], 1),
        "accelerate-bf16": _launch(
            tmp, "accelerate-bf16", "train_accelerate.py", [*TASK, "--batch-size", "8", "--mixed-precision", "bf16"], 1
        ),
        "trainer-2": _launch(
            tmp, "trainer-2", "train_trainer.py", [*TASK, "--path", "pixels", "--batch-size", "4"], 2
        ),
        "trainer-1": _launch(
            tmp, "trainer-1", "train_trainer.py", [*TASK, "--path", "pixels", "--batch-size", "8"], 1
        ),
    }


def _assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=tol, rtol=tol, msg=key)


@pytest.mark.integration
@pytest.mark.parametrize("loop", ["accelerate", "trainer"])
def test_two_cpu_processes_train_like_one(runs, loop):
    two, one = runs[f"{loop}-2"], runs[f"{loop}-1"]
    reports = [_report(two, rank) for rank in (0, 1)]
    assert [r["distributed_type"] for r in reports] == ["MULTI_CPU", "MULTI_CPU"]
    assert [r["process_index"] for r in reports] == [0, 1] and reports[0]["num_processes"] == 2
    assert _report(one)["distributed_type"] == "NO"
    assert reports[0]["global_batch"] == _report(one)["global_batch"] == 16
    # Both processes hold the same adapter (bit for bit: DDP all-reduces the same gradient into both)...
    _assert_same_adapter(_tensors(two, "adapter", 0), _tensors(two, "adapter", 1), tol=0)
    # ...which is the one a single process trains with the same global batch and seed.
    _assert_same_adapter(_tensors(two, "adapter", 0), _tensors(one, "adapter"), tol=1e-5)
    adapter = _tensors(one, "adapter")
    assert not torch.allclose(adapter["method.cache_keys"], adapter["cache_embeds"]), "training must move the keys"
    # Evaluation covers each of the 410 test images once, in order, on every process.
    for rank in (0, 1):
        evaluated = _tensors(two, "eval", rank)
        assert evaluated["labels"].tolist() == _tensors(one, "eval")["labels"].tolist()
        torch.testing.assert_close(evaluated["logits"], _tensors(one, "eval")["logits"], atol=1e-4, rtol=1e-4)
    assert reports[0]["num_test"] == _report(one)["num_test"] == 410
    assert reports[0]["accuracy"] == pytest.approx(_report(one)["accuracy"])
    if loop == "trainer":  # the pixel path: a fresh augmentation each epoch, the same epochs on every process
        assert reports[0]["dataset_epochs"] == reports[1]["dataset_epochs"] == _report(one)["dataset_epochs"]
        assert len(reports[0]["dataset_epochs"]) > 1
    if loop == "accelerate":  # the loss the loop reports is the global one, the same on every process
        assert reports[0]["losses"] == pytest.approx(_report(one)["losses"], rel=1e-5)
        assert reports[0]["losses"] == reports[1]["losses"]


@pytest.mark.integration
def test_distributed_extraction_matches_one_process(runs):
    one = _tensors(runs["accelerate-1"], "embeddings")
    for rank in (0, 1):
        two = _tensors(runs["accelerate-2"], "embeddings", rank)
        assert two["train"].shape == one["train"].shape == (2, 40, 32)  # (views, images, C)
        assert torch.equal(two["train_labels"], one["train_labels"])
        torch.testing.assert_close(two["train"], one["train"], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(two["test"], one["test"], atol=1e-6, rtol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("loop", ["accelerate", "trainer"])
def test_only_the_main_process_writes_an_adapter_only_checkpoint(runs, loop):
    run = runs[f"{loop}-2"]
    writes = {rank: json.loads((run / "audit" / f"writes_rank{rank}.json").read_text()) for rank in (0, 1)}
    assert writes[1] == [], f"process 1 wrote into the checkpoint directory: {writes[1]}"
    assert writes[0], "the audit hook saw no write at all from the main process"
    assert [_report(run, rank)["saved_checkpoint"] for rank in (0, 1)] == [True, False]
    files = sorted(p.name for p in (run / "adapter").iterdir())
    assert files == ["config.json", "model.safetensors", "preprocessor_config.json"]  # no training_args.bin pickle
    saved = load_file(run / "adapter" / "model.safetensors")
    assert not any(key.startswith("clip.") for key in saved)
    _assert_same_adapter(saved, _tensors(run, "adapter", 0), tol=0)


@pytest.mark.integration
def test_accelerate_bf16_on_cpu_trains_and_agrees_with_fp32(runs):
    fp32, bf16 = _report(runs["accelerate-1"]), _report(runs["accelerate-bf16"])
    assert bf16["mixed_precision"] == "bf16" and fp32["mixed_precision"] == "no"
    assert fp32["accuracy"] >= 2 * fp32["chance"], "the task must be learnable for the comparison to mean anything"
    assert bf16["test_loss"] < bf16["test_loss_before"], "bf16 training must lower the held-out loss"
    adapter = _tensors(runs["accelerate-bf16"], "adapter")
    assert not torch.allclose(adapter["method.cache_keys"], adapter["cache_embeds"])
    reference, mixed = _tensors(runs["accelerate-1"], "eval"), _tensors(runs["accelerate-bf16"], "eval")
    agreement = (reference["logits"].argmax(-1) == mixed["logits"].argmax(-1)).float().mean().item()
    difference = ((reference["logits"] - mixed["logits"]).abs().max() / reference["logits"].abs().max()).item()
    assert agreement >= 0.99, f"bf16 top-1 agrees with fp32 on {agreement:.2%} of {len(reference['labels'])} images"
    assert difference <= 0.02, f"bf16 logits differ by {difference:.2%} of the largest |logit|"


@pytest.mark.parametrize("inputs", ["image_embeds", "pixel_values"])
def test_affinity_maths_stays_float32_under_bf16_autocast(make_model, cache_embeds, test_pixels, inputs):
    """Autocast would run the cosine matmuls in bf16 (and `index_add` then refuses to mix dtypes): they must not."""
    model = make_model("xmadapter", hard_sample_strength=1.0, sharpness=20.0).train()
    if inputs == "pixel_values":
        features, labels = {"pixel_values": test_pixels[0]}, test_pixels[1]
    else:
        features, labels = {"image_embeds": cache_embeds[0]}, cache_embeds[1]
    index = torch.arange(len(labels)) if inputs == "image_embeds" else None
    queries = Fn.l2_normalize(cache_embeds[0][:3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**features, labels=labels, cache_index=index)
        assert affinity(queries, model.method.cache_keys, 20.0).dtype == torch.float32
        assert Fn.zero_shot_logits(queries, model.class_embeds, 10.0).dtype == torch.float32
    for name in ("logits", "zero_shot_logits", "cache_logits", "image_cache_logits", "text_cache_logits"):
        assert getattr(out, name).dtype == torch.float32, name
    assert out.affinity_ratio.dtype == out.disagreement.dtype == out.loss.dtype == torch.float32
    out.loss.backward()  # and it trains: the learned keys get a float32 gradient
    assert model.method.cache_keys.grad is not None and model.method.cache_keys.grad.dtype == torch.float32
    with torch.no_grad():
        reference = model(**features).logits
    assert (reference.argmax(-1) == out.logits.argmax(-1)).float().mean() >= 0.9
    assert ((reference - out.logits).abs().max() / reference.abs().max()).item() <= 0.02


@pytest.mark.parametrize(
    "method", ["zero-shot", "tip-adapter", "tip-adapter-f", "clip-adapter", "multimodal-adapter", "meta-adapter"]
)
def test_every_method_returns_float32_logits_under_bf16_autocast(make_model, cache_embeds, method):
    model = make_model(method)
    with torch.no_grad():
        reference = model(image_embeds=cache_embeds[0]).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(image_embeds=cache_embeds[0])
    assert out.logits.dtype == out.zero_shot_logits.dtype == torch.float32
    assert out.cache_logits is None or out.cache_logits.dtype == torch.float32
    assert ((reference - out.logits).abs().max() / reference.abs().max()).item() <= 0.02


# ----------------------------------------------------------------------------------- extraction sharding, in-process
class _ThreadedGroup:
    """Stands in for a process group with threads: `gather` concatenates every rank's tensor, in rank order."""

    def __init__(self, world: int):
        self.world, self.barrier, self.slots = world, threading.Barrier(world), {}

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        rank = threading.current_thread().rank
        self.slots[(rank, tensor.dtype)] = tensor
        self.barrier.wait()
        result = torch.cat([self.slots[(r, tensor.dtype)] for r in range(self.world)])
        self.barrier.wait()
        return result


class _FakeAccelerator:
    def __init__(self, world: int, rank: int):
        self.num_processes, self.process_index, self.device = world, rank, torch.device("cpu")
        self.is_main_process = rank == 0


@pytest.mark.parametrize(("items", "world"), [(15, 2), (10, 3), (2, 4)])
def test_extraction_shards_are_reassembled_in_order(clip_and_processor, monkeypatch, items, world):
    """Uneven shards, and more processes than items (empty shards that still join the collectives)."""
    clip, processor = clip_and_processor
    dataset = tiny_image_dataset(num_classes=items, shots=1, noise=0.5)
    order = list(reversed(range(items)))  # `indices` are honoured, in the order given
    expected = extract_embeddings(
        clip, processor, dataset, augment_views=2, seed=1, indices=order, show_progress=False
    )
    results = _threaded_extraction(
        monkeypatch, world, clip, processor, dataset, augment_views=2, seed=1, indices=order, batch_size=3
    )
    for rank in range(world):
        assert torch.equal(results[rank].labels, expected.labels)
        torch.testing.assert_close(results[rank].embeds, expected.embeds, atol=1e-6, rtol=1e-6)
    sizes = [stop - start for start, stop in (shard_bounds(items, world, r) for r in range(world))]
    assert sum(sizes) == items and max(sizes) - min(sizes) <= 1


def _threaded_extraction(monkeypatch, world: int, *args, **kwargs) -> dict[int, object]:
    """`extract_embeddings_distributed` on ``world`` threads standing in for processes; results by rank."""
    group = _ThreadedGroup(world)
    monkeypatch.setattr("xmadapter_hf.data.distributed.gather", group.gather)
    results, errors = {}, []

    def work(rank: int) -> None:
        threading.current_thread().rank = rank
        try:
            results[rank] = extract_embeddings_distributed(_FakeAccelerator(world, rank), *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(error)
            group.barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize(("items", "world"), [(13, 2), (7, 3)])
def test_extraction_over_processes_is_bit_identical_to_one_process(clip_and_processor, monkeypatch, items, world):
    """Shards are runs of whole batches: every image goes through the backbone in the batch one process would use."""
    clip, processor = clip_and_processor
    dataset = tiny_image_dataset(num_classes=items, shots=1, noise=0.5)
    expected = extract_embeddings(clip, processor, dataset, augment_views=2, seed=1, batch_size=2, show_progress=False)
    results = _threaded_extraction(monkeypatch, world, clip, processor, dataset, augment_views=2, seed=1, batch_size=2)
    for rank in range(world):
        assert torch.equal(results[rank].embeds, expected.embeds) and torch.equal(
            results[rank].labels, expected.labels
        )


def test_one_process_extraction_is_plain_extraction(clip_and_processor, few_shot_dataset):
    clip, processor = clip_and_processor
    expected = extract_embeddings(clip, processor, few_shot_dataset, augment_views=0, show_progress=False)
    got = extract_embeddings_distributed(_FakeAccelerator(1, 0), clip, processor, few_shot_dataset, augment_views=0)
    assert torch.equal(got.embeds, expected.embeds) and torch.equal(got.labels, expected.labels)
