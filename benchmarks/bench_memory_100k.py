"""Benchmark: peak resident memory of a 100,000-class x 16-shot cache (1.6M entries x 512 dims) classifying 256 images.

Target (docs/design.md, decision 4: "a 100k-class cache must fit on one machine"): peak RSS <= 8 GiB on CPU for
`tip-adapter-f` and `xmadapter` with their cache tensors in float16.

Each case runs in a fresh Python subprocess (peak RSS is a process-wide high-water mark, so cases must not share a
process) that does what a user does: build the model with `from_clip` on a tiny random CLIP of projection dim 512
(the 100,000 class prompts are encoded by its text encoder), fill the cache with `set_cache` from synthetic raw
embeddings (clustered around random class centres; no image could be pushed through a backbone 1.6M times here), and
classify a batch of 256 query embeddings near random class centres. Two ways to get a half-precision cache:

- ``inference``: `model.half_cache()` before `set_cache`: the learned keys are created in float16 directly, no
  float32 copy of the cache ever exists (how an inference-only model of a very large cache is built);
- ``converted``: `set_cache` with float32 trainable keys (what training needs), then `half_cache()`.

The baseline printed beside each peak is the RSS of the same process after the imports and the tiny backbone, before
the adapter: the ratio peak / baseline says how much the 100k-class adapter adds. Peak RSS is `ru_maxrss`.

Run: ``python benchmarks/bench_memory_100k.py`` (``--classes`` and ``--shots`` to change the size).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

TARGET_GIB = 8.0
GIB = 1024**3


def peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes)
    factor = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * factor


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            import os

            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def build_adapter(clip, processor, method: str, mode: str, classes: int, shots: int, dim: int):
    """The 100k-class adapter as a user builds it (see the module docstring); also used by `bench_digest.py`.
    Returns (model, class centres (N, C), the generator, build seconds, cache seconds)."""
    import torch

    from xmadapter_hf import XMAdapterForImageClassification

    names = [f"class {i}" for i in range(classes)]
    started = time.perf_counter()
    model = XMAdapterForImageClassification.from_clip(
        clip, names, processor=processor, method=method, cache_dtype="float16", sharpness=5.0, residual_ratio=1.0,
        text_batch_size=1024,
    )  # fmt: skip
    build_seconds = time.perf_counter() - started
    if mode == "inference":
        model.half_cache()  # before set_cache: the learned keys are created in float16
    # Synthetic raw embeddings, written chunk by chunk into one float16 tensor: (NK, C)
    gen = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=-1)  # (N, C)
    labels = torch.arange(classes).repeat_interleave(shots)  # (NK,)
    embeds = torch.empty(classes * shots, dim, dtype=torch.float16)  # (NK, C)
    for start in range(0, len(labels), 65536):
        part = labels[start : start + 65536]
        embeds[start : start + 65536] = centres[part] + 0.5 * torch.randn(len(part), dim, generator=gen) / dim**0.5
    started = time.perf_counter()
    model.set_cache(embeds, labels)
    del embeds
    if mode == "converted":
        model.half_cache()
    cache_seconds = time.perf_counter() - started
    return model, centres, gen, build_seconds, cache_seconds


def child(method: str, mode: str, classes: int, shots: int, dim: int, batch: int, repeats: int = 1) -> dict:
    """One case, in this (fresh) process; also used by `bench_scaling.py`. Returns what it measured."""
    import torch

    from xmadapter_hf.testing import tiny_clip

    torch.set_num_threads(max(1, torch.get_num_threads()))
    clip, processor = tiny_clip(seed=0, projection_dim=dim)
    baseline = current_rss_bytes()
    model, centres, gen, build_seconds, cache_seconds = build_adapter(
        clip, processor, method, mode, classes, shots, dim
    )
    truth = torch.randint(0, classes, (batch,), generator=gen)
    queries = centres[truth] + 0.5 * torch.randn(batch, dim, generator=gen) / dim**0.5  # (B, C)
    times = []
    with torch.no_grad():
        for _ in range(1 + repeats):  # the first XMAdapter call builds (and memoises) the text keys
            started = time.perf_counter()
            logits = model(image_embeds=queries).logits  # (B, N)
            times.append(time.perf_counter() - started)
    learned = getattr(model.method, "cache_keys", None)
    return {
        "method": method,
        "mode": mode,
        "entries": classes * shots,
        "classes": classes,
        "dim": dim,
        "cache_dtype": str(model.cache_embeds.dtype),
        "learned_keys_dtype": None if learned is None else str(learned.dtype),
        "baseline_rss_gib": baseline / GIB,
        "peak_rss_gib": peak_rss_bytes() / GIB,
        "build_seconds": build_seconds,
        "cache_seconds": cache_seconds,
        "first_forward_seconds": times[0],
        "forward_seconds": sorted(times[1:])[len(times[1:]) // 2],  # the median after the first call
        "top1_accuracy": float((logits.argmax(-1) == truth).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="timed forwards after the first (median reported)")
    parser.add_argument("--methods", nargs="+", default=["tip-adapter-f", "xmadapter"])
    parser.add_argument("--modes", nargs="+", default=["inference", "converted"], choices=["inference", "converted"])
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.classes, args.shots, args.dim, args.batch, args.repeats)))
        return

    import torch

    entries = args.classes * args.shots
    print(f"# bench_memory_100k: {args.classes:,} classes x {args.shots} shots = {entries:,} entries, C = {args.dim},")
    print(f"# batch {args.batch}, float16 cache; torch {torch.__version__} on {platform.machine()} with")
    print(f"# {torch.get_num_threads()} threads; each case in a fresh subprocess; target peak RSS <= {TARGET_GIB} GiB")
    header = (
        f"{'method':<14} {'mode':<10} {'peak RSS':>9} {'baseline':>9} {'peak/base':>9} {'target':>7} "
        f"{'build s':>8} {'cache s':>8} {'1st fwd s':>9} {'fwd s':>7} {'top-1':>6}"
    )
    print(header)
    results, failed = [], False
    for method in args.methods:
        for mode in args.modes:
            command = [sys.executable, __file__, "--child", method, mode]
            command += ["--classes", str(args.classes), "--shots", str(args.shots), "--dim", str(args.dim)]
            command += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{method:<14} {mode:<10} FAILED (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
                failed = True
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results.append(row)
            ok = row["peak_rss_gib"] <= TARGET_GIB
            failed |= not ok
            print(
                f"{method:<14} {mode:<10} {row['peak_rss_gib']:>7.2f}Gi {row['baseline_rss_gib']:>7.2f}Gi "
                f"{row['peak_rss_gib'] / row['baseline_rss_gib']:>8.1f}x {'PASS' if ok else 'MISS':>7} "
                f"{row['build_seconds']:>8.1f} {row['cache_seconds']:>8.1f} {row['first_forward_seconds']:>9.2f} "
                f"{row['forward_seconds']:>7.2f} {row['top1_accuracy']:>6.3f}"
            )
    fp16 = args.classes * args.shots * args.dim * 2 / GIB
    print(f"# one float16 (NK, C) tensor is {fp16:.2f} GiB; tip-adapter-f and xmadapter hold two (E and the learned")
    print("# keys F), xmadapter also its (NK, C/4) float32 text keys; 'converted' briefly holds F in float32 too.")
    print(f"# result: {'all cases within' if not failed else 'TARGET MISSED: not all cases within'} {TARGET_GIB} GiB")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
