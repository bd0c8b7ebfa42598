"""Benchmark: head time and peak memory against cache size, from 1k to 1.6M entries (C = 512, batch 256, fp16 cache).

For each cache size (16 shots per class, so 64 to 100,000 classes) and method, a fresh Python subprocess (peak RSS is
a process-wide high-water mark) builds the model with `from_clip` on a tiny random CLIP of projection dim 512 (the
class prompts are encoded by its text encoder), stores the cache in float16 (`half_cache()` before `set_cache`, so the
learned keys of `tip-adapter-f`/`xmadapter` are created in float16 too), fills it from synthetic raw embeddings and
classifies a batch of 256 query embeddings; the head time is the median of ``--repeats`` forwards after a first one
(which builds XMAdapter's memoised text keys). The child process is `bench_memory_100k.py --child` (one
implementation for both benchmarks).

Ratios against the baseline measured in the same run, the smallest cache: head time / smallest head time beside
entries / smallest entries (linear scaling makes the two equal; below it, fixed costs dominate small caches), and
peak RSS above the process baseline (RSS after the imports and the tiny backbone, before the adapter) per cache
entry. The plot goes to ``docs/scaling.png`` (matplotlib, Agg backend: the `plot` extra,
`pip install xmadapter-hf[plot]`).

Run: ``python benchmarks/bench_scaling.py`` (``--sizes`` to choose the entry counts, ``--methods``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHOTS, DIM, BATCH = 16, 512, 256
GIB = 1024**3


def run_case(method: str, entries: int, repeats: int) -> dict:
    classes = entries // SHOTS
    command = [sys.executable, str(HERE / "bench_memory_100k.py"), "--child", method, "inference"]
    command += ["--classes", str(classes), "--shots", str(SHOTS), "--dim", str(DIM), "--batch", str(BATCH)]
    command += ["--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} at {entries} entries failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmadapter_hf.plotting import method_colour

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in sorted({r["method"] for r in results}):
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["entries"])
        entries = [r["entries"] for r in rows]
        colour = method_colour(method)  # the method's colour in every figure
        left.plot(entries, [1000 * r["forward_seconds"] for r in rows], marker="o", label=method, color=colour)
        right.plot(entries, [r["peak_rss_gib"] for r in rows], marker="o", label=method, color=colour)
    right.axhline(8.0, color="grey", linestyle="--", linewidth=1, label="8 GiB target (100k classes)")
    for axis, title, unit in ((left, "head time, batch 256", "ms"), (right, "peak RSS of the process", "GiB")):
        axis.set_xscale("log")
        axis.set_xlabel("cache entries (16 shots per class, C = 512, float16)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    left.set_yscale("log")
    figure.suptitle(f"xmadapter-hf cache scaling on CPU ({platform.machine()}), one fresh process per point")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_024, 10_240, 102_400, 409_600, 1_600_000])
    parser.add_argument("--methods", nargs="+", default=["tip-adapter", "tip-adapter-f", "xmadapter"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", default=str(HERE.parent / "docs" / "scaling.png"))
    args = parser.parse_args()
    bad = [size for size in args.sizes if size % SHOTS or size < SHOTS]
    if bad:
        raise SystemExit(f"--sizes must be multiples of {SHOTS} (16 shots per class); got {bad}")

    import torch

    sizes = sorted(args.sizes)
    print(f"# bench_scaling: cache sizes {sizes} entries ({SHOTS} shots per class), C = {DIM}, batch {BATCH},")
    print(f"# float16 cache; torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads;")
    print("# one fresh subprocess per point; ratios are against the smallest cache of the same method")
    print(
        "| method | entries | classes | head ms | time ratio | entries ratio | peak RSS GiB | above baseline GiB "
        "| bytes/entry above baseline |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for method in args.methods:
        first = None
        for entries in sizes:
            row = run_case(method, entries, args.repeats)
            results.append(row)
            first = first or row
            above = row["peak_rss_gib"] - row["baseline_rss_gib"]
            print(
                f"| {method} | {entries:,} | {row['classes']:,} | {1000 * row['forward_seconds']:.1f} | "
                f"{row['forward_seconds'] / first['forward_seconds']:.1f}x | {entries / first['entries']:.0f}x | "
                f"{row['peak_rss_gib']:.2f} | {above:.2f} | {above * GIB / entries:.0f} |",
                flush=True,
            )
    plot(results, Path(args.plot))
    print(f"# plot written to {os.path.relpath(args.plot)}")
    print(
        f"# a float16 key is {2 * DIM} bytes per entry; tip-adapter holds one (NK, C) tensor, tip-adapter-f and "
        "xmadapter two (E and F), xmadapter also (NK, C/4) float32 text keys; the class text embeddings W are "
        f"(N, C) float32 ({4 * DIM // SHOTS} bytes per entry at 16 shots); the rest is transient (chunks, set-up)."
    )


if __name__ == "__main__":
    main()
