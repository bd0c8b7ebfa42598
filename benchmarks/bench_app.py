"""The served page's overhead over a direct model call: `python benchmarks/bench_app.py ADAPTER IMAGE [--requests 30]`.

Starts `xmadapter serve ADAPTER` on a free loopback port (a subprocess, gradio analytics off), sends IMAGE to its
`/classify` API through gradio_client `--requests` times one after another, times the same number of direct calls
(`ServedAdapter.classify` on the loaded model, in this process: decoding, preprocessing, forward, scores, parts), and
prints both medians and the median overhead (docs/benchmarks.md). Needs the `app` extra.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter")
    parser.add_argument("image")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for the server and the direct call")
    args = parser.parse_args()
    import torch
    from gradio_client import Client, handle_file

    from xmadapter_hf.app import load_served

    torch.set_num_threads(args.threads)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen(
        [sys.executable, "-m", "xmadapter_hf", "serve", args.adapter, "--port", str(port), "--threads",
         str(args.threads)], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        client = Client(url, verbose=False)
        client.predict(handle_file(args.image), api_name="/classify")  # warm-up
        served_times = []
        for _ in range(args.requests):
            start = time.perf_counter()
            client.predict(handle_file(args.image), api_name="/classify")
            served_times.append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=30)
    served = load_served(args.adapter)
    served.classify(args.image)  # warm-up
    direct_times = []
    for _ in range(args.requests):
        start = time.perf_counter()
        served.classify(args.image)
        direct_times.append(time.perf_counter() - start)
    app, direct = statistics.median(served_times), statistics.median(direct_times)
    print(
        f"{args.requests} sequential requests: app median {1000 * app:.1f} ms, direct call median "
        f"{1000 * direct:.1f} ms, median overhead {1000 * (app - direct):.1f} ms ({args.threads} torch thread(s))"
    )


if __name__ == "__main__":
    main()
