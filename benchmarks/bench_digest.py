"""Benchmark: the cost of the tensor digest and the finite check on a 100,000-class x 16-shot cache (C = 512), against
`save_pretrained` and `from_pretrained` of the same adapter, measured in the same run.

Since 0.3.0, `save_pretrained` records a digest of the adapter's tensors in the safetensors metadata and refuses
non-finite tensors; `from_pretrained` recomputes the digest over the tensors it read and checks that every floating
tensor is finite, before the model is built (`xmadapter_hf.integrity`). Both passes read every byte of the cache,
a few GB here, so their time matters. This script builds the adapter as `bench_memory_100k.py` does (`tip-adapter-f`
by default: the frozen cache E and the learned keys F, both float16, 1.53 GiB each; the class embeddings in float32),
then, in one process:

1. times `save_pretrained` into a temporary directory (it includes the finite check and the sha256 digest);
2. reads the tensors back from the file and times, over exactly those tensors, the digest with each candidate
   algorithm (`integrity.digest_chunks`: per tensor in key order, its name/dtype/shape and its bytes): sha256 (the
   one used), blake2b, sha1, and zlib.crc32 streamed chunk by chunk; and the finite check. Each is the fastest of
   ``--repeats`` runs;
3. times `from_pretrained` of the saved directory (the tiny backbone passed in: no backbone loading in the time).

It prints each pass's seconds, its throughput, and its ratio to the save and to the load time of the same run. The
saved file lies in the page cache when it is read back (written just before): a load from a cold disk would take
longer, and the digest's share would be smaller.

Run: ``python benchmarks/bench_digest.py`` (``--classes``, ``--shots``, ``--dim``, ``--method`` to change the size).
"""

from __future__ import annotations

import argparse
import functools
import platform
import ssl
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory_100k import GIB, build_adapter, peak_rss_bytes  # noqa: E402

ALGORITHMS = ("sha256", "blake2b", "sha1", "crc32")


def digest(tensors: dict, algorithm: str) -> str:
    """The digest `integrity.tensors_digest` computes, with a `hashlib` algorithm or zlib's crc32."""
    from xmadapter_hf.integrity import digest_chunks, tensors_digest

    if algorithm != "crc32":
        return tensors_digest(tensors, algorithm)
    crc = 0
    for chunk in digest_chunks(tensors):
        crc = zlib.crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def fastest(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def time_checks(tensors: dict, metadata: dict, repeats: int) -> list[tuple[str, float]]:
    """(pass, fastest seconds) of each candidate digest and of the finite check, over the tensors read back."""
    from xmadapter_hf.integrity import DIGEST_ALGORITHM, DIGEST_KEY, check_finite

    assert digest(tensors, DIGEST_ALGORITHM) == metadata[DIGEST_KEY], "the file's tensors must match the saved digest"
    rows = [(f"digest {name}", fastest(functools.partial(digest, tensors, name), repeats)) for name in ALGORITHMS]
    rows.append(("finite check", fastest(functools.partial(check_finite, tensors, "", ""), repeats)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--method", default="tip-adapter-f")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each digest (the fastest is reported)")
    args = parser.parse_args()

    import torch

    from xmadapter_hf import XMAdapterForImageClassification
    from xmadapter_hf.checkpoint import read_weights
    from xmadapter_hf.integrity import DIGEST_ALGORITHM
    from xmadapter_hf.testing import tiny_clip

    clip, processor = tiny_clip(seed=0, projection_dim=args.dim)
    model, *_ = build_adapter(clip, processor, args.method, "inference", args.classes, args.shots, args.dim)
    entries = args.classes * args.shots
    print(f"# bench_digest: {args.method}, {args.classes:,} classes x {args.shots} shots = {entries:,} entries, "
          f"C = {args.dim}, float16 cache")  # fmt: skip
    print(f"# torch {torch.__version__} on {platform.machine()}, {torch.get_num_threads()} threads; Python "
          f"{platform.python_version()}, {ssl.OPENSSL_VERSION}, zlib {zlib.ZLIB_RUNTIME_VERSION}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-digest-") as folder:
        started = time.perf_counter()
        model.save_pretrained(folder)
        save_seconds = time.perf_counter() - started
        save_peak = peak_rss_bytes()
        del model  # the load below builds its own
        weights = str(Path(folder) / "model.safetensors")
        size = Path(weights).stat().st_size
        rows = time_checks(*read_weights(weights), args.repeats)  # the tensors read are freed on return
        started = time.perf_counter()
        XMAdapterForImageClassification.from_pretrained(folder, clip_model=clip, processor=processor)
        load_seconds = time.perf_counter() - started
    print(f"# model.safetensors: {size / GIB:.2f} GiB; save_pretrained {save_seconds:.2f} s, from_pretrained "
          f"{load_seconds:.2f} s (both include the {DIGEST_ALGORITHM} digest and the finite check)")  # fmt: skip
    print("| pass | seconds | GiB/s | / save | / load |")
    print("|---|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {size / GIB / seconds:.2f} | {seconds / save_seconds:.2f} | "
              f"{seconds / load_seconds:.2f} |")  # fmt: skip
    used = dict(rows)[f"digest {DIGEST_ALGORITHM}"] + dict(rows)["finite check"]
    print(
        f"# the checks a load runs ({DIGEST_ALGORITHM} + finite): {used:.2f} s, {used / load_seconds:.0%} of the load"
    )
    print(f"# peak RSS: {save_peak / GIB:.2f} GiB up to the save, {peak_rss_bytes() / GIB:.2f} GiB after the load")


if __name__ == "__main__":
    main()
