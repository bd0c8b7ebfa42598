"""Benchmark: the head over embeddings against the matmul every cache method must pay, eager and compiled.

Setting (issue 13): NK = 160,000 cache entries (10,000 classes x 16 shots, sorted by class as `build_cache` stores a
K-shot split), B = 1,024 query embeddings, C = 512. Baseline, measured in the same run: the one (B, C) x (C, NK)
matmul of the queries with the cache keys (``queries @ keys.T``, float32, its (B, NK) output written once), which no
cache method can avoid. Head: `model(image_embeds=queries)` in eval mode under `torch.no_grad` (normalisation,
zero-shot logits, the cache term ``A L`` over chunks of `cache_chunk_size` entries, XMAdapter's text cache and
fusion; XMAdapter's text keys are remembered after the warm-up call), eager and compiled with inductor
(`fullgraph=True`). Calls of all variants alternate, each time the fastest of ``--repeats`` is kept (the machine is
shared: slower calls measure the other processes), and the ratio is head / matmul, in wall time and in process CPU
time; on a machine shared with other jobs run ``--threads 1`` and read the CPU ratio (with several threads, waits for
a descheduled thread count as CPU time too).

Targets: <= 1.2x the matmul for Tip-Adapter and Tip-Adapter-F, <= 1.5x for XMAdapter (whose text cache adds a (B, D) x
(D, NK) matmul, D = C / 4).

Run: ``python benchmarks/bench_head.py`` (``--classes``, ``--shots``, ``--batch``, ``--repeats``, ``--no-compile``,
``--threads``, ``--chunk``).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from xmadapter_hf import XMAdapterConfig, XMAdapterForImageClassification
from xmadapter_hf.testing import tiny_clip

TARGETS = {"tip-adapter": 1.2, "tip-adapter-f": 1.2, "xmadapter": 1.5}


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def timed_both(call) -> tuple[float, float]:
    """Wall and process CPU time of one call (on a machine shared with other jobs the wall time measures them too;
    with one thread the CPU time does not)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def build(method: str, clip, processor, class_embeds, cache, labels, **overrides) -> XMAdapterForImageClassification:
    """A model of ``method`` with the shared class embeddings and cache (no prompt encoding per method)."""
    names = [f"class {i}" for i in range(class_embeds.shape[0])]
    config = XMAdapterConfig(method=method, class_names=names, sharpness=5.0, residual_ratio=1.0, **overrides)
    config.base_model_name_or_path = "random-tiny-clip"
    model = XMAdapterForImageClassification(config, clip_model=clip, processor=processor)
    with torch.no_grad():
        model.class_embeds.copy_(class_embeds)
    model.set_cache(cache, labels)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(TARGETS))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--chunk", type=int, help="`cache_chunk_size` (default: the config's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clip, processor = tiny_clip(projection_dim=args.dim)
    gen = torch.Generator().manual_seed(0)
    class_embeds = torch.nn.functional.normalize(torch.randn(args.classes, args.dim, generator=gen), dim=-1)
    labels = torch.arange(args.classes).repeat_interleave(args.shots)
    cache = class_embeds[labels] + 0.5 * torch.randn(len(labels), args.dim, generator=gen) / args.dim**0.5
    queries = class_embeds[torch.randint(0, args.classes, (args.batch,), generator=gen)]
    queries = torch.nn.functional.normalize(
        queries + 0.5 * torch.randn(args.batch, args.dim, generator=gen) / 22.6, dim=-1
    )
    keys = torch.nn.functional.normalize(cache, dim=-1)
    print(
        f"# bench_head: NK = {len(labels):,} cache entries ({args.classes:,} classes x {args.shots} shots), "
        f"B = {args.batch:,}, C = {args.dim}; fastest of {args.repeats} alternating calls"
    )
    print(f"# torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads")
    calls = {"matmul": lambda: queries @ keys.t()}
    compile_seconds = {}
    with torch.no_grad():
        for method in args.methods:
            chunk = {"cache_chunk_size": args.chunk} if args.chunk else {}
            model = build(method, clip, processor, class_embeds, cache, labels, **chunk)
            model(image_embeds=queries)  # warm-up (XMAdapter remembers its text keys)
            calls[f"{method} eager"] = lambda m=model: m(image_embeds=queries)
            if not args.no_compile:
                torch._dynamo.reset()
                compiled = torch.compile(model, fullgraph=True)
                compile_seconds[method] = timed(lambda c=compiled: c(image_embeds=queries))
                error = (compiled(image_embeds=queries).logits - model(image_embeds=queries).logits).abs().max()
                assert error < 1e-3, f"{method}: compiled logits differ from eager by {error}"
                calls[f"{method} compiled"] = lambda c=compiled: c(image_embeds=queries)
        times = {name: float("inf") for name in calls}
        cpu_times = dict(times)
        for _ in range(args.repeats):
            for name, call in calls.items():
                wall, cpu = timed_both(call)
                times[name], cpu_times[name] = min(times[name], wall), min(cpu_times[name], cpu)
    baseline, cpu_baseline = times["matmul"], cpu_times["matmul"]
    print(f"# baseline: (B, C) x (C, NK) matmul {baseline:.3f} s wall, {cpu_baseline:.3f} s CPU")
    print("| method | mode | head s | head / matmul | CPU s | CPU head / matmul | target | ok (CPU) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seconds in times.items():
        if name == "matmul":
            continue
        method, mode = name.split(" ")
        ratio, cpu_ratio = seconds / baseline, cpu_times[name] / cpu_baseline
        ok = "PASS" if cpu_ratio <= TARGETS[method] else "MISS"
        compiled = f"{compile_seconds[method]:.1f}" if mode == "compiled" else "-"
        cells = f"{seconds:.3f} | {ratio:.2f}x | {cpu_times[name]:.3f} | {cpu_ratio:.2f}x"
        print(f"| {method} | {mode} | {cells} | <= {TARGETS[method]}x | {ok} | {compiled} |")


if __name__ == "__main__":
    main()
