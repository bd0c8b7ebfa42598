"""`xmadapter push`: upload an adapter (config, adapter weights, image settings, our model card) to the Hub.

Never the backbone: the pushed config names it, and it must be a Hub id. An adapter built on a local backbone (the
demo CLIP, a folder) records a local path, which a pushed adapter cannot load: give the Hub id of the same weights
with `--base-model-id`. Needs the Hub (`hf auth login` or `--token`).
`--space SPACE_ID` then uploads a ready Space for the adapter (what `xmadapter space --model-id REPO_ID` writes: its
`app.py` loads the pushed adapter from REPO_ID) to SPACE_ID, and the model card links it (docs/app.md; needs the
`app` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import (
    CLIError,
    Command,
    add_loading_arguments,
    check_adapter,
    load_adapter,
    loading_options,
    require_gradio,
)


def add_arguments(parser) -> None:
    parser.add_argument("adapter", help="the adapter directory")
    parser.add_argument("repo_id", help="the Hub repository, user/name")
    parser.add_argument("--base-model-id", help="the backbone's Hub id to record (required for a local backbone)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", help="a Hub token (default: the logged-in one)")
    parser.add_argument("--revision", help="the branch to push to")
    parser.add_argument("--commit-message", help="the commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--space", metavar="SPACE_ID", help="also upload a ready Space (gradio) for it to this repo")
    add_loading_arguments(parser)


def run(args) -> int:
    from ..hub import _looks_local

    check_adapter(args.adapter)
    recorded = json.loads((Path(args.adapter) / "config.json").read_text()).get("base_model_name_or_path")
    if args.base_model_id is None and (not recorded or _looks_local(recorded)):
        raise CLIError(
            f"the adapter's backbone is the local path {recorded!r}, which a pushed adapter cannot load: pass "
            "--base-model-id with its Hub id (e.g. openai/clip-vit-base-patch16)",
            status=2,
        )
    if args.space is not None:
        if len(args.space.strip().split("/")) != 2 or not all(args.space.split("/")):
            raise CLIError(f"--space must be a Space id, user/name; got {args.space!r}", status=2)
        if args.create_pr:
            raise CLIError("--space loads the adapter from a branch: it cannot go with --create-pr", status=2)
        require_gradio("--space needs gradio (the Space's version)")
    model = load_adapter(args.adapter, **loading_options(args))
    url = model.push_to_hub(
        args.repo_id, base_model_id=args.base_model_id, private=args.private or None, token=args.token,
        revision=args.revision, commit_message=args.commit_message, create_pr=args.create_pr, space_id=args.space,
    )  # fmt: skip
    print(f"pushed {args.adapter} to {args.repo_id}: {url}")
    if args.space is not None:
        from ..app.space import push_space

        url = push_space(args.repo_id, args.space, revision=args.revision, token=args.token,
                         private=args.private or None)  # fmt: skip
        print(f"pushed its Space to {args.space}: {url}")
    return 0


COMMAND = Command(
    name="push",
    help="push an adapter (never the backbone) to the Hub with its model card",
    description=__doc__,
    add_arguments=add_arguments,
    run=run,
)
