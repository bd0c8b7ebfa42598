"""The accuracy study's tables and curves (benchmarks/accuracy_study.py runs the fits): every table is computed from
the study's log, a JSON row per run, so that `accuracy_study.py --study --no-run` and `scripts/generate_docs.py`
(its ``study`` region of docs/accuracy.md) write the same text from the committed log without fitting anything.

The ``derived`` `auto` rows are no fits of their own: per (task, shots, seed), the `fit` row with the best validation
accuracy among `AUTO_CANDIDATES`, chosen by the demo's own `xmadapter_hf.demo.compare.auto_result`; the
``auto-check`` rows are real `fit(method="auto")` runs of a few cells, which the tables compare them with.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("zero-shot", "tip-adapter", "tip-adapter-f", "clip-adapter", "multimodal-adapter", "meta-adapter", "gda",
           "xmadapter")  # fmt: skip
#: The order the study runs them in: the cheap ones first, so that a run cut short has whole methods.
RUN_ORDER = ("zero-shot", "gda", "tip-adapter", "xmadapter", "tip-adapter-f", "meta-adapter", "clip-adapter",
             "multimodal-adapter")  # fmt: skip
TRAINED = ("tip-adapter-f", "clip-adapter", "multimodal-adapter", "meta-adapter", "xmadapter")
TASKS = ("photo", "sketch")
# ablation -> (method, fit keyword arguments, config overrides)
ABLATIONS = {
    "xma-no-gaussian": ("xmadapter", {}, {"use_gaussian_term": False}),
    "xma-no-text-cache": ("xmadapter", {}, {"use_text_cache": False}),
    "xma-no-hard-samples": ("xmadapter", {}, {"hard_sample_strength": 0.0}),
    "xma-dynamic-ratio": ("xmadapter", {}, {"dynamic_affinity_ratio": True}),
    "xma-independent-query": ("xmadapter", {}, {"text_query": "independent"}),
    "tip-adapter-f-last-epoch": ("tip-adapter-f", {"keep_best_epoch": False}, {}),
    "xmadapter-last-epoch": ("xmadapter", {"keep_best_epoch": False}, {}),
    "multimodal-adapter-last-epoch": ("multimodal-adapter", {"keep_best_epoch": False}, {}),
    "multimodal-adapter-plain": ("multimodal-adapter", {"plain": True}, {}),
    "multimodal-adapter-patience-20": ("multimodal-adapter", {"early_stopping_patience": 20}, {}),
    "multimodal-adapter-authors": ("multimodal-adapter", {"plain": True, "early_stopping_patience": 20}, {}),
}
#: ``auto-check``: `fit` of a model built with `method="auto"` (every candidate from the same views), the real path
#: the ``derived`` auto rows (chosen from the logged `fit` rows, `auto_result`) are checked against.
AUTO_CHECK = "auto-check"
VARIANTS = ("fit", "trainer", *ABLATIONS, AUTO_CHECK)
STUDY_SHOTS, STUDY_SEEDS, STUDY_VARIANTS = (1, 2, 4, 8, 16), 5, ("fit", "xma-no-gaussian")
STUDY_LOG = ROOT / "benchmarks" / "results" / "study.jsonl"
DOCS = ROOT / "docs" / "accuracy.md"
#: The region of docs/accuracy.md the tables are written into (scripts/generate_docs.py's ``study`` region).
BEGIN, END = "<!-- generated: study -->", "<!-- end generated: study -->"


def key(row) -> tuple:
    return (row.get("task", "photo"), row["variant"], row["method"], row["shots"], row["seed"])


def select(rows, variant, method, shots, task=None) -> dict:
    """Test accuracy by seed of one (variant, method, shots) (of one task, when given)."""
    return {r["seed"]: r["test"] for r in rows
            if (r["variant"], r["method"], r["shots"]) == (variant, method, shots)
            and (task is None or r.get("task", "photo") == task)}  # fmt: skip


def differences(rows, a, b, shots, task=None) -> list[float]:
    """Paired test differences ``a - b`` in points over the seeds both have; ``a``, ``b``: (variant, method)."""
    base, runs = select(rows, *b, shots, task), select(rows, *a, shots, task)
    return [100 * (test - base[seed]) for seed, test in sorted(runs.items()) if seed in base]


def count(values) -> str:
    """`` (n=3)`` after a cell of fewer seeds than the study's."""
    return f" (n={len(values)})" if len(values) < STUDY_SEEDS else ""


