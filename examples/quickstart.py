"""Quickstart: the README's Python block, as it is, in a temporary folder that is removed afterwards.

Writes the demo task as an image folder, fits XMAdapter on it with the demo CLIP shipped with the package (offline),
prints the fit report (validation accuracy), saves the adapter, reloads it through `pipeline` and classifies a test
image. Everything it writes, the image folder's `datasets` cache included, goes into the temporary folder.
tests/test_examples.py checks that the block below is the README's, line for line.

Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

import os
import tempfile


def main() -> None:
    # --- the README's block
    from datasets import load_dataset
    from transformers import pipeline

    from xmadapter_hf import XMAdapterForImageClassification, fit
    from xmadapter_hf.demo import demo_clip_path, export_images

    export_images("my-images", shots=16, seed=0)  # the demo task as my-images/{train,validation,test}/<class name>/
    data = load_dataset("imagefolder", data_dir="my-images")
    class_names = data["train"].features["label"].names  # the class folders' names, in label order

    model = XMAdapterForImageClassification.from_clip(demo_clip_path(), class_names, method="xmadapter")
    model, report = fit(model, data["train"], data["validation"])  # cache, validation search, training, search again
    print(report)  # its accuracies are on the validation split

    model.save_pretrained("my-adapter")  # config.json, model.safetensors (the adapter only), preprocessor_config.json
    classify = pipeline("xmadapter-image-classification", model="my-adapter")  # the adapter + the backbone it names
    print(classify(data["test"][0]["image"], top_k=3))
    # --- end of the README's block
    print(f"true class of that test image: {class_names[data['test'][0]['label']]}")


if __name__ == "__main__":
    start = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="xmadapter-quickstart-") as work:
        # the image folder's Arrow cache, which `load_dataset` writes under ~/.cache, goes into the temporary folder
        os.environ["HF_DATASETS_CACHE"] = os.path.join(work, "datasets-cache")
        os.chdir(work)
        try:
            main()
        finally:
            os.chdir(start)
