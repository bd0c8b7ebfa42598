"""Every Python block of README.md and docs/*.md runs in a test: here, or in the test named in `RUN_ELSEWHERE`.

Blocks that need the Hub carry the comment `# needs the Hub`. They run here anyway, against the loopback fake Hub
of `hub_server.py`, which serves the demo CLIP under the id `openai/clip-vit-base-patch16` (what is pushed stays in
it): the machines that run the tests have no network, and OpenAI's weights (600 MB) would make the test slow; what
that stand-in does not test (LFS, auth, ...) is listed in hub_server.py. A block that needs a GPU would carry
`# needs a GPU` and be skipped without one; no block does (the Accelerate blocks fall back to the CPU).
docs/getting-started.md also has its `xmadapter` command lines run, in order, through the CLI's `main`. The blocks
share one backbone, the demo CLIP (16 texture classes, the test in about 40 s on a busy 2-core machine).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from hub_server import LocalHub, patched_endpoint

ROOT = Path(__file__).resolve().parents[1]
HUB_MARK = "# needs the Hub"
GPU_MARK = "# needs a GPU"
HUB_BACKBONE = "openai/clip-vit-base-patch16"

#: Docs whose blocks another test runs.
RUN_ELSEWHERE = {
    "docs/training.md": "tests/test_docs.py::test_training_guide_runs (up to its push, which needs the Hub)",
    "docs/demo.md": "tests/test_demo.py::test_docs_demo_code_runs",
    "docs/export.md": "tests/test_export.py::test_docs_example_runs",
    "docs/design.md": "tests/test_docs.py::test_design_s_new_method_example_runs",
    "docs/app.md": "tests/test_app.py::test_api_matches_predict_and_grown_zip_loads_with_the_same_logits (the same "
    "/classify call on a served page)",
}
#: Docs whose blocks this module runs (README's first block: also tests/test_examples.py, as examples/quickstart.py).
RUN_HERE = ("README.md", "docs/getting-started.md", "docs/distributed.md", "docs/hub.md", "docs/large_caches.md")
RUN_HERE += ("docs/reproduce.md", "docs/add-classes.md")


def _blocks(relative: str, language: str = "python") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / relative).read_text(), re.S)


def _exec(block: str, name: str, namespace: dict) -> dict:
    exec(compile(block, name, "exec"), namespace)
    return namespace


def _commands(relative: str) -> list[list[str]]:
    """The `xmadapter` command lines of a doc's bash blocks, as argument lists (without `xmadapter`)."""
    lines = [line for block in _blocks(relative, "bash") for line in block.splitlines()]
    found = [shlex.split(line, comments=True) for line in lines]
    return [words[1:] for words in found if words and words[0].endswith("xmadapter")]


def test_every_doc_with_python_blocks_has_a_runner_and_hub_blocks_are_marked():
    docs = ["README.md"] + [f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md"))]
    with_blocks = {doc for doc in docs if _blocks(doc)}
    assert with_blocks == set(RUN_ELSEWHERE) | set(RUN_HERE)
    for doc in with_blocks:
        for block in _blocks(doc):
            hub = any(word in block for word in ("push_to_hub", "PushAdapterCallback", '"user/', '"your-name/'))
            hub = hub or f'from_clip("{HUB_BACKBONE}"' in block
            assert not hub or HUB_MARK in block, (doc, block[:200])
            assert "cuda" not in block or GPU_MARK in block, (doc, block[:200])
            assert GPU_MARK not in block, f"{doc}: a GPU block; run it under a skip when no GPU is present"


def test_the_tests_named_for_other_docs_exist():
    for doc, where in RUN_ELSEWHERE.items():
        path, name = where.split(" ")[0].split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), (doc, where)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread while these blocks run, as the subprocess tests get with OMP_NUM_THREADS=1: on a busy 2-core
    machine torch's default of 2 threads made the getting-started `fit` 9x slower (155 s against 17 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake Hub, serving the demo CLIP as `openai/clip-vit-base-patch16`, with this process pointed at it."""
    from xmadapter_hf.demo import demo_clip_path

    with LocalHub() as server:
        server.create_repo(HUB_BACKBONE)
        server.commit(HUB_BACKBONE, {p.name: p.read_bytes() for p in Path(demo_clip_path()).iterdir()})
        with patched_endpoint(server, tmp_path_factory.mktemp("hf-home")):
            yield server


