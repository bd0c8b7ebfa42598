"""The gradio page over a [`~xmadapter_hf.app.core.ServedAdapter`] (imported only when a page is built).

Two tabs: *Classify* (an image -> top-k scores, the top class's logit split by term as a bar chart, the closest
support images with `--support`, the details as JSON) and *Add a class* (a name and a few images -> `add_classes`
on this browser session's copy, then a zip of it to download). Every handler turns an
[`~xmadapter_hf.app.core.AppInputError`] into the sentence shown under the form (`#status`, `#add-status`); any
other failure is shown as one generic sentence and logged on the server, never as a traceback.
"""

import logging
import os
import tempfile

from ..jsonsafe import dumps
from .core import AppInputError, ServedAdapter

__all__ = ["build_page", "launch_page"]

logger = logging.getLogger(__name__)

UNEXPECTED = "Something went wrong on the server while handling this request; the server's log has the details."


def _sentence(error: Exception) -> str:
    if isinstance(error, AppInputError):
        return str(error)
    logger.exception("xmadapter app: unexpected error")
    return UNEXPECTED


def _visitor(request) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def build_page(served: ServedAdapter, title: str = "Few-shot adapter"):
    """The `gr.Blocks` page (not launched)."""
    import gradio as gr
    import pandas as pd

    from ..data.images import load_image

    def checked_image(**kwargs):
        """`gr.Image` whose upload the handler reads itself: a file that is no image reaches `read_image` (one
        sentence) instead of failing in gradio's decoding (a bare "Error"). The path given on is the one gradio has
        checked to be an upload of this server (it refuses any other before `preprocess`). An instance attribute, not
        a subclass: gradio writes a .pyi file beside the module of every component class."""
        component = gr.Image(**kwargs)
        decode = component.preprocess

        def preprocess(payload):
            try:
                return decode(payload)
            except Exception:
                return None if payload is None or payload.path is None else str(payload.path)

        component.preprocess = preprocess
        return component

    def parts_frame(result: dict | None):
        if not result or not result["predictions"]:
            return pd.DataFrame({"term": [], "logit": []})
        top = result["predictions"][0]
        return pd.DataFrame(
            {"term": [name.replace("_", " ") for name in top["parts"]], "logit": list(top["parts"].values())}
        )

    def top_line(result: dict) -> str:
        top = result["predictions"][0]
        kind = "calibrated" if result["temperature"] is not None else "uncalibrated softmax"
        return f"Top class: **{top['label']}**, score {top['score']:.4f} ({kind}), logit {top['logit']:.4f}."

    def classify(image, request: gr.Request):
        try:
            result = served.classify(image, _visitor(request))
        except Exception as error:  # shown as one sentence
            return None, parts_frame(None), [], "", "", _sentence(error)
        scores = {p["label"]: p["score"] for p in result["predictions"]}
        # the images themselves, not their paths: no file of the support folder is served by path
        gallery = [
            (load_image(item["file"]), f"{item['label']} (cosine {item['similarity']:.3f})")
            for item in result["closest"]
        ]
        return scores, parts_frame(result), gallery, dumps(result, indent=1), top_line(result), ""

    def add_class(name, files, request: gr.Request):
        try:
            message = served.add_class(_visitor(request), name, [getattr(f, "name", f) for f in files or []])
        except Exception as error:
            return _sentence(error), gr.update()
        return message, gr.update(value=", ".join(served.class_names(_visitor(request))))

    def download(request: gr.Request):
        try:
            path = served.zip_adapter(_visitor(request), tempfile.mkdtemp(prefix="xmadapter-app-"))
        except Exception as error:
            return None, _sentence(error)
        return str(path), "Saved: unzip it and load the folder with `XMAdapterForImageClassification.from_pretrained`."

    def forget(request: gr.Request):
        visitor = _visitor(request)
        if visitor:
            served.copies.drop(visitor)

    config = served.model.config
    calibrated = (
        f"scores are softmax(logits / {config.temperature:.4g}), the temperature fitted on the validation split"
        if config.temperature is not None
        else "this adapter has no fitted temperature: scores are the raw softmax of the logits"
    )
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(
            f"# {title}\n{config.method} adapter over `{config.base_model_name_or_path}`, "
            f"{config.num_classes} classes; {calibrated}. Classes you add are kept in your browser session only."
        )
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = checked_image(
                        type="filepath", sources=["upload", "clipboard"], label="Image", elem_id="image"
                    )
                    run = gr.Button("Classify", variant="primary", elem_id="classify")
                    status = gr.Markdown(elem_id="status")
                with gr.Column():
                    top = gr.Markdown(elem_id="top")
                    label = gr.Label(num_top_classes=served.top_k, label="Top classes", elem_id="label")
                    plot = gr.BarPlot(
                        x="term", y="logit", title="The top class's logit, term by term", elem_id="parts"
                    )
            gallery = gr.Gallery(
                label="Closest support images (--support)", columns=4, height="auto", elem_id="closest",
                visible=served.support is not None,
            )  # fmt: skip
            with gr.Accordion("Details (JSON): every logit, the temperature, the closest support images", open=True):
                details = gr.Textbox(show_label=False, lines=8, max_lines=30, elem_id="details")
        with gr.Tab("Add a class"):
            names = gr.Textbox(
                value=", ".join(config.class_names), label="Classes of your copy", interactive=False,
                elem_id="classes",
            )  # fmt: skip
            name = gr.Textbox(label="New class name", elem_id="new-name")
            files = gr.File(
                file_count="multiple", file_types=["image"], label="A few images of it", elem_id="new-images"
            )
            add = gr.Button("Add the class", variant="primary", elem_id="add")
            add_status = gr.Markdown(elem_id="add-status")
            save = gr.Button("Download my adapter (zip)", elem_id="save")
            zipped = gr.File(label="Adapter zip", interactive=False, elem_id="zip")
        outputs = [label, plot, gallery, details, top, status]
        run.click(classify, inputs=[image], outputs=outputs, api_name="classify")
        image.upload(classify, inputs=[image], outputs=outputs, api_name=False)
        add.click(add_class, inputs=[name, files], outputs=[add_status, names], api_name="add_class")
        save.click(download, inputs=None, outputs=[zipped, add_status], api_name="download")
        page.unload(forget)
    return page


def launch_page(
    page, port: int | None = None, *, max_file_size: str = "10mb", block: bool = True, concurrency: int = 2,
    host: str = "127.0.0.1",
):  # fmt: skip
    """Serves ``page`` on ``host`` (127.0.0.1; a Space's `app.py` gives 0.0.0.0) at ``port`` (or a free one), no
    share link, analytics off, uploads capped."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    page.queue(default_concurrency_limit=concurrency)
    return page.launch(
        server_name=host, server_port=port, share=False, max_file_size=max_file_size, show_error=False,
        prevent_thread_lock=not block, ssr_mode=False, quiet=False,
    )  # fmt: skip
