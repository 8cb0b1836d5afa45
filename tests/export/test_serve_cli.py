"""`rcnn serve --checkpoint` as a real command: started in a subprocess on a free port, it answers
``/health`` and ``/predict`` with the checkpoint's detections, and stops on SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from onnx_models import FRUITS, photo
from PIL import Image
from serve_helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str, data: bytes | None = None) -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=60) as answer:
        return json.loads(answer.read())


def _wait_for_health(url: str, process: subprocess.Popen, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"rcnn serve exited: {process.communicate()[0]}")
        try:
            return _get(f"{url}/health")
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("rcnn serve did not answer /health")


def test_serve_command_answers_and_stops(exported):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's rcnn, not an installed one
    command = [sys.executable, "-m", "rcnn.cli", "serve", "--checkpoint", str(exported.checkpoint)]
    process = subprocess.Popen(
        [*command, "--device", "cpu", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        health = _wait_for_health(url, process)
        assert health["status"] == "ok" and health["classes"] == ["date", "fig", "hazelnut"]
        image = photo(FRUITS, (150, 200))
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        answer = _get(f"{url}/predict", buffer.getvalue())
        assert (answer["width"], answer["height"]) == (200, 150)
        with torch.no_grad():
            (expected,) = exported.model([image])
        assert len(answer["detections"]) == len(expected.scores) > 0
        boxes = np.array([item["box"] for item in answer["detections"]])
        assert np.abs(boxes - expected.boxes.numpy()).max() < 0.01
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    # uvicorn shuts down cleanly, then re-raises the SIGTERM it caught (exit status -15)
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert f"serving {exported.checkpoint} on http://127.0.0.1:{port}/" in output
