"""Benchmark: `fit` on ImageNet-sized synthetic embeddings, each phase against its floor measured in the same run.

Task (``--classes`` N = 1,000 by default): K = 16 shots per class with 10 augmented views each and 4 validation
images per class, C = 512. Class means are random points on the sphere; an image is its class mean plus noise
(L2-normalised), its views the image plus smaller noise (L2-normalised); the class text embeddings are the means plus
noise (L2-normalised), so zero-shot CLIP is moderate and the caches help. The logit scale is CLIP's 100.

For each method, in a fresh subprocess (peak RSS is a process-wide high-water mark), `fit` runs on the embeddings
(`ExtractedEmbeddings` for the views, validation embeddings with labels: no backbone work) with every default, and
its wall time is split into phases by wrapping the library's own functions (nothing in the library is changed):

- ``cache``: `set_cache` (keys; GDA's class means, covariance and pseudo-inverse: GDA's training);
- ``search``: every validation search (`search_hyperparameters`, before and after training);
- ``train``: `fit`'s training call (the Trainer: set-up, data, forward, backward, optimiser) less the validation
  inside it;
- ``val``: the per-epoch validation of best-epoch selection (`ValidationEarlyStopping.accuracy`);
- ``other``: the rest of `fit` (accuracies, the temperature fit).

The training phase is also split into its **per-step** cost (the steady state: from the second optimiser step's
start to the last's, less any validation between them, per step: data, forward, backward, optimiser, callbacks) and
its **set-up** (the rest: `TrainingArguments`, the Trainer, the optimiser, the first step's lazy initialisation).

Beside each phase, its **floor**: the same unavoidable operations in a bare torch loop, timed in the same process
right after `fit` (so under the same load):

- search: per search call the cosines' matmul (M, C) x (C, NK) of every cache term, then per sharpness value the
  search evaluated one affinity pass ``exp(beta (cos - 1))`` and its class sums ``A L`` over the validation rows
  (counted at run time: every call of the grid search's per-sharpness function); a logit term (GDA): its
  (M, C) x (C, N) logits once, then per weight one ``base + w logits`` and its argmax;
- train: per optimiser step, the method's formula written out in plain torch on a batch of the same size (forward,
  loss, backward, the same torch optimiser's step), no Trainer, no DataLoader, no dataset; e.g. Tip-Adapter-F's
  (B, C) x (C, NK) matmul, the affinity's exp, the class sums and the keys' gradient; measured over
  ``--floor-steps`` steps and multiplied by the steps `fit` ran; GDA's: the covariance (one (C, VNK) x (VNK, C)
  product of the centred normalised views, float64) and the pseudo-inverse;
- val: the formula's forward over the validation rows (no autograd) and its argmax, per validation pass.

Peak memory: the child's peak RSS (`ru_maxrss`) above its RSS just before `fit` (data and model already built).

Run: ``python benchmarks/bench_imagenet_sized.py`` (``--classes``, ``--methods``, ``--epochs`` to cap every method's
epochs, ``--max-steps`` to cap its optimiser steps; ``--quick`` is a seconds-long smoke run on a small task, and
``--in-process`` runs every method in this process: no per-method peak memory then).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

METHODS = (
    "zero-shot", "tip-adapter", "tip-adapter-f", "clip-adapter", "multimodal-adapter", "meta-adapter", "gda",
    "xmadapter",
)  # fmt: skip
LOGIT_SCALE = 100.0
PHASES = ("cache", "search", "train", "val", "other")
MIB = 1024**2


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def current_rss() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def make_task(classes: int, shots: int, views: int, dim: int, val_per_class: int, seed: int = 0) -> dict:
    """Synthetic raw embeddings: views (V, NK, C), labels (NK,), text (N, C), validation (M, C) and labels (M,)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)

    def around(centres, scale):
        return F.normalize(centres + scale * torch.randn(centres.shape, generator=gen) / math.sqrt(dim), dim=-1)

    means = F.normalize(torch.randn(classes, dim, generator=gen), dim=-1)  # (N, C) on the sphere
    labels = torch.arange(classes).repeat_interleave(shots)  # (NK,) sorted by class, K each
    images = around(means[labels], 2.5)  # (NK, C)
    train_views = torch.stack([around(images, 0.4) for _ in range(views)])  # (V, NK, C)
    val_labels = torch.arange(classes).repeat_interleave(val_per_class)  # (M,)
    return {
        "views": train_views, "labels": labels, "text": around(means, 1.5),
        "val": around(means[val_labels], 2.5), "val_labels": val_labels,
    }  # fmt: skip


