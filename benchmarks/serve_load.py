"""`rcnn serve` under load: concurrent requests answered, latency, and the server's memory.

    .venv/bin/python -m benchmarks.serve_load --onnx model.onnx
    .venv/bin/python -m benchmarks.serve_load --checkpoint runs/x/best.pth --requests 500

Starts ``rcnn serve`` as its own process on a free port of 127.0.0.1, then: ``--concurrency``
requests at once (every one must be answered 200), a warm-up of 20, and ``--requests`` requests one
after the other, reading the server's resident memory (``VmRSS`` of ``/proc/PID/status``) before
and after. The body is a real photo (``--image``, default a balloon photo resized to 480x640).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

DEFAULT_IMAGE = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "balloon"
    / "val2017"
    / "14898532020_ba6199dd22_k.jpg"
)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def post(url: str, body: bytes) -> tuple[int, float]:
    """(HTTP status, seconds) of one ``POST /predict``."""
    start = time.perf_counter()
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            json.loads(reply.read())
            status = reply.status
    except urllib.error.HTTPError as failure:
        status = failure.code
    return status, time.perf_counter() - start


def start_server(model_args: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "rcnn.cli", "serve", *model_args, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                print("health:", reply.read().decode()[:200])
                return process, url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"rcnn serve exited with {process.returncode}") from None
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("rcnn serve did not answer /health in 600 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx")
    source.add_argument("--checkpoint")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--size", default="480x640", help="HxW the photo is resized to")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    buffer = io.BytesIO()
    Image.open(args.image).convert("RGB").resize((width, height)).save(buffer, "JPEG", quality=90)
    body = buffer.getvalue()
    model_args = ["--onnx", args.onnx] if args.onnx else ["--checkpoint", args.checkpoint]
    process, url = start_server(model_args)
    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = list(pool.map(lambda _: post(url, body), range(args.concurrency)))
        wall = time.perf_counter() - start
        codes = [code for code, _ in answers]
        print(f"{args.concurrency} concurrent: {codes.count(200)} answered 200, "
              f"{sum(c >= 500 for c in codes)} 5xx, all in {wall:.1f} s")  # fmt: skip
        for _ in range(20):
            post(url, body)
        before = rss_mb(process.pid)
        times = []
        for _ in range(args.requests):
            code, seconds = post(url, body)
            assert code == 200, code
            times.append(seconds)
        after = rss_mb(process.pid)
        print(f"{args.requests} sequential: median {statistics.median(times) * 1000:.0f} ms "
              f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}); server RSS "
              f"{before:.0f} MB before, {after:.0f} MB after ({after - before:+.0f} MB); "
              f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
        return 0 if codes == [200] * args.concurrency else 1
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    raise SystemExit(main())
