"""`rcnn serve`'s web app (FastAPI): a page to try the model, ``POST /predict``, ``GET /health``.

One detector serves every request: a lock makes requests queue on it (no model per request, no
two forward passes at once competing for the same cores). Decoding the image and encoding the
answer run outside the lock, in the server's thread pool.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pycocotools.mask as mask_util
import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool

from rcnn.structures import Detections

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
DEFAULT_MAX_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000  # a larger image is refused (413) before it is decoded


class Detector(Protocol):
    """What the server runs: an ``RCNN`` in eval mode or an ``rcnn.export.OnnxDetector``."""

    class_names: list[str]

    def __call__(self, images: list[torch.Tensor]) -> list[Detections]: ...


class BadRequestError(Exception):
    """A request body that is no usable image; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_image(body: bytes) -> torch.Tensor:
    """uint8 [3, H, W] RGB from an image file's bytes (EXIF orientation applied).

    Raises:
        BadRequestError: 400 for bytes Pillow cannot decode, 413 over ``MAX_PIXELS`` pixels.
    """
    try:
        image = Image.open(io.BytesIO(body))
        if image.width * image.height > MAX_PIXELS:
            raise BadRequestError(413, f"image of {image.width}x{image.height} pixels is too large")
        image.load()
        image = ImageOps.exif_transpose(image) or image
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except BadRequestError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadRequestError(400, f"the body is not an image Pillow can read ({error})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def to_json(detections: Detections, class_names: list[str], threshold: float) -> list[dict]:
    """The detections scoring at least ``threshold`` as JSON-ready dicts (masks as COCO RLE)."""
    keep = (detections.scores >= threshold).nonzero().flatten().tolist()
    rles: list[Any] = [None] * len(keep)
    if detections.masks is not None and keep:
        masks = detections.masks[keep].numpy().astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
    out = []
    for rle, i in zip(rles, keep, strict=True):
        label = int(detections.labels[i])
        item = {
            "box": [round(float(v), 2) for v in detections.boxes[i]],
            "score": round(float(detections.scores[i]), 4),
            "label": label,
            "class": class_names[label] if label < len(class_names) else str(label),
        }
        if rle is not None:
            item["mask"] = rle
        out.append(item)
    return out


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Service:
    """The detector behind a lock, and the request handling around it."""

    def __init__(self, detector: Detector, *, name: str = "", max_bytes: int) -> None:
        self.detector, self.name, self.max_bytes = detector, name, max_bytes
        self.lock = threading.Lock()
        self.served = 0

    def run(self, body: bytes, threshold: float) -> dict:
        """Decode, detect (one request at a time), encode: the JSON answer of ``POST /predict``."""
        image = decode_image(body)
        with self.lock:
            start = time.perf_counter()
            with torch.inference_mode():
                (detections,) = self.detector([image])
            elapsed = time.perf_counter() - start
            self.served += 1
        detections = detections.to("cpu")
        return {
            "detections": to_json(detections, list(self.detector.class_names), threshold),
            "width": int(image.shape[-1]),
            "height": int(image.shape[-2]),
            "time_ms": round(elapsed * 1000, 1),
        }

    def health(self) -> dict:
        return {
            "status": "ok",
            "model": self.name,
            "classes": list(self.detector.class_names),
            "masks": bool(getattr(self.detector, "has_mask", False)),
            "served": self.served,
        }


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, read in chunks and refused (413) as soon as it passes ``max_bytes``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadRequestError(
            413, f"body of {int(declared)} bytes is over the limit of {max_bytes}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadRequestError(413, f"body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    if size == 0:
        raise BadRequestError(400, "empty body: send the image file's bytes as the request body")
    return b"".join(chunks)


def create_app(detector: Detector, *, name: str = "", max_bytes: int = DEFAULT_MAX_BYTES):
    """The FastAPI app serving ``detector`` (an ``RCNN`` in eval mode or an ``OnnxDetector``).

    Routes: ``GET /`` (the page), ``POST /predict`` (image bytes -> detections JSON; query
    ``threshold``, default 0: every detection the model gives), ``GET /health``.
    """
    service = Service(detector, name=name, max_bytes=max_bytes)
    app = FastAPI(title="rcnn serve", docs_url=None, redoc_url=None)
    app.state.service = service
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict:
        return service.health()

    @app.post("/predict")
    async def predict(request: Request, threshold: float = 0.0):
        try:
            body = await read_body(request, service.max_bytes)
            return await run_in_threadpool(service.run, body, threshold)
        except BadRequestError as bad:
            return error(bad.status, str(bad))

    return app
