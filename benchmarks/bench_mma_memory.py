"""Benchmark: peak memory of the Multi-Modal Adapter's forward + backward on CPU, chunked against unchunked.

Every image's sequence holds the N class text embeddings plus the image (N+1 tokens), so the activations grow as
B * (N+1) * C (and as B * heads * (N+1)^2 where the attention kernel materialises its scores). The method processes
the batch in chunks of `mma_chunk_size` images and, under autograd, checkpoints each chunk; this script measures
what that buys on an ImageNet-sized label set.

Setup: the `MultiModalAdapter` module alone (no CLIP), built from an `XMAdapterConfig` with ``--classes`` classes,
C = ``--dim``, random L2-normalised class and image embeddings, a batch of ``--batch`` images, cross-entropy on
random labels, one forward + backward after a two-image warm-up. Each setting runs in a fresh subprocess so that its
peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, a high-water mark) starts from a clean baseline; the baseline
is read after building the module and the tensors and after the warm-up, just before the measured forward.

Run: ``python benchmarks/bench_mma_memory.py`` (defaults: 1,000 classes, C = 512, batch 256, chunk 32 against
chunk 256 = the whole batch, the `additive` mask).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

GIB = 2**30
TARGET_GIB = 6.0


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB


def worker(args: argparse.Namespace) -> dict:
    """One forward + backward in this process; returns the measurements (run through `main` in a subprocess)."""
    import torch

    from xmadapter_hf import XMAdapterConfig
    from xmadapter_hf.methods import CacheState, MultiModalAdapter

    torch.manual_seed(0)
    config = XMAdapterConfig(
        method="multimodal-adapter",
        class_names=[f"class {i}" for i in range(args.classes)],
        mma_chunk_size=args.chunk,
        mma_mask=args.mask,
    )
    method = MultiModalAdapter(config, args.dim).train()
    class_embeds = torch.nn.functional.normalize(torch.randn(args.classes, args.dim), dim=-1)  # (N, C)
    image_embeds = torch.nn.functional.normalize(torch.randn(args.batch, args.dim), dim=-1)  # (B, C)
    labels = torch.randint(0, args.classes, (args.batch,))
    state = CacheState(class_embeds, torch.zeros(0, args.dim), torch.zeros(0, dtype=torch.long), 100.0)
    # A two-image warm-up takes the one-time costs (kernel selection, lazy initialisation) out of the timing.
    method(image_embeds[:2], state).logits.sum().backward()
    method.zero_grad(set_to_none=True)
    baseline = _max_rss_bytes()
    start = time.perf_counter()
    logits = method(image_embeds, state).logits  # (B, N)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    seconds = time.perf_counter() - start
    grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in method.parameters()))
    return {
        "chunk": args.chunk,
        "baseline_bytes": baseline,
        "peak_bytes": _max_rss_bytes(),
        "seconds": seconds,
        "loss": float(loss),
        "grad_norm": float(grad_norm),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_in_subprocess(args: argparse.Namespace, chunk: int) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--chunk", str(chunk)]
    command += ["--classes", str(args.classes), "--dim", str(args.dim), "--batch", str(args.batch)]
    command += ["--mask", args.mask]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(result: dict, label: str) -> None:
    baseline, peak = result["baseline_bytes"] / GIB, result["peak_bytes"] / GIB
    verdict = "ok" if peak <= TARGET_GIB else "OVER"
    print(
        f"{label:<34} baseline RSS {baseline:.2f} GiB, peak RSS {peak:.2f} GiB (target <= {TARGET_GIB:.0f} GiB: "
        f"{verdict}), forward + backward {result['seconds']:.1f} s, loss {result['loss']:.6f}, "
        f"grad norm {result['grad_norm']:.6f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32, help="mma_chunk_size of the chunked run (config default)")
    parser.add_argument("--mask", default="additive", choices=["additive", "cross-modal"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(
        f"Multi-Modal Adapter, N = {args.classes} classes, C = {args.dim}, batch {args.batch}, mask {args.mask}, "
        f"forward + backward on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"
    )
    chunked = run_in_subprocess(args, args.chunk)
    whole = run_in_subprocess(args, args.batch)
    print(f"torch {chunked['torch']}, {chunked['threads']} threads; each setting in a fresh subprocess")
    report(chunked, f"mma_chunk_size={args.chunk} (chunked):")
    report(whole, f"mma_chunk_size={args.batch} (no chunking):")
    added_chunked = chunked["peak_bytes"] - chunked["baseline_bytes"]
    added_whole = whole["peak_bytes"] - whole["baseline_bytes"]
    print(
        f"peak RSS ratio unchunked / chunked: {whole['peak_bytes'] / chunked['peak_bytes']:.1f}x "
        f"(above the baseline: {added_whole / GIB:.2f} GiB / {added_chunked / GIB:.2f} GiB = "
        f"{added_whole / added_chunked:.1f}x); time ratio chunked / unchunked: "
        f"{chunked['seconds'] / whole['seconds']:.2f}x"
    )
    same = abs(chunked["loss"] - whole["loss"]) <= 1e-5 * max(1.0, abs(whole["loss"]))
    same = same and abs(chunked["grad_norm"] - whole["grad_norm"]) <= 1e-4 * max(1.0, whole["grad_norm"])
    print(f"same loss and gradient norm in both settings: {same}")


if __name__ == "__main__":
    main()