def mean_error(values: list[float]) -> str:
    if not values:
        return "—"
    error = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.1f} ± {error:.1f}{count(values)}"


def paired(rows, variant_a, method_a, variant_b, method_b, shots, task=None) -> str:
    return mean_error(differences(rows, (variant_a, method_a), (variant_b, method_b), shots, task))


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}{count(values)}"


def ordered_runs(rows) -> list[tuple[str, str]]:
    seen = []
    for r in rows:
        if (r["variant"], r["method"]) not in seen:
            seen.append((r["variant"], r["method"]))
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(seen, key=lambda vm: (vm[0] != "fit", vm[0], order.get(vm[1], len(order))))


def print_tables(rows) -> None:
    """The mean ± std table and the paired differences, for the rows' shot counts (issue 15's layout)."""
    shots_list = sorted({r["shots"] for r in rows})
    print(f"\n| variant | method | {' | '.join(f'{k}-shot' for k in shots_list)} |")
    print(f"|---|---|{'---|' * len(shots_list)}")
    for variant, method in ordered_runs(rows):
        cells = [mean_std([100 * t for t in select(rows, variant, method, k).values()]) for k in shots_list]
        print(f"| {variant} | {method} | {' | '.join(cells)} |")
    print(f"\nPaired differences (test points, mean ± standard error over seeds)\n\n| comparison | "
          f"{' | '.join(f'{k}-shot' for k in shots_list)} |\n|---|{'---|' * len(shots_list)}")  # fmt: skip
    comparisons = [(("fit", "xmadapter"), ("fit", "gda"))]
    for path_ in ("fit", "trainer"):
        comparisons += [((path_, "xmadapter"), (path_, "tip-adapter-f"))]
        comparisons += [((path_, m), (path_, "tip-adapter")) for m in TRAINED]
    for variant, (method, _, _) in ABLATIONS.items():
        comparisons.append(((variant, method), ("fit", method)))
    for (va, ma), (vb, mb) in comparisons:
        cells = [paired(rows, va, ma, vb, mb, k) for k in shots_list]
        if any(c != "—" for c in cells):
            print(f"| {va} {ma} − {vb} {mb} | {' | '.join(cells)} |")


#: Issue 24's acceptance: (label, a, b, the least mean difference in points) at `ACCEPTANCE_SHOTS` on every task.
ACCEPTANCE = (
    ("XMAdapter − GDA", ("fit", "xmadapter"), ("fit", "gda"), -0.5),
    ("auto − best single method", ("derived", "auto"), ("fit", "best"), -1.0),
)
ACCEPTANCE_SHOTS = (4, 8, 16)


def acceptance_table(rows, derived) -> list[str]:
    """Issue 24's targets, one row per (task, comparison): the paired mean ± standard error at 4/8/16 shots and
    whether the mean reaches the target (``incomplete`` where a cell has fewer than `STUDY_SEEDS` seeds)."""
    header = " | ".join(f"{k}-shot" for k in ACCEPTANCE_SHOTS)
    lines = [f"| task | comparison (target) | {header} | met |", f"|---|---|{'---|' * len(ACCEPTANCE_SHOTS)}---|"]
    for task in TASKS:
        task_rows = [r for r in rows if r.get("task", "photo") == task] + complete(
            [r for r in derived if r["task"] == task]
        )
        if not task_rows:
            continue
        for label, a, b, target in ACCEPTANCE:
            values = [best_differences(task_rows, a, k) if b == ("fit", "best") else differences(task_rows, a, b, k)
                      for k in ACCEPTANCE_SHOTS]  # fmt: skip
            if any(len(v) < STUDY_SEEDS for v in values):
                verdict = "incomplete"
            else:
                verdict = "yes" if all(statistics.mean(v) >= target for v in values) else "**no**"
            cells = " | ".join(mean_error(v) for v in values)
            lines.append(f"| {task} | {label} (≥ {target:+.1f}) | {cells} | {verdict} |")
    return lines


