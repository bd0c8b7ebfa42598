"""`xmadapter reproduce` / `run_protocol` end to end on miniature datasets and the tiny random CLIP.

The miniature datasets are generated in CoOp's layouts (split files included) with class-coloured 16x16 images.
Every number the reports hold is checked against an independent computation: the few-shot draw, extraction with
`extract_embeddings`, `fit` and the test accuracy done by hand (Meta-Adapter's protocol: then the saved adapter given
all the classes by `from_pretrained(class_names=...)` and the supports by `set_cache`); means and stds recomputed from
the CSV.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from xmadapter_hf import ExtractedEmbeddings, XMAdapterForImageClassification, extract_embeddings, fit
from xmadapter_hf.cli import main
from xmadapter_hf.reproduce import (
    base_to_novel_task,
    cells,
    dataset_layout,
    domain_generalisation_task,
    few_shot_task,
    harmonic_mean,
    meta_adapter_task,
    prompt_templates,
    read_dataset,
)
from xmadapter_hf.reproduce.harness import META_ADAPTER_RULE, ReproduceError, run_protocol
from xmadapter_hf.testing import tiny_clip

SIZES = (("train", 4), ("val", 2), ("test", 3))
DTD = ["paisley", "knitted", "braided", "dotted", "banded"]  # 5 classes: base 0..2, novel 3..4
EUROSAT = ["Forest", "River", "Sea or Lake"]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
FAST = dict(augment_views=2, epochs=2, search_scale=(50, 50), search_step=(10, 5))


def _image(path: Path, label: int, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.array([(label * 80) % 256, 255 - label * 60, (label * 37) % 256])
    Image.fromarray(np.clip(base + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)).save(path)


def _coop(root: Path, name: str, classes: list[str], rng) -> None:
    layout = dataset_layout(name)
    folder = root / layout["folder"]
    images = folder if layout["paths_relative_to"] == "folder" else folder / layout["image_dir"]
    split = {}
    for split_name, count in SIZES:
        split[split_name] = []
        for label, class_name in enumerate(classes):
            for i in range(count):
                rel = f"{class_name.replace(' ', '_')}/{split_name}_{i}.png"
                _image(images / rel, label, rng)
                split[split_name].append([rel, label, class_name])
    (folder / layout["split_file"]).write_text(json.dumps(split))


def _imagenet(root: Path, rng) -> None:
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_text("".join(f"{w} class {w[-3:]}\n" for w in WNIDS))
    for sub, count in (("train", 5), ("val", 2)):
        for label, wnid in enumerate(WNIDS):
            for i in range(count):
                _image(root / "imagenet" / "images" / sub / wnid / f"{i}.png", label, rng)
    for label in (1, 3):  # ImageNet-A holds 2 of the 4 classes here
        for i in range(2):
            _image(root / "imagenet-adversarial" / "imagenet-a" / WNIDS[label] / f"{i}.png", label, rng)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reproduce-data")
    rng = np.random.default_rng(0)
    _coop(root, "dtd", DTD, rng)
    _coop(root, "eurosat", EUROSAT, rng)
    _imagenet(root, rng)
    return root


class CountingClip:
    """Counts the images the backbone's vision tower embeds (wraps `get_image_features` of the tiny CLIP)."""

    def __init__(self):
        torch.manual_seed(0)
        self.clip, self.processor = tiny_clip()
        self.images = 0
        original = self.clip.get_image_features

        def counted(pixel_values=None, **kwargs):
            self.images += pixel_values.shape[0]
            return original(pixel_values=pixel_values, **kwargs)

        self.clip.get_image_features = counted


@pytest.fixture(scope="module")
def counting():
    return CountingClip()