class Phases:
    """Wall time of the phases of `fit`, by wrapping library functions (restored by `restore`)."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES + ("fit", "train_call"), 0.0)
        self.counts = {"search": 0, "val": 0, "affinity_elements": 0, "cosine_flops": 0, "logit_weights": 0}
        self.step_starts: list[tuple[float, float]] = []  # (time, validation seconds so far) at each step's start
        self._undo = []

    def time_steps(self, trainer_class):
        """Records the start of every optimiser step (`training_step`), to separate the per-step cost from set-up."""
        original = trainer_class.training_step

        def timed(*args, **kwargs):
            self.step_starts.append((time.perf_counter(), self.seconds["val"]))
            return original(*args, **kwargs)

        trainer_class.training_step = timed
        self._undo.append((trainer_class, "training_step", original))

    def per_step(self) -> float | None:
        """Seconds per optimiser step in the steady state: from the first step's start to the last's, less any
        validation between them, over the steps in between (the Trainer's set-up and the first step's lazy
        initialisation are left out)."""
        if len(self.step_starts) < 3:
            return None
        (first, val_first), (last, val_last) = self.step_starts[1], self.step_starts[-1]
        return (last - first - (val_last - val_first)) / (len(self.step_starts) - 2)

    def wrap(self, owner, name, phase):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started
                if phase in self.counts:
                    self.counts[phase] += 1

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def count_affinity_passes(self, grid_search):
        original = grid_search._term_logits

        def counted(distance, sharpness, space, buffer=None):
            self.counts["affinity_elements"] += distance.numel()
            return original(distance, sharpness, space, buffer)

        grid_search._term_logits = counted
        self._undo.append((grid_search, "_term_logits", original))

    def restore(self):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


# ------------------------------------------------------------------------------------------------------ floors
def _time(function, repeats: int) -> float:
    """Mean seconds per call of ``function`` over ``repeats`` calls after one warm-up call."""
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def floor_forward(method: str, model, params: dict):
    """``logits(f)`` of the method's formula in plain torch (on normalised queries), reading ``params`` (copies of
    the trained tensors); also returns the extra loss weights' function where the method has one."""
    import torch
    import torch.nn.functional as F

    cfg, s = model.config, LOGIT_SCALE
    W = F.normalize(model.class_embeds.float(), dim=-1)  # (N, C)
    N, K = W.shape[0], model.cache_shots
    E = model.cache_embeds.float()  # (NK, C)

    def class_sums(a):
        return a.view(a.shape[0], N, K).sum(-1)  # the cache is sorted by class, K each

    if method in ("tip-adapter-f", "xmadapter"):
        beta, alpha = cfg.sharpness, cfg.residual_ratio
        keys = params["keys"] if "keys" in params else params["method"].cache_keys

        def image_cache(f):
            return class_sums(torch.exp(beta * (f @ keys.t() - 1.0)))  # (B, C) x (C, NK)

        if method == "tip-adapter-f":
            return lambda f: s * f @ W.t() + alpha * image_cache(f)
        m = params["method"]
        labels = model.cache_labels

        def forward(f):
            text_keys = F.normalize(m.text_projection(F.normalize(W[labels] + m.meta_net(E), dim=-1)), dim=-1)
            g = F.normalize(m.text_projection(f) + m.img2txt(f), dim=-1)  # (B, D)
            text_cache = class_sums(torch.exp(cfg.text_sharpness * (g @ text_keys.t() - 1.0)))
            gamma = torch.sigmoid(m.affinity_ratio_logit)
            return s * f @ W.t() + alpha * (gamma * image_cache(f) + (1 - gamma) * text_cache)

        return forward
    if method == "clip-adapter":
        mlp, r = params["method"].adapter, cfg.clip_adapter_ratio
        return lambda f: s * F.normalize(r * mlp(f) + (1 - r) * f, dim=-1) @ W.t()
    if method == "meta-adapter":
        m = params["method"]

        def forward(f):
            tokens = torch.cat([W[:, None], E.view(N, K, -1)], dim=1)  # (N, K+1, C)
            scores = torch.einsum("nc,nkc->nk", m.q_proj(W), m.k_proj(tokens)) / math.sqrt(W.shape[1])
            attended = torch.einsum("nk,nkc->nc", scores.softmax(-1), tokens)
            adapted = F.normalize(W + torch.sigmoid(m.alpha_proj(W)) * attended, dim=-1)
            return s * f @ adapted.t()

        return forward
    if method == "multimodal-adapter":
        from torch.utils.checkpoint import checkpoint

        from xmadapter_hf.methods.multimodal import mma_attention_mask

        m, chunk = params["method"], cfg.mma_chunk_size
        mask = mma_attention_mask(N, cfg.mma_mask)

        def cosines(f):
            image, text = m.adapt(f, W, mask)
            return torch.bmm(text, image.unsqueeze(-1)).squeeze(-1)

        def forward(f):
            grad = torch.is_grad_enabled() and f.shape[0] > chunk
            parts = [checkpoint(cosines, f[i : i + chunk], use_reentrant=False) if grad else cosines(f[i : i + chunk])
                     for i in range(0, f.shape[0], chunk)]  # fmt: skip
            return s * torch.cat(parts)

        return forward
    raise ValueError(method)