def study_tables(rows) -> str:
    """Issue 24's tables for docs/accuracy.md: the acceptance rows, then per task test accuracy (mean ± std) and
    paired differences."""
    rows = [r for r in rows if r["variant"] != DERIVED]
    derived = derived_auto_rows(rows)
    lines = ["### Issue 24's targets (test points, paired by seed, mean ± standard error)", "",
             *acceptance_table([r for r in rows if r["variant"] != AUTO_CHECK], derived), ""]  # fmt: skip
    for task in TASKS:
        task_derived = [r for r in derived if r["task"] == task]
        checks = [r for r in rows if r.get("task", "photo") == task and r["variant"] == AUTO_CHECK]
        task_rows = [r for r in rows if r.get("task", "photo") == task and r["variant"] != AUTO_CHECK]
        if not task_rows:
            continue
        task_rows += complete(task_derived)
        shots_list = sorted({r["shots"] for r in task_rows})
        header = " | ".join(f"{k}-shot" for k in shots_list)
        seeds = sorted({r["seed"] for r in task_rows})
        lines += [f"### Task `{task}`: test accuracy (%), mean ± std over seeds {seeds[0]}-{seeds[-1]}", "",
                  f"| variant | method | {header} |", f"|---|---|{'---|' * len(shots_list)}"]  # fmt: skip
        runs = ordered_runs(task_rows)
        for variant, method in runs:
            cells = [mean_std([100 * t for t in select(task_rows, variant, method, k).values()]) for k in shots_list]
            lines.append(f"| {variant} | {method} | {' | '.join(cells)} |")
        fits = [r for r in task_rows if r["variant"] == "fit"]
        lines += ["", *auto_notes(task_derived, checks, fits, shots_list)]
        lines += ["", f"Paired differences on `{task}` (test points, mean ± standard error over seeds)", "",
                  f"| comparison | {header} |", f"|---|{'---|' * len(shots_list)}"]  # fmt: skip
        comparisons = [
            (("fit", "xmadapter"), ("fit", "gda")),
            (("xma-no-gaussian", "xmadapter"), ("fit", "gda")),
            (("fit", "xmadapter"), ("xma-no-gaussian", "xmadapter")),
            (("fit", "xmadapter"), ("fit", "tip-adapter-f")),
            (("fit", "gda"), ("fit", "tip-adapter")),
        ]
        comparisons += [((DERIVED, "auto"), ("fit", "best"))]
        for a, b in comparisons:
            if b == ("fit", "best"):
                cells = [mean_error(best_differences(task_rows, a, k)) for k in shots_list]
                label = "derived auto − the best single method (by mean test accuracy at that shot count)"
            else:
                cells = [mean_error(differences(task_rows, a, b, k)) for k in shots_list]
                label = f"{a[0]} {a[1]} − {b[0]} {b[1]}"
            if any(c != "—" for c in cells):
                lines.append(f"| {label} | {' | '.join(cells)} |")
        lines += ["", f"![test accuracy against shots on {task}](accuracy_{task}.png)", ""]
    return "\n".join(lines)


DERIVED = "derived"