def _run(root, output, backbone, **kwargs):
    settings = dict(datasets=["dtd", "eurosat"], methods=["tip-adapter", "clip-adapter"], shots=[1, 2],
                    seeds=[1, 2], model="tiny-clip", **FAST)  # fmt: skip
    settings.update(kwargs)
    return run_protocol(root, settings.pop("datasets"), settings.pop("methods"), output_dir=output,
                        backbone=(backbone.clip, backbone.processor), **settings)  # fmt: skip


def _expected_images(root) -> int:
    """Image forwards the backbone must run: each image once per store (train with 2 views, val and test plain)."""
    total = 0
    for name in ("dtd", "eurosat"):
        dataset = read_dataset(name, root)
        tasks = [few_shot_task(dataset, k, s) for k in (1, 2) for s in (1, 2)]
        train = {r.image_id for t in tasks for r in t.train}
        val = {r.image_id for t in tasks for r in t.val}
        total += 2 * len(train) + len(val) + len(dataset.split("test"))  # 2 views per training image
    return total


def test_few_shot_end_to_end_resume_reuse_and_reports(data_root, counting, tmp_path):
    output = tmp_path / "run"
    seen = []

    def interrupt(cell, rows, skipped):
        seen.append(cell)
        if len(seen) == 3:
            raise KeyboardInterrupt  # a killed run: 3 cells finished

    with pytest.raises(KeyboardInterrupt):
        _run(data_root, output, counting, on_cell=interrupt)
    assert len(list((output / "cells").rglob("*.json"))) == 3
    # a cell half-written when the run was killed: unreadable, so redone
    half = output / "cells" / "few-shot" / "dtd" / "tip-adapter" / "shots2-seed1.json"
    half.write_text('{"settings_key": "')
    counting.images = 0
    resumed = _run(data_root, output, counting)
    assert (resumed.cells_skipped, resumed.cells_run) == (2, 14)
    # features were extracted once per image and store, across methods, shots and seeds (and the interruption)
    first_images = counting.images
    assert first_images <= _expected_images(data_root)

    counting.images = 0
    again = _run(data_root, output, counting)
    assert (again.cells_skipped, again.cells_run, again.images_embedded, counting.images) == (16, 0, 0, 0)
    table = Path(again.files["markdown"]).read_text()
    assert table == Path(resumed.files["markdown"]).read_text()

    # an uninterrupted run from scratch gives the same table, and embeds each image exactly once per store
    counting.images = 0
    fresh = _run(data_root, tmp_path / "fresh", counting)
    assert counting.images == _expected_images(data_root)  # image forwards (a training image: 2 views)
    assert fresh.images_embedded == 65  # distinct (image, store) pairs: 2 x 4 cells share them
    assert Path(fresh.files["markdown"]).read_text() == table

    # the CSV: one row per cell, checked against an independent fit of one cell
    with open(output / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16 and {r["dataset"] for r in rows} == {"dtd", "eurosat"}
    cell = ("dtd", "tip-adapter", "2", "1")
    row = next(r for r in rows if (r["dataset"], r["method"], r["shots"], r["seed"]) == cell)
    assert float(row["accuracy"]) == pytest.approx(_independent_accuracy(data_root, counting, "tip-adapter", 2, 1),
                                                   abs=1e-3)  # fmt: skip

    # JSON summary and Markdown: mean ± sample std over the seeds, recomputed from the CSV
    summary = json.loads((output / "results.json").read_text())["summary"]
    assert len(summary) == 8
    for entry in summary:
        values = [float(r["accuracy"]) for r in rows if (r["dataset"], r["method"], int(r["shots"])) ==
                  (entry["dataset"], entry["method"], entry["shots"])]  # fmt: skip
        assert entry["mean"] == pytest.approx(statistics.fmean(values), abs=1e-3)
        assert entry["std"] == pytest.approx(statistics.stdev(values), abs=1e-3)
        assert f"{entry['mean']:.2f} ± {entry['std']:.2f} (2)" in table
        # Tip-Adapter's RN50 numbers beside ours, no difference column (the backbone is not RN50)
        published = entry["published"]
        assert published and all(p["backbone"] == "RN50" and p["difference"] is None for p in published)
    assert "46.22 (RN50)" in table  # Tip-Adapter, DTD, 1 shot, exp.log of gaopengcuhk/Tip-Adapter
    assert (output / "few_shot_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a changed configuration is refused, not mixed in
    with pytest.raises(ReproduceError, match="augment_views"):
        _run(data_root, output, counting, augment_views=3)


def _embed(counting, dataset, split, views) -> torch.Tensor:
    """`(max(views, 1), M, C)` embeddings of ``split``'s images, straight from `extract_embeddings` (no store)."""
    full = dataset.split(split.name).to_hf()
    return extract_embeddings(counting.clip, counting.processor, full, augment_views=views, seed=0,
                              show_progress=False, indices=[r.index for r in split]).embeds  # fmt: skip


def _fitted(counting, dataset, task, method, seed):
    """``method`` fitted by hand on a few-shot task of the DTD miniature (the harness's FAST settings)."""
    model = XMAdapterForImageClassification.from_clip(
        counting.clip, list(task.class_names), processor=counting.processor,
        templates=prompt_templates("dtd", "tip-adapter"), method=method,
    )  # fmt: skip
    train = ExtractedEmbeddings(_embed(counting, dataset, task.train, 2), torch.tensor(task.train.labels))
    model, _ = fit(model, train, _embed(counting, dataset, task.val, 0)[0],
                   validation_labels=torch.tensor(task.val.labels), seed=seed, epochs=2, search_scale=(50, 50),
                   search_step=(10, 5), dataset_name="dtd", show_progress=False)  # fmt: skip
    return model


def _test_accuracy(counting, dataset, model, test) -> float:
    with torch.no_grad():
        logits = model(image_embeds=_embed(counting, dataset, test, 0)[0]).logits
    return 100.0 * float((logits.argmax(-1) == torch.tensor(test.labels)).float().mean())


def _independent_accuracy(root, counting, method, shots, seed) -> float:
    dataset = read_dataset("dtd", root)
    task = few_shot_task(dataset, shots, seed)
    return _test_accuracy(counting, dataset, _fitted(counting, dataset, task, method, seed), task.test)


def test_gda_cells_with_gda_s_published_rows_imagenet_flagged_as_selected_on_test(data_root, counting, tmp_path):
    """GDA runs in the harness like any method (the papers' grids: its official alpha grid x s / 100), and its
    published RN50 rows (mrflogs/ICLR24 exp.log) sit beside ours: ImageNet's with the dagger, since the official code
    selects alpha on the test set there (`val_features = test_features`)."""
    result = _run(data_root, tmp_path / "gda", counting, datasets=["dtd", "imagenet"], methods=["gda"], shots=[1],
                  seeds=[1])  # fmt: skip
    row = next(r for r in result.rows if r["dataset"] == "dtd")
    assert row["accuracy"] == pytest.approx(_independent_accuracy(data_root, counting, "gda", 1, 1), abs=1e-3)
    published = {e["dataset"]: e["published"] for e in result.summary}
    assert [(p["paper"], p["accuracy"], p["selected_on_test"]) for p in published["dtd"]] == [("gda", 46.26, False)]
    assert [(p["paper"], p["accuracy"], p["selected_on_test"]) for p in published["imagenet"]] == [
        ("gda", 60.64, True)
    ]
    table = Path(result.files["markdown"]).read_text()
    assert "46.26 (RN50)" in table and "60.64† (RN50)" in table


def test_base_to_novel_reports_base_novel_and_harmonic_mean(data_root, counting, tmp_path):
    result = _run(data_root, tmp_path / "b2n", counting, protocol="base-to-novel", datasets=["dtd"],
                  methods=["tip-adapter"], shots=[2], seeds=[1, 2])  # fmt: skip
    dataset = read_dataset("dtd", data_root)
    task = base_to_novel_task(few_shot_task(dataset, 2, 1))
    assert task.base_label_ids == (0, 1, 2) and task.novel_label_ids == (3, 4)
    rows = {(r["evaluated_on"], r["seed"]): r for r in result.rows}
    assert rows[("base", 1)]["num_test"] == 3 * 3 and rows[("novel", 1)]["num_test"] == 2 * 3
    assert rows[("base", 1)]["num_train"] == 3 * 2  # trained on base classes only
    # novel classes: zero-shot CLIP over the novel class names, recomputed here
    zero_shot = XMAdapterForImageClassification.from_clip(
        counting.clip, list(task.novel.class_names), processor=counting.processor,
        templates=prompt_templates("dtd", "tip-adapter"), method="zero-shot",
    )  # fmt: skip
    test = extract_embeddings(counting.clip, counting.processor, dataset.split("test").to_hf(), augment_views=0,
                              indices=[r.index for r in task.novel.test], show_progress=False).embeds[0]  # fmt: skip
    with torch.no_grad():
        predicted = zero_shot(image_embeds=test).logits.argmax(-1)
    novel = 100.0 * float((predicted == torch.tensor(task.novel.test.labels)).float().mean())
    assert rows[("novel", 1)]["accuracy"] == pytest.approx(novel, abs=1e-3)
    for seed in (1, 2):
        assert rows[("harmonic mean", seed)]["accuracy"] == pytest.approx(
            harmonic_mean(rows[("base", seed)]["accuracy"], rows[("novel", seed)]["accuracy"]), abs=1e-3
        )
    table = Path(result.files["markdown"]).read_text()
    assert "| dtd | harmonic mean | tip-adapter | 2 |" in table and "zero-shot CLIP" in table
    assert "plot" not in result.files  # curves are for the few-shot protocol


def test_domain_generalisation_scores_target_classes(data_root, counting, tmp_path):
    result = _run(data_root, tmp_path / "dg", counting, protocol="domain-generalisation",
                  datasets=["imagenet", "imagenet_a"], methods=["tip-adapter"], shots=[1], seeds=[1])  # fmt: skip
    source, target = read_dataset("imagenet", data_root), read_dataset("imagenet_a", data_root)
    dg = domain_generalisation_task(source, target)
    assert dg.source_label_ids == (1, 3)
    rows = {r["evaluated_on"]: r for r in result.rows}
    assert set(rows) == {"imagenet", "imagenet_a"}
    assert rows["imagenet"]["num_test"] == 4 * 2 and rows["imagenet_a"]["num_test"] == 2 * 2
    assert rows["imagenet"]["num_train"] == rows["imagenet_a"]["num_train"] == 4  # 1 shot x 4 ImageNet classes


def test_meta_adapter_protocol_fits_base_classes_then_scores_all_classes(data_root, counting, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    scored = []  # the logits the harness scores, per cell in order

    def logits(model, embeds):
        scored.append(original(model, embeds))
        return scored[-1]

    original = cells._logits
    monkeypatch.setattr(cells, "_logits", logits)
    output = tmp_path / "meta"
    meta = dict(protocol="meta-adapter", methods=["meta-adapter", "tip-adapter", "zero-shot"], shots=[2], seeds=[1],
                meta_adapter_require_all_classes=False)  # fmt: skip
    counting.images = 0
    result = _run(data_root, output, counting, **meta)
    assert (result.cells_run, len(scored)) == (6, 6)
    # each image went through the backbone once per store: meta-training images (2 views), validation images of the
    # meta-training classes (plain), supports (2 views, from the val split too), test images (plain)
    forwards, stored = 0, 0
    tasks = {name: meta_adapter_task(read_dataset(name, data_root), 2, 1, require_all_classes=False)
             for name in ("dtd", "eurosat")}  # fmt: skip
    for name, task in tasks.items():
        validation = few_shot_task(read_dataset(name, data_root), 2, 1).val.keep_classes(set(task.train.labels))
        for split, views in ((task.train, 2), (validation, 1), (task.support, 2), (task.test, 1)):
            forwards, stored = forwards + views * len(set(split.image_ids)), stored + len(set(split.image_ids))
    assert (counting.images, result.images_embedded) == (forwards, stored)

    rows = {(r["dataset"], r["method"]): r for r in result.rows}
    # DTD: base = paisley, knitted; novel = braided, dotted, banded. EuroSAT: the official reader trains on all 3.
    assert {r["evaluated_on"] for r in result.rows} == {"novel (all classes)"}
    assert (rows[("dtd", "tip-adapter")]["num_train"], rows[("dtd", "tip-adapter")]["num_test"]) == (2 * 2, 3 * 2)
    assert rows[("eurosat", "tip-adapter")]["num_train"] == 3 * 2
    # by hand, DTD: fit on the base classes, save, reload with all the classes, the supports as the cache, score
    dtd, task = read_dataset("dtd", data_root), tasks["dtd"]
    base = list(task.base_label_ids)
    meta_train = SimpleNamespace(class_names=[dtd.class_names[i] for i in base],
                                 train=task.train.restrict_classes(base),
                                 val=few_shot_task(dtd, 2, 1).val.restrict_classes(base))  # fmt: skip
    for position, method in enumerate(meta["methods"][:2]):
        _fitted(counting, dtd, meta_train, method, seed=1).save_pretrained(tmp_path / method)
        online = XMAdapterForImageClassification.from_pretrained(
            tmp_path / method, clip_model=counting.clip, processor=counting.processor, class_names=dtd.class_names
        )
        online.set_cache(_embed(counting, dtd, task.support, 2).mean(dim=0), torch.tensor(task.support.labels))
        assert rows[("dtd", method)]["accuracy"] == pytest.approx(_test_accuracy(counting, dtd, online, task.test),
                                                                  abs=1e-3)  # fmt: skip
        with torch.no_grad():  # the logits too (5 columns: all the classes), not only their argmax
            expected = online(image_embeds=_embed(counting, dtd, task.test, 0)[0]).logits
        assert scored[position].shape == (6, 5) and torch.allclose(scored[position], expected, atol=1e-4)

    # the report: the protocol's rule, the official quirks, Meta-Adapter's published zero-shot numbers beside ours
    table = Path(result.files["markdown"]).read_text()
    assert f"meta-adapter (Meta-Adapter's own protocol): {META_ADAPTER_RULE}" in result.notes
    assert "eurosat: official: meta-trains on all classes" in table and "| dtd | novel (all classes) |" in table
    published = {(e["dataset"], e["method"]): e["published"] for e in result.summary}
    assert [(p["paper"], p["accuracy"], p["difference"]) for p in published[("dtd", "zero-shot")]] == [
        ("meta-adapter", 10.0, None)  # RN50, Meta-Adapter's README; the backbone here is not RN50
    ]
    assert published[("dtd", "tip-adapter")] == [] and "10.00 (RN50)" in table

    # resumed: every cell read back; a changed protocol setting is refused
    counting.images = 0
    again = _run(data_root, output, counting, **meta)
    assert (again.cells_skipped, again.cells_run, counting.images) == (6, 0, 0) and again.rows == result.rows
    with pytest.raises(ReproduceError, match=r"differs in: meta_adapter_official\)"):
        _run(data_root, output, counting, **meta, meta_adapter_official=False)
    # refused before the backbone or the output folder is touched
    for changes, message in [
        ({"meta_adapter_require_all_classes": True}, r"dtd: .*missing from the dataset.*allow-missing-classes"),
        # on the names, before reading: there is no food101 folder
        ({"datasets": ["dtd", "food101", "imagenet_a"]}, r"datasets only \(caltech101, .*; got food101, imagenet_a$"),
        ({"protocol": "few-shot"}, r"meta_adapter_require_all_classes=False \(--meta-adapter-allow-missing-classes\): "
                                   r"for the meta-adapter protocol only"),
        ({"meta_adapter_official": "no"}, "meta_adapter_official must be True or False; got 'no'"),
        ({"datasets": ["imagenet"]}, "imagenet holds no novel class of Meta-Adapter's lists"),  # its ids 0..3: base
    ]:  # fmt: skip
        with pytest.raises(ReproduceError, match=message):
            _run(data_root, tmp_path / "refused", counting, **{**meta, **changes})
        assert counting.images == 0 and not (tmp_path / "refused").exists()


def test_reproduce_command_and_bad_inputs(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # open_clip not importable, whether installed or not
    clip, processor = tiny_clip()
    model_dir = tmp_path / "tiny-clip"
    clip.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    output = tmp_path / "cli"
    argv = ["reproduce", "--data-root", str(data_root), "--datasets", "eurosat", "--methods", "zero-shot",
            "tip-adapter", "--shots", "1", "--seeds", "1", "2", "--model", str(model_dir), "--output", str(output),
            "--augment-views", "2", "--search-scale", "50", "50", "--search-step", "10", "5", "--threads", "1",
            "--no-plot"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cells: 4 run, 0 read back" in out and "| eurosat | test | zero-shot | 1 |" in out
    assert "37.52 (RN50)" in out and "54.38 (RN50)" in out  # EuroSAT, RN50: zero-shot CLIP; Tip-Adapter 1-shot
    assert main(argv) == 0 and "cells: 0 run, 4 read back; images embedded: 0" in capsys.readouterr().out
    for bad, message in [
        (["--methods", "no-such-method"], "unknown methods ['no-such-method']"),
        (["--datasets", "nowhere"], "dataset 'nowhere' is neither a benchmark dataset"),
        (["--data-root", str(tmp_path / "missing")], "is not a folder"),
        (["--augment-views", "3"], "holds results of another configuration (differs in: augment_views)"),
        (["--model", "open_clip:RN50/openai"], "needs the open_clip extra (pip install 'xmadapter-hf[open_clip]')"),
    ]:
        changed = list(argv)
        for option, value in zip(bad[::2], bad[1::2]):
            position = changed.index(option)
            changed[position + 1 : position + 2 + (option == "--methods")] = [value]
        assert main(changed) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("xmadapter reproduce: error:")
    # Meta-Adapter's protocol: its flags reach the harness, and its refusals are one line too
    meta = [*argv, "--protocol", "meta-adapter", "--datasets", "dtd", "--methods", "zero-shot", "--seeds", "1",
            "--output", str(tmp_path / "cli-meta"), "--meta-adapter-allow-missing-classes"]  # fmt: skip
    assert main(meta) == 0
    out = capsys.readouterr().out
    assert "| dtd | novel (all classes) | zero-shot | 1 | " in out and "10.00 (RN50)" in out
    for extra, message in [
        (["--datasets", "imagenet_a"], "covers Meta-Adapter's datasets only (caltech101, dtd, eurosat, fgvc, "
                                       "imagenet, oxford_pets, sun397, ucf101); got imagenet_a"),
        (["--protocol", "few-shot", "--meta-adapter-unofficial"], "meta_adapter_official=False "
         "(--meta-adapter-unofficial) and meta_adapter_require_all_classes=False "
         "(--meta-adapter-allow-missing-classes): for the meta-adapter protocol only; got protocol 'few-shot'"),
    ]:  # fmt: skip
        assert main([*meta, *extra]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and err.startswith("xmadapter reproduce: error:")
    for option, message in [
        ("--protocol", "--protocol: invalid choice: 'all'"),
        ("--validation", "--validation: invalid choice: 'all'"),
        ("--templates", "--templates: inv"),
    ]:
        assert main([*argv, option, "all"]) == 2  # checked before any work, as argparse's choices would be
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
