#!/usr/bin/env bash
# The Space `xmadapter space` writes, started as a Space starts it (issue 26; docs/app.md, "Does the Space start?"):
#   1. this library's wheel (`python -m build --wheel --no-isolation`), standing in for the released version;
#   2. an adapter on the demo CLIP (Tip-Adapter, training-free, 2 shots) and `xmadapter space ADAPTER --output DIR`;
#   3. a fresh virtualenv built from DIR/requirements.txt, the `xmadapter-hf[app]==...` line replaced by the wheel
#      (and PyTorch's CPU index line by $TORCH_INDEX_URL where set, else dropped: torch==<pin> then comes from the
#      indexes pip is configured with, as in scripts/setup.sh);
#   4. `python app.py` in DIR on a loopback port, then an HTTP GET of the page and its config, and one `/classify` call
#      through gradio_client whose top-5 classes, scores, logits and logit parts must equal `xmadapter predict`'s.
# Offline: HF_HUB_OFFLINE=1, gradio's analytics off; nothing but loopback is reached (pip aside). Prints its time.
# Run it from the repository after scripts/setup.sh: `bash scripts/check_space.sh` (.ci/run runs it after the suite).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
START=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/xmadapter-space-check.XXXXXX")
APP_PID=""
cleanup() {
  if [ -n "$APP_PID" ] && kill -0 "$APP_PID" 2>/dev/null; then
    kill "$APP_PID" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$APP_PID" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$APP_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  echo "check_space: cleaned up after $(($(date +%s) - START)) s"
}
trap cleanup EXIT
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
step() { echo "check_space: $1 ($(($(date +%s) - START)) s)"; }

step "building the wheel"
"$PY" -m build --wheel --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/xmadapter_hf-*.whl)

step "an adapter and its Space"
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path

from xmadapter_hf.demo import export_images

export_images(Path(sys.argv[1]) / "images", shots=2, seed=0, splits=("train", "test"))
EOF
"$PY" -m xmadapter_hf fit --data "$WORK/images" --method tip-adapter --shots 2 --augment-views 1 --no-search \
  --output "$WORK/adapter" --no-progress >"$WORK/fit.log" 2>&1 || { tail -20 "$WORK/fit.log"; exit 1; }
"$PY" -m xmadapter_hf space "$WORK/adapter" --output "$WORK/space" --title "Space check"

step "a fresh virtualenv from the Space's requirements.txt"
python_for_venv=$("$PY" -c "import sys; print(sys.base_prefix)")/bin/python3
"$python_for_venv" -m venv "$WORK/venv"
grep -q '^xmadapter-hf\[app\]==' "$WORK/space/requirements.txt"
while IFS= read -r line; do
  case "$line" in
    xmadapter-hf\[app\]==*) echo "${WHEEL}[app]" ;;
    --extra-index-url*) if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "--extra-index-url $TORCH_INDEX_URL"; fi ;;
    *) echo "$line" ;;
  esac
done <"$WORK/space/requirements.txt" >"$WORK/requirements.txt"
"$WORK/venv/bin/python" -m pip install --disable-pip-version-check -q -r "$WORK/requirements.txt" \
  2> >(grep -v "^WARNING: Location" >&2)
"$WORK/venv/bin/python" -c "import xmadapter_hf, gradio, torch; assert xmadapter_hf.__file__.startswith('$WORK/venv'); \
print(f'check_space: the venv has xmadapter-hf {xmadapter_hf.__version__}, gradio {gradio.__version__}, torch {torch.__version__}')"

step "python app.py"
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
(cd "$WORK/space" && exec env GRADIO_SERVER_PORT="$PORT" GRADIO_TEMP_DIR="$WORK/gradio" "$WORK/venv/bin/python" app.py) \
  >"$WORK/app.log" 2>&1 &
APP_PID=$!
URL="http://127.0.0.1:$PORT/"
for _ in $(seq 1 360); do
  if "$PY" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2).read()" "$URL" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$APP_PID" 2>/dev/null; then
    echo "check_space: app.py exited:" >&2
    tail -30 "$WORK/app.log" >&2
    exit 1
  fi
  sleep 0.5
done
step "the page answers on $URL"

IMAGE=$(ls "$WORK/images/test/red zigzag/"*.png | head -1)
"$PY" -m xmadapter_hf predict "$WORK/adapter" "$IMAGE" --json --top-k 5 >"$WORK/predict.json"
"$WORK/venv/bin/python" - "$URL" "$IMAGE" "$WORK/predict.json" <<'EOF'
import json
import math
import sys
import urllib.request

from gradio_client import Client, handle_file

url, image, predicted = sys.argv[1:]
page = urllib.request.urlopen(url, timeout=30).read().decode()
assert "<html" in page.lower() and "gradio" in page.lower(), page[:500]
config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
assert config["title"] == "Space check", config.get("title")
details = json.loads(Client(url, verbose=False).predict(handle_file(image), api_name="/classify")[3])
expected = json.loads(open(predicted).read())[0]["predictions"]
assert len(details["predictions"]) == len(expected) == 5
for got, want in zip(details["predictions"], expected):
    assert got["label"] == want["label"], (got, want)
    for key in ("score", "logit"):
        assert math.isclose(got[key], want[key], rel_tol=1e-6, abs_tol=1e-7), (key, got, want)
    for part, value in want["parts"].items():
        assert math.isclose(got["parts"][part], value, rel_tol=1e-6, abs_tol=1e-6), (part, got, want)
top = details["predictions"][0]
print(f"check_space: /classify = xmadapter predict: {top['label']} {top['score']:.4f} (top-5 labels, scores, logits)")
EOF
if grep -q "Traceback" "$WORK/app.log"; then
  echo "check_space: app.py logged a traceback:" >&2
  cat "$WORK/app.log" >&2
  exit 1
fi
echo "check_space: passed in $(($(date +%s) - START)) s"
