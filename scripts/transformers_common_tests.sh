#!/usr/bin/env bash
# transformers' common model tests (ModelTesterMixin, ConfigTester) on XMAdapterForImageClassification: fetches the
# test files from the installed transformers version's sdist (once, into .cache/, via pip), then runs them on our
# model class (tests/transformers_common/common_xmadapter.py). Needs .venv (scripts/setup.sh). See docs/conventions.md.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/fetch_transformers_tests.py >/dev/null
.venv/bin/python -m pytest -q -p no:cacheprovider tests/transformers_common/common_xmadapter.py \
  -W ignore::pytest.PytestUnknownMarkWarning -rs "$@"