@pytest.fixture
def in_tmp(tmp_path):
    before = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


def test_readme_commands_are_those_of_getting_started():
    readme = [c for c in _commands("README.md")]
    guide = _commands("docs/getting-started.md")
    assert readme and all(command in guide for command in readme), (readme, guide)


def _plain_blocks(relative: str) -> list[str]:
    """The doc's fenced blocks with no language (sample outputs)."""
    blocks, current, language = [], None, None
    for line in (ROOT / relative).read_text().splitlines():
        if line.startswith("```") and current is None:
            current, language = [], line[3:].strip()
        elif line.startswith("```"):
            if not language:
                blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _shown(text: str) -> list[str]:
    """Output lines as the docs show them: wall times (`in 16.9 s`) vary from run to run and are not compared."""
    return [re.sub(r" in \d+(\.\d+)? s$", " in N s", line.rstrip()) for line in text.strip().splitlines()]


def test_getting_started_and_the_readme_hub_block(hub, in_tmp, capsys):
    from xmadapter_hf.cli import main

    commands = _commands("docs/getting-started.md")
    python = _blocks("docs/getting-started.md")
    assert len(python) == 2 and HUB_MARK in python[1] and commands[-1][0] == "push"
    printed = {}
    for command in commands[:-1]:  # demo --export-images, fit, eval, predict
        assert main(command) == 0, command
        printed[command[0]] = capsys.readouterr().out
    # the sample outputs the page shows are what `fit` and `predict` print today (the first lines of predict's)
    samples = {block.split()[0]: block for block in _plain_blocks("docs/getting-started.md")}
    fit_sample, predict_sample = _shown(samples["data:"]), _shown(samples["scores:"])
    assert fit_sample == _shown(printed["fit"]), printed["fit"]
    assert predict_sample == _shown(printed["predict"])[: len(predict_sample)], printed["predict"]
    assert (in_tmp / "my-adapter" / "report.json").is_file() and (in_tmp / "confusion.png").is_file()
    namespace = _exec(python[0], "docs/getting-started.md", {})
    assert namespace["out"].affinity_ratio.shape == (1,)

    # the README's second block (the same with a Hub backbone), after its first block's data part
    first, second = _blocks("README.md")[:2]
    assert HUB_MARK in second
    namespace = _exec(first.split("\nmodel = ")[0], "README.md", {})
    _exec(second, "README.md", namespace)
    assert namespace["model"].config.base_model_name_or_path == HUB_BACKBONE

    assert main(commands[-1]) == 0  # xmadapter push my-adapter-b16 your-name/my-adapter-b16
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files("your-name/my-adapter-b16"))
    _exec(python[1], "docs/getting-started.md", {})  # the pushed adapter, loaded by repo id


def test_hub_guide(hub, in_tmp):
    from transformers import TrainingArguments

    from xmadapter_hf import XMAdapterForImageClassification
    from xmadapter_hf.demo import DEMO_CLASSES, demo_task

    model = XMAdapterForImageClassification.from_clip(HUB_BACKBONE, DEMO_CLASSES, method="tip-adapter")
    train_dataset = demo_task("train", shots=1)
    model.build_cache(train_dataset, augment_views=1, show_progress=False)
    namespace = {"model": model, "train_dataset": train_dataset}
    namespace["args"] = TrainingArguments(str(in_tmp / "out"), report_to=[], use_cpu=True)
    for block in _blocks("docs/hub.md"):
        assert HUB_MARK in block
        _exec(block, "docs/hub.md", namespace)
    assert hub.uploads("user/xmadapter-eurosat") == [{"config.json", "model.safetensors", "preprocessor_config.json",
                                                      "README.md"}]  # fmt: skip
    assert namespace["classifier"].model.config.method == "tip-adapter"