def floor_params(method: str, model) -> dict:
    import torch

    if method == "tip-adapter-f":
        return {"keys": torch.nn.Parameter(model.method.cache_keys.detach().clone())}
    return {"method": copy.deepcopy(model.method)}


def training_floor(method: str, model, task: dict, batch: int, steps: int) -> float:
    """Seconds per optimiser step of the bare loop (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from xmadapter_hf.training import recipe_values

    params = floor_params(method, model)
    forward = floor_forward(method, model, params)
    trainable = [p for p in (params.get("keys"),) if p is not None] or [
        p for p in params["method"].parameters() if p.requires_grad
    ]
    values = recipe_values(model)
    if values["optim"] == "sgd":
        momentum = float(values["optim_args"].split("=")[1])
        optimizer = torch.optim.SGD(trainable, lr=values["learning_rate"], momentum=momentum,
                                    weight_decay=values["weight_decay"])  # fmt: skip
    else:
        decoupled = values["optim_args"] is None
        optimizer = torch.optim.Adam(
            trainable, lr=values["learning_rate"], eps=values["adam_epsilon"], weight_decay=values["weight_decay"],
            decoupled_weight_decay=decoupled,
        )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    embeds = task["views"][0]
    labels = task["labels"]

    def step():
        rows = torch.randint(0, embeds.shape[0], (batch,), generator=gen)
        logits = forward(F.normalize(embeds[rows], dim=-1))
        loss = F.cross_entropy(logits, labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _time(step, steps)


def validation_floor(method: str, model, task: dict) -> float:
    """Seconds of one validation pass of the formula (no autograd): logits of every validation row, argmax."""
    import torch
    import torch.nn.functional as F

    forward = floor_forward(method, model, floor_params(method, model))
    val = F.normalize(task["val"], dim=-1)

    def run():
        with torch.no_grad():
            for start in range(0, val.shape[0], 1024):
                forward(val[start : start + 1024]).argmax(-1)

    return _time(run, 2)


def search_floor(model, task: dict, phases: Phases) -> tuple[float, dict]:
    """Seconds of the search's floor (see the module docstring): per search call the cosines' matmuls (and a logit
    term's logits), plus the affinity passes and logit-term weights the search evaluated."""
    import torch
    import torch.nn.functional as F

    val = F.normalize(task["val"], dim=-1)
    calls = phases.counts["search"]
    if not calls:
        return 0.0, {}
    keys = F.normalize(model.cache_embeds.float(), dim=-1)
    N, K = model.config.num_classes, model.cache_shots
    parts = {}
    if phases.counts["affinity_elements"]:
        terms = 2 if model.config.method == "xmadapter" else 1
        cos = val @ keys.t()  # (M, NK)
        buffer = torch.empty_like(cos)
        parts["cosines"] = calls * terms * _time(lambda: torch.matmul(val, keys.t(), out=buffer), 2)

        def affinity_pass():
            torch.mul(cos, 3.0, out=buffer).sub_(3.0).exp_()  # beta (cos - 1), in place
            buffer.view(buffer.shape[0], N, K).sum(-1)  # A L

        per_element = _time(affinity_pass, 3) / cos.numel()
        parts["affinity passes"] = phases.counts["affinity_elements"] * per_element
    if model.config.method == "gda":
        W = F.normalize(model.class_embeds.float(), dim=-1)
        gw = model.method.gaussian_weight
        parts["gaussian logits"] = calls * _time(lambda: val @ gw.t(), 2)
        zero_shot, logits = LOGIT_SCALE * val @ W.t(), val @ gw.t()
        out = torch.empty_like(logits)
        per_weight = _time(lambda: torch.add(zero_shot, logits, alpha=0.5, out=out).argmax(-1), 3)
        parts["weights"] = phases.counts["logit_weights"] * per_weight
    return sum(parts.values()), parts


def gda_floor(task: dict) -> float:
    """GDA's statistics in plain torch (float64): normalised views, class means, the centred scatter, the pinv."""
    import torch
    import torch.nn.functional as F

    views, labels = task["views"], task["labels"]
    N, C = int(labels.max()) + 1, views.shape[-1]

    def run():
        x = F.normalize(views.reshape(-1, C).double(), dim=-1)  # (V NK, C)
        y = labels.repeat(views.shape[0])
        means = torch.zeros(N, C, dtype=torch.float64).index_add_(0, y, x) / (x.shape[0] / N)
        centred = x - means[y]
        scatter = centred.t() @ centred
        torch.linalg.pinv(scatter + scatter.trace() / (x.shape[0] - 1) * torch.eye(C, dtype=torch.float64))

    return _time(run, 1)


# ------------------------------------------------------------------------------------------------------- one case
def child(method: str, args) -> dict:
    import torch
    from transformers import Trainer

    import xmadapter_hf.training.fit as fit_module
    import xmadapter_hf.training.grid_search as grid_search
    from xmadapter_hf import XMAdapterForImageClassification, fit
    from xmadapter_hf.data.extraction import ExtractedEmbeddings
    from xmadapter_hf.testing import tiny_clip
    from xmadapter_hf.training.trainer import ValidationEarlyStopping

    task = make_task(args.classes, args.shots, args.views, args.dim, args.val_per_class)
    clip, processor = tiny_clip(seed=0, projection_dim=args.dim)
    names = [f"class {i}" for i in range(args.classes)]
    model = XMAdapterForImageClassification.from_clip(
        clip, names, processor=processor, method=method, logit_scale=LOGIT_SCALE, text_batch_size=1024
    )
    with torch.no_grad():
        model.class_embeds.copy_(task["text"])  # the synthetic text side
    phases = Phases()
    phases.wrap(XMAdapterForImageClassification, "set_cache", "cache")
    phases.wrap(XMAdapterForImageClassification, "search_hyperparameters", "search")
    phases.wrap(ValidationEarlyStopping, "accuracy", "val")
    phases.wrap(fit_module, "_train", "train_call")
    phases.time_steps(Trainer)
    phases.count_affinity_passes(grid_search)
    original_logit_search = grid_search._search_logit_terms

    def logit_search(space, labels, chunks, result, *args, **kwargs):
        before = sum(len(grid) for grid in result.weight_grids.values())
        out = original_logit_search(space, labels, chunks, result, *args, **kwargs)
        phases.counts["logit_weights"] += sum(len(grid) for grid in result.weight_grids.values()) - before
        return out

    grid_search._search_logit_terms = logit_search
    if args.direct_count:  # every ratio scored by the direct argmax (the way before counting.py), for comparison
        from xmadapter_hf.training.counting import count_correct_direct

        grid_search.count_correct = count_correct_direct
    kwargs = {}
    if args.epochs is not None and model.method.trainable:
        kwargs["epochs"] = args.epochs
    if args.max_steps is not None and model.method.trainable:
        kwargs["training_arguments"] = {"max_steps": args.max_steps}
    before = current_rss()
    started = time.perf_counter()
    try:
        model, report = fit(
            model, ExtractedEmbeddings(task["views"], task["labels"]), task["val"],
            validation_labels=task["val_labels"], show_progress=False, **kwargs,
        )  # fmt: skip
    finally:
        phases.seconds["fit"] = time.perf_counter() - started
        phases.restore()
        grid_search._search_logit_terms = original_logit_search
    peak = peak_rss()
    sec = phases.seconds
    sec["train"] = sec["train_call"] - sec["val"] if model.method.trainable else 0.0
    sec["other"] = sec["fit"] - sec["cache"] - sec["search"] - sec["train_call"]
    floors = dict.fromkeys(PHASES)
    notes = {}
    floors["search"], notes["search_floor_parts"] = search_floor(model, task, phases)
    if method == "gda":
        floors["cache"] = gda_floor(task)
    if model.method.trainable:
        per_step = training_floor(method, model, task, report.batch_size, args.floor_steps)
        floors["train"] = per_step * report.steps
        notes["floor_seconds_per_step"] = per_step
        notes["seconds_per_step"] = phases.per_step()
        if notes["seconds_per_step"] is not None:
            notes["train_setup_seconds"] = sec["train"] - notes["seconds_per_step"] * report.steps
        if phases.counts["val"]:
            floors["val"] = validation_floor(method, model, task) * phases.counts["val"]
    return {
        "method": method, "classes": args.classes, "entries": int(task["labels"].numel()),
        "validation": int(task["val_labels"].numel()), "steps": report.steps, "epochs": report.epochs,
        "batch": report.batch_size, "seconds": {k: sec[k] for k in PHASES + ("fit",)}, "floors": floors,
        "counts": phases.counts, "peak_rss_above_mib": max(0, peak - before) / MIB, "peak_rss_mib": peak / MIB,
        "accuracy": report.accuracy, "zero_shot_accuracy": report.zero_shot_accuracy, **notes,
    }  # fmt: skip


def ratio(seconds: float, floor: float | None) -> str:
    return "" if floor is None or floor <= 0 else f"{seconds / floor:.2f}x"


def row_line(row: dict) -> str:
    cells = [row["method"], f"{row['seconds']['fit']:.1f}"]
    for phase in ("cache", "search", "train", "val"):
        seconds, floor = row["seconds"][phase], row["floors"][phase]
        cells.append(f"{seconds:.2f}" + (f" / {floor:.2f} = {ratio(seconds, floor)}" if floor else ""))
    step, floor = row.get("seconds_per_step"), row.get("floor_seconds_per_step")
    cells.append("" if step is None else f"{1e3 * step:.1f} / {1e3 * floor:.1f} = {ratio(step, floor)}")
    cells.append("" if step is None else f"{row['train_setup_seconds']:.2f}")
    cells += [f"{row['seconds']['other']:.2f}", str(row["steps"]), f"{row['peak_rss_above_mib']:.0f}",
              f"{row['accuracy']:.3f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def run_child(method: str, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, "--child", method], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed: {done.stderr.strip()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--epochs", type=int, default=None, help="cap every trainable method's epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every trainable method's optimiser steps")
    parser.add_argument("--floor-steps", type=int, default=10, help="steps the bare training loop is timed over")
    parser.add_argument("--quick", action="store_true", help="a small smoke-run task")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per method (no peak memory)")
    parser.add_argument("--direct-count", action="store_true", help="score the search's ratios the direct way")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    if args.quick:
        args.classes, args.shots, args.views, args.dim, args.val_per_class = 12, 4, 3, 32, 2
        args.epochs = 2 if args.epochs is None else args.epochs
        args.floor_steps = min(args.floor_steps, 3)
    if args.child:
        print(json.dumps(child(args.child, args)))
        return []

    import torch

    forwarded = [a for a in raw if a not in ("--in-process",)]
    print(f"# bench_imagenet_sized: N = {args.classes} classes x K = {args.shots} shots x {args.views} views, "
          f"C = {args.dim}, {args.val_per_class} validation images per class")  # fmt: skip
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, {os.cpu_count()} "
          "CPUs; load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))  # fmt: skip
    if args.epochs is not None or args.max_steps is not None:
        print(f"# trainable methods capped at epochs={args.epochs}, max_steps={args.max_steps} (ratios are per step)")
    print("# each cell: seconds / floor seconds = ratio; floors measured in the same process right after its fit")
    print("| method | fit s | cache (GDA: statistics) | search | train | val | train per step ms | train set-up s | "
          "other s | steps | peak RSS above MiB | val acc |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for method in args.methods:
        row = child(method, args) if args.in_process else run_child(method, forwarded)
        rows.append(row)
        print(row_line(row), flush=True)
    print("# load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
