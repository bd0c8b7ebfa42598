"""Benchmark: the exported ONNX head under onnxruntime against the PyTorch eager head, on CPU (issue 18).

Setting: the head alone (`model(image_embeds=...)` in eval mode under `torch.no_grad`, against `head.onnx` from
`export_onnx(model, ..., what="head")` in an onnxruntime `CPUExecutionProvider` session), C = 512 (a tiny CLIP with a
512-dim projection: the backbone only encodes the class prompts here, and the head's cost depends on the shapes
alone), ``--classes`` classes x ``--shots`` shots of synthetic cache embeddings, batches of ``--batches`` raw
embeddings. PyTorch and onnxruntime calls alternate after warm-up (``--repeats`` of each, in the same run, so that
both see the same machine load); each time is the fastest of its calls (on a shared machine the median mostly
measures the other processes) and the ratio is PyTorch / onnxruntime (above 1: onnxruntime is faster). Both use
``--threads`` intra-op threads (1 by default: with two threads on a machine whose cores other processes also use,
the times vary several-fold). Every case also checks that the logits agree within 1e-4 of the largest |logit|.

The Multi-Modal Adapter's attention over the N+1 tokens materialises its scores in onnxruntime, batch x 4 heads x
(N+1)^2 floats (twice, at the default opset 18), where PyTorch's CPU flash-attention kernel does not: cases whose
scores would exceed ``--max-attention-gib`` are skipped (10k classes at batch 64 would need about 100 GiB).

Run: ``python benchmarks/bench_onnx.py`` (``--classes 1000 --batches 1`` for a quick look).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from bench_compile import fastest_alternating  # the benchmarks' folder is on the path when run as a script

from xmadapter_hf import METHODS, XMAdapterForImageClassification
from xmadapter_hf.export import export_onnx
from xmadapter_hf.methods.multimodal import MMA_NUM_HEADS
from xmadapter_hf.testing import tiny_clip

DIM = 512


def synthetic_task(classes: int, shots: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw cache embeddings (NK, C) around random class centres, their labels (NK,), and the centres (N, C)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, DIM, generator=gen), dim=-1)
    labels = torch.arange(classes).repeat_interleave(shots)
    cache = centres[labels] + 0.5 * torch.randn(len(labels), DIM, generator=gen) / DIM**0.5
    return cache, labels, centres


def build(clip, processor, method: str, names: list[str], cache, labels) -> XMAdapterForImageClassification:
    model = XMAdapterForImageClassification.from_clip(
        clip, names, processor=processor, method=method, sharpness=5.0, residual_ratio=1.0
    )
    model.set_cache(cache, labels)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as after training: zero-initialised layers (MetaNet's last, the gate) take part
        for param in model.method.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=gen))
    return model.eval()


@torch.no_grad()
def measure(model, session, queries: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """(PyTorch s, onnxruntime s, relative difference of the logits) for one batch."""
    feed = {"image_embeds": queries.numpy()}
    expected = model(image_embeds=queries).logits.numpy()  # warm-up (builds XMAdapter's text-key memo)
    got = session.run(["logits"], feed)[0]
    difference = float(np.abs(got - expected).max() / np.abs(expected).max())
    assert difference <= 1e-4, f"{model.config.method}: onnxruntime logits differ by {difference:.1e}"
    torch_s, ort_s = fastest_alternating(
        lambda: model(image_embeds=queries), lambda: session.run(["logits"], feed), repeats
    )
    return torch_s, ort_s, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both (1: stable when shared)")
    parser.add_argument("--max-attention-gib", type=float, default=1.6, help="skip larger MMA score tensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1

    clip, processor = tiny_clip(projection_dim=DIM)
    print(
        f"# bench_onnx: head only, C = {DIM}, {args.shots} shots per class, fastest of {args.repeats} alternating "
        f"calls; torch {torch.__version__}, onnxruntime {ort.__version__} (CPUExecutionProvider) on "
        f"{platform.machine()}, {args.threads} intra-op thread(s) each"
    )
    print("| method | classes | cache entries | batch | PyTorch ms | onnxruntime ms | PyTorch / onnxruntime | "
          "max rel. diff | export s | head.onnx MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for classes in args.classes:
        cache, labels, centres = synthetic_task(classes, args.shots)
        names = [f"class {i}" for i in range(classes)]
        gen = torch.Generator().manual_seed(2)
        for method in args.methods:
            model = build(clip, processor, method, names, cache, labels)
            with tempfile.TemporaryDirectory() as directory:
                started = time.perf_counter()
                path = export_onnx(model, directory, what="head")["head"]
                export_seconds = time.perf_counter() - started
                size = path.stat().st_size / 2**20
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for batch in args.batches:
                scores = batch * MMA_NUM_HEADS * (classes + 1) ** 2 * 4 / 2**30
                if method == "multimodal-adapter" and scores > args.max_attention_gib:
                    print(f"| {method} | {classes:,} | {len(labels):,} | {batch} | skipped: attention scores "
                          f"{scores:.1f} GiB > {args.max_attention_gib} GiB | | | | | |")  # fmt: skip
                    continue
                picks = torch.randint(0, classes, (batch,), generator=gen)
                queries = centres[picks] + 0.5 * torch.randn(batch, DIM, generator=gen) / DIM**0.5  # (B, C) raw
                torch_s, ort_s, difference = measure(model, session, queries, args.repeats)
                print(
                    f"| {method} | {classes:,} | {len(labels):,} | {batch} | {1000 * torch_s:.2f} | "
                    f"{1000 * ort_s:.2f} | {torch_s / ort_s:.2f} | {difference:.1e} | {export_seconds:.1f} | "
                    f"{size:.0f} |"
                )
            del session, model


if __name__ == "__main__":
    main()