def test_distributed_guide(in_tmp):
    from xmadapter_hf import XMAdapterForImageClassification
    from xmadapter_hf.testing import tiny_clip, tiny_image_dataset

    clip, processor = tiny_clip()
    model = XMAdapterForImageClassification.from_clip(clip, ["a", "b"], processor=processor, method="tip-adapter")
    namespace = {"model": model, "train": tiny_image_dataset(num_classes=2, shots=2), "output": str(in_tmp / "out")}
    for block in _blocks("docs/distributed.md"):
        _exec(block, "docs/distributed.md", namespace)
    assert (in_tmp / "out" / "model.safetensors").is_file()


def test_large_caches_guide(in_tmp):
    (block,) = _blocks("docs/large_caches.md")
    namespace = _exec(block, "docs/large_caches.md", {})
    assert namespace["model"].config.cache_size == 16_000


def test_reproduce_guide(in_tmp):
    from test_reproduce_data import _make_coop

    _make_coop(in_tmp / "data", "dtd")  # a miniature DTD in CoOp's layout, 5 classes
    (block,) = _blocks("docs/reproduce.md")
    namespace = _exec(block, "docs/reproduce.md", {})
    assert namespace["dtd"].num_classes == 5 and len(namespace["train"]) == 5 * 16


def test_add_classes_guide(in_tmp):
    from datasets import ClassLabel

    from xmadapter_hf import XMAdapterForImageClassification
    from xmadapter_hf.testing import tiny_clip, tiny_image_dataset

    clip, processor = tiny_clip()
    clip.save_pretrained(in_tmp / "clip")  # a backbone the saved adapter can name, as a Hub id would be
    processor.save_pretrained(in_tmp / "clip")
    model = XMAdapterForImageClassification.from_clip(str(in_tmp / "clip"), ["a", "b"], method="tip-adapter")
    model.build_cache(tiny_image_dataset(num_classes=2, shots=2), augment_views=1, show_progress=False)
    model.save_pretrained(in_tmp / "path" / "or" / "repo")  # the block's placeholder path, relative to in_tmp
    support = tiny_image_dataset(num_classes=3, shots=2, seed=1)
    support = support.cast_column("label", ClassLabel(names=["kiwi", "plum", "fig"]))
    import torch

    embeds, labels = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1), torch.tensor([0, 1, 0, 1])
    (block,) = _blocks("docs/add-classes.md")
    namespace = {"model": model, "support_dataset": support, "embeds": embeds, "labels": labels}
    namespace["XMAdapterForImageClassification"] = XMAdapterForImageClassification
    grow, other = block.split("\n# other classes")
    other = "# other classes" + other
    _exec(grow, "docs/add-classes.md", namespace)
    assert model.config.class_names == ["a", "b", "kiwi", "plum", "fig", "pear", "lime"]
    assert model.config.cache_size == 2 * 2 + 3 * 2 + 4  # two shots of a, b; two of each grown class; four raw rows
    _exec(other, "docs/add-classes.md", namespace)
    assert namespace["model"].config.class_names == ["kiwi", "plum", "fig"]
    assert namespace["model"].config.cache_size == 6


def test_add_classes_guide_commands_parse():
    """docs/add-classes.md's `xmadapter` lines are valid command lines (the CLI tests run the commands)."""
    from xmadapter_hf.cli import build_parser

    commands = _commands("docs/add-classes.md")
    assert [command[0] for command in commands] == ["add-classes", "predict", "eval"]
    for command in commands:
        assert build_parser().parse_args(command).command == command[0]