def derived_auto_rows(rows) -> list[dict]:
    """The `auto` row of every (task, shots, seed) with `fit` rows, derived from them as `xmadapter demo` derives its
    own (`xmadapter_hf.demo.compare.auto_result`: the best validation accuracy, a tie to the earlier of
    `AUTO_CANDIDATES`): variant ``derived``, method ``auto``, ``chosen`` the method, ``missing`` the candidates the log
    lacks for that cell (a row with any missing is no complete auto row: the tables leave it out and say so)."""
    from xmadapter_hf.demo.compare import DemoResult, auto_result
    from xmadapter_hf.methods import AUTO_CANDIDATES

    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["variant"] == "fit" and r["method"] in AUTO_CANDIDATES and r.get("validation") is not None:
            cells.setdefault((r.get("task", "photo"), r["shots"], r["seed"]), {})[r["method"]] = r
    derived = []
    for (task, shots, seed), fits in sorted(cells.items()):
        results = [DemoResult(seed=seed, shots=shots, method=m, search="default", test_accuracy=r["test"],
                              zero_shot_accuracy=float("nan"), validation_accuracy=r["validation"],
                              affinity_ratio=None, seconds=r["seconds"], extraction_seconds=0.0)
                   for m, r in fits.items()]  # fmt: skip
        auto = auto_result(results)
        derived.append(dict(task=task, variant=DERIVED, method="auto", shots=shots, seed=seed,
                            test=auto.test_accuracy, validation=auto.validation_accuracy, chosen=auto.chosen,
                            seconds=round(auto.seconds, 1),
                            missing=[m for m in AUTO_CANDIDATES if m not in fits]))  # fmt: skip
    return derived


def complete(derived) -> list[dict]:
    return [r for r in derived if not r["missing"]]


def auto_notes(derived, checks, fits, shots_list) -> list[str]:
    """What the ``derived auto`` row is, which cells it leaves out, what it chose, and its check against real
    `fit(method="auto")` runs (``auto-check`` rows) of the same cells, whose candidates' validation accuracies are
    compared with the logged ``fits``."""
    lines = ["`derived auto` is no fit of its own: per seed and shot count, the `fit` row above with the best "
             "validation accuracy among `AUTO_CANDIDATES` (a tie to the earlier), derived by the demo's "
             "`auto_result`."]  # fmt: skip
    chosen = []
    for k in shots_list:
        names = [r["chosen"] for r in complete(derived) if r["shots"] == k]
        counts = ", ".join(f"{m} ×{names.count(m)}" for m in dict.fromkeys(names))
        chosen.append(f"{k}-shot {counts or '—'}")
    lines[0] += f" It chose: {'; '.join(chosen)}."
    partial = [r for r in derived if r["missing"]]
    if partial:
        cells = {}
        for r in partial:
            cells.setdefault((r["shots"], ", ".join(r["missing"])), []).append(str(r["seed"]))
        listed = "; ".join(
            f"{k}-shot seeds {', '.join(seeds)} (no {missing})" for (k, missing), seeds in cells.items()
        )
        lines[0] += f" **Left out, the log lacking a candidate's row:** {listed}."
    if checks:
        by_cell = {(r["shots"], r["seed"]): r for r in derived}
        lines += ["", "Check of the derivation: `fit(from_clip(..., method=\"auto\"), views, validation)` run for "
                  "real on the same views and splits (`--variants auto-check`):", "",
                  "| cell | derived: chosen, test | fit(method=\"auto\"): chosen, test | candidates' validation "
                  "accuracy as logged | same |", "|---|---|---|---|---|"]  # fmt: skip
        for check in sorted(checks, key=lambda r: (r["shots"], r["seed"])):
            d = by_cell.get((check["shots"], check["seed"]))
            candidates = check.get("candidates") or {}
            logged = {r["method"]: r.get("validation") for r in fits
                      if (r["shots"], r["seed"]) == (check["shots"], check["seed"])}  # fmt: skip
            equal = sum(1 for m, v in candidates.items() if logged.get(m) == v)
            same = d is not None and not d["missing"] and d["chosen"] == check["chosen"] and d["test"] == check["test"]
            derived_cell = "—" if d is None else f"{d['chosen']}, {100 * d['test']:.2f}" + (
                f" (no {', '.join(d['missing'])})" if d["missing"] else "")  # fmt: skip
            lines.append(f"| {check['shots']}-shot seed {check['seed']} | {derived_cell} | {check['chosen']}, "
                         f"{100 * check['test']:.2f} | {equal} of {len(candidates)} equal | "
                         f"{'yes' if same else '**no**'} |")  # fmt: skip
    return lines


