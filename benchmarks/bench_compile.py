"""Benchmark: `torch.compile` (inductor) of the eval forward on embeddings against eager, every method, on CPU.

Setting: the head alone (`model(image_embeds=...)` in eval mode under `torch.no_grad`), C = 512 (a tiny CLIP with a
512-dim projection: the backbone only encodes the class prompts here, and the head's cost depends on the shapes
alone), ``--classes`` classes x ``--shots`` shots of synthetic cache embeddings, a batch of ``--batch`` embeddings.
Eager and compiled calls alternate after warm-up (``--repeats`` of each, in the same run, so that both see the same
machine load); each time is the fastest of its calls (on a shared machine, the median mostly measures the other
processes) and the ratio is eager / compiled (above 1: compiled is faster). One intra-op thread by default: with two
threads on a machine whose cores other processes also use, each op waits for the slower thread and the times vary
twenty-fold. Compile time is the first compiled
call (inductor caches compiled kernels on disk: a second run compiles faster).

XMAdapter's eager forward reuses its memoised text keys (checked against the weights on every call); a compiled
forward computes them in the graph at every call (see `XMAdapter.text_keys`). The last column shows what that costs:
the eager time of `compute_text_keys` alone.

Run: ``python benchmarks/bench_compile.py`` (``--backend aot_eager`` to time the tracing backend the tests use).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from xmadapter_hf import METHODS, XMAdapterForImageClassification
from xmadapter_hf.testing import tiny_clip


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def fastest_alternating(first, second, repeats: int) -> tuple[float, float]:
    """The fastest time of each of two calls, run alternately ``repeats`` times each."""
    times = [(timed(first), timed(second)) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clip, processor = tiny_clip(projection_dim=512)
    names = [f"class {i}" for i in range(args.classes)]
    gen = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(args.classes, 512, generator=gen), dim=-1)
    labels = torch.arange(args.classes).repeat_interleave(args.shots)
    cache = centres[labels] + 0.5 * torch.randn(len(labels), 512, generator=gen) / 512**0.5  # (NK, C) raw
    queries = centres[torch.randint(0, args.classes, (args.batch,), generator=gen)]
    queries = queries + 0.5 * torch.randn(args.batch, 512, generator=gen) / 512**0.5  # (B, C) raw
    print(
        f"# bench_compile: backend {args.backend}, C = 512, {args.classes:,} classes x {args.shots} shots = "
        f"{len(labels):,} cache entries, batch {args.batch}, fastest of {args.repeats} alternating calls"
    )
    print(f"# torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads")
    print("| method | eager ms | compiled ms | eager / compiled | compile s | text keys alone ms |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        model = XMAdapterForImageClassification.from_clip(
            clip, names, processor=processor, method=method, sharpness=5.0
        )
        model.set_cache(cache, labels)
        eager, fast, compile_seconds, text = measure(model.eval(), queries, args.backend, args.repeats)
        print(
            f"| {method} | {1000 * eager:.2f} | {1000 * fast:.2f} | {eager / fast:.2f} | {compile_seconds:.1f} | "
            f"{text} |"
        )


@torch.no_grad()
def measure(model, queries: torch.Tensor, backend: str, repeats: int) -> tuple[float, float, float, str]:
    """(eager s, compiled s, compile s, XMAdapter's text keys alone in ms or "-") for one model."""
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    eager_logits = model(image_embeds=queries).logits  # warm-up (builds XMAdapter's memo)
    started = time.perf_counter()
    compiled_logits = compiled(image_embeds=queries).logits
    compile_seconds = time.perf_counter() - started
    difference = (eager_logits - compiled_logits).abs().max().item()
    assert difference < 1e-4, f"{model.config.method}: compiled logits differ from eager by {difference}"
    compiled(image_embeds=queries)
    eager, fast = fastest_alternating(
        lambda: model(image_embeds=queries), lambda: compiled(image_embeds=queries), repeats
    )
    text = "-"
    if model.config.method == "xmadapter":
        state = model.cache_state()
        text = f"{1000 * min(timed(lambda: model.method.compute_text_keys(state)) for _ in range(10)):.2f}"
    return eager, fast, compile_seconds, text


if __name__ == "__main__":
    main()
