"""`xmadapter reproduce`: a paper's protocol in one command (few-shot, base-to-novel, domain generalisation,
Meta-Adapter's own).

Reads the datasets under --data-root (CoOp's layouts, or class-folder trees), extracts each dataset's embeddings
once (kept under OUTPUT/features, keyed by image identity, shared by every method, shot count and seed), fits every
method at every shot count and seed with its defaults, evaluates on the test split, and writes OUTPUT/results.csv,
results.json, results.md (mean ± std over seeds, the published numbers beside ours) and few_shot_curves.png (with
the `plot` extra). Run it again with the same OUTPUT to continue an interrupted run: finished cells are read back,
not redone. A run whose settings differ from those recorded in OUTPUT stops (--overwrite discards the old cells).
See docs/reproduce.md.
"""

from __future__ import annotations

from .common import (
    CLIError,
    Command,
    add_progress_argument,
    add_threads_argument,
    add_training_arguments,
    add_workers_argument,
    positive_int,
    search_options,
    set_threads,
    set_workers,
    show_progress,
)
from .progress import progress


def add_arguments(parser) -> None:
    parser.add_argument("--data-root", required=True, help="the folder holding the datasets (docs/reproduce.md)")
    parser.add_argument(
        "--datasets", nargs="+", required=True, metavar="NAME", help="benchmark names (e.g. dtd eurosat "
        "oxford_pets) or class-folder trees under --data-root; domain-generalisation: imagenet, then targets",
    )  # fmt: skip
    parser.add_argument("--methods", nargs="+", required=True, metavar="METHOD", help="registered method names")
    parser.add_argument("--shots", nargs="+", type=positive_int, default=[1, 2, 4, 8, 16], help="default 1 2 4 8 16")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="default 1 2 3 (CoOp's)")
    parser.add_argument(
        "--model", default="demo", help="the backbone: a CLIP Hub id or local path, `demo`, or "
        "open_clip:ARCH/PRETRAINED (the open_clip extra), e.g. open_clip:RN50/openai (default: demo)",
    )  # fmt: skip
    # No `choices=` for --protocol, --validation, --templates: the names are the reproduce package's (it names the
    # papers' protocols), and importing it to build the parser would import `datasets` for `--help`; `run` checks
    # them first instead.
    parser.add_argument(
        "--protocol", default="few-shot", metavar="PROTOCOL",
        help="few-shot (the default), base-to-novel, domain-generalisation, or meta-adapter: Meta-Adapter's own (its "
        "datasets, base/novel lists, supports from the val split, novel-class test images scored over all classes)",
    )  # fmt: skip
    parser.add_argument(
        "--meta-adapter-unofficial", action="store_true", help="meta-adapter protocol: apply the base and novel "
        "filters and K supports on every dataset, not the official readers' per-dataset quirks",
    )  # fmt: skip
    parser.add_argument(
        "--meta-adapter-allow-missing-classes", action="store_true", help="meta-adapter protocol: accept a dataset "
        "that lacks some classes of Meta-Adapter's lists (a subset of a dataset)",
    )  # fmt: skip
    parser.add_argument("--output", required=True, help="the results folder (a rerun continues it)")
    parser.add_argument("--overwrite", action="store_true", help="discard cells written with other settings")
    parser.add_argument(
        "--validation", default="coop", metavar="RULE",
        help="coop: min(K, 4) validation images per class; tip-adapter: the whole val split (default: coop)",
    )  # fmt: skip
    parser.add_argument(
        "--templates", metavar="SOURCE", help="prompt templates per dataset: tip-adapter (the default), clip or coop"
    )
    add_training_arguments(parser, step=True)
    parser.add_argument("--backbone-name", help="the backbone's name in the report, e.g. RN50 (default: from --model)")
    parser.add_argument("--feature-dir", help="the embedding store (default OUTPUT/features)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per backbone forward (32)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the few-shot curves")
    add_threads_argument(parser)
    add_workers_argument(parser)
    add_progress_argument(parser)


def run(args) -> int:
    from ..reproduce import VALIDATION_RULES, list_template_sources
    from ..reproduce.harness import PROTOCOLS, ReproduceError, markdown_table, run_protocol

    if args.protocol not in PROTOCOLS:
        raise CLIError(f"--protocol: invalid choice: {args.protocol!r} (choose from {PROTOCOLS})", 2)
    if args.validation not in VALIDATION_RULES:
        raise CLIError(f"--validation: invalid choice: {args.validation!r} (choose from {VALIDATION_RULES})", 2)
    templates = {} if args.templates is None else {"templates": args.templates}  # default: run_protocol's
    if args.templates is not None and args.templates not in list_template_sources():
        raise CLIError(f"--templates: invalid choice: {args.templates!r} (choose from {list_template_sources()})", 2)
    search = search_options(args)
    set_threads(args.threads)
    set_workers(args.workers)

    done = []

    def report(cell, rows, skipped):
        done.append(cell)
        progress(f"{len(done)} cells done, last {cell['dataset']} {cell['method']} {cell['shots']}-shot seed "
                 f"{cell['seed']}")  # fmt: skip
        what = "done before" if skipped else f"{rows[0]['seconds']:.1f} s"
        scores = ", ".join(f"{r['evaluated_on']} {r['accuracy']:.2f}" for r in rows)
        print(f"{cell['dataset']} {cell['method']} {cell['shots']}-shot seed {cell['seed']}: {scores} ({what})",
              flush=True)  # fmt: skip

    try:
        result = run_protocol(
            args.data_root, args.datasets, args.methods, output_dir=args.output, model=args.model,
            protocol=args.protocol, shots=args.shots, seeds=args.seeds, validation=args.validation,
            **templates, augment_views=args.augment_views, epochs=args.epochs,
            **search,
            meta_adapter_official=not args.meta_adapter_unofficial,
            meta_adapter_require_all_classes=not args.meta_adapter_allow_missing_classes,
            backbone_name=args.backbone_name, feature_dir=args.feature_dir, batch_size=args.batch_size,
            overwrite=args.overwrite, plot=not args.no_plot, on_cell=report, show_progress=show_progress(args),
            num_workers=args.workers,
        )  # fmt: skip
    except (ReproduceError, ImportError) as error:  # ImportError: the open_clip extra (its message names it)
        raise CLIError(str(error)) from error
    print(f"cells: {result.cells_run} run, {result.cells_skipped} read back; images embedded: "
          f"{result.images_embedded}")  # fmt: skip
    print(markdown_table(result.summary))
    for kind, path in result.files.items():
        print(f"wrote {kind}: {path}")
    if "plot" not in result.files and args.protocol == "few-shot" and not args.no_plot:
        print("no plot: matplotlib is not installed (pip install 'xmadapter-hf[plot]')")
    return 0


COMMAND = Command(
    name="reproduce",
    help="run a paper's protocol (few-shot, base-to-novel, domain generalisation, meta-adapter) and write its tables",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