def best_single(rows, shots) -> str | None:
    """The method (variant `fit`, not `auto`) with the best mean test accuracy at ``shots``."""
    means = {}
    for method in METHODS:
        values = list(select(rows, "fit", method, shots).values())
        if values:
            means[method] = statistics.mean(values)
    return max(means, key=means.get) if means else None


def best_differences(rows, a, shots) -> list[float]:
    best = best_single(rows, shots)
    return [] if best is None else differences(rows, a, ("fit", best), shots)


def plot_curves(rows, path: str, task: str | None = None) -> None:
    """Mean test accuracy (± std over seeds) against shots, one panel per path (`fit`, `trainer`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xmadapter_hf.plotting import method_colour

    if task is not None:
        rows = [r for r in rows if r.get("task", "photo") == task]
    rows = [r for r in rows if r["variant"] not in (DERIVED, AUTO_CHECK)]
    rows += complete(derived_auto_rows(rows))  # the fit panel's `auto (derived)`: only cells with every candidate
    paths = [p for p in ("fit", "trainer") if any(r["variant"] == p for r in rows)]
    figure, axes = plt.subplots(1, len(paths), figsize=(6.5 * len(paths), 4.6), sharey=True, squeeze=False)
    for axis, variant in zip(axes[0], paths):
        curves = [(variant, method) for method in METHODS] + ([(DERIVED, "auto")] if variant == "fit" else [])
        for run_variant, method in curves:
            shots = sorted({r["shots"] for r in rows if (r["variant"], r["method"]) == (run_variant, method)})
            if not shots:
                continue
            values = [[100 * t for t in select(rows, run_variant, method, k).values()] for k in shots]
            means = [statistics.mean(v) for v in values]
            spreads = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            style = dict(linewidth=2.5) if method in ("xmadapter", "gda") else dict(linewidth=1.2)
            if run_variant == DERIVED:
                style = dict(linewidth=1.5, linestyle="--")
            label = "auto (derived from the fit rows)" if run_variant == DERIVED else method
            axis.errorbar(shots, means, yerr=spreads, marker="o", capsize=3, label=label, color=method_colour(method),
                          **style)  # fmt: skip
        axis.set_xscale("log", base=2)
        axis.set_xlabel("shots per class")
        axis.set_title(f"{variant} ({task or 'demo'} task, mean ± std over seeds)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def read_rows(names) -> list[dict]:
    """Rows of JSON lists, this script's logs (a JSON row a line) or its JSONL logs; the last row of a run wins."""
    rows = {}
    for name in names:
        if not os.path.exists(name):
            continue
        with open(name) as handle:
            text = handle.read()
        found = json.loads(text) if text.lstrip().startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.startswith('{"')]  # fmt: skip
        rows.update({key(r): r for r in found if "variant" in r})
    return list(rows.values())


def write_docs(rows) -> None:
    """The tables between the markers of docs/accuracy.md and one PNG of curves per task."""
    text = DOCS.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOCS} has no {BEGIN} ... {END} markers to write the tables between.")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    DOCS.write_text(f"{before}{BEGIN}\n{study_tables(rows)}\n{END}{after}")  # as generate_docs.py writes it
    for task in TASKS:
        if any(r.get("task", "photo") == task for r in rows):
            plot_curves(rows, str(ROOT / "docs" / f"accuracy_{task}.png"), task)
    print(f"wrote {DOCS} and docs/accuracy_<task>.png from {len(rows)} runs")
