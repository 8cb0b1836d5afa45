"""The README's screenshot of `rcnn serve`'s page: a model served in this process, a photo picked
in headless Chromium (as tests/export/test_serve.py drives it), the page saved as PNG.

    .venv/bin/python examples/serve_screenshot.py --checkpoint runs/x/best.pth --image photo.jpg \\
        --output docs/serve.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))
from serve_helpers import chromium, chromium_path, live_server, upload_and_screenshot

from rcnn.engine.checkpoint import load_model
from rcnn.export.runtime import OnnxDetector
from rcnn.serve import create_app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--onnx")
    parser.add_argument("--image", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    if args.onnx:
        detector, name = OnnxDetector(args.onnx), Path(args.onnx).name
    else:
        detector, name = load_model(args.checkpoint), Path(args.checkpoint).parent.name
    with tempfile.TemporaryDirectory() as folder, live_server(
        create_app(detector, name=name)
    ) as url, chromium(chromium_path(), Path(folder)) as tools:  # fmt: skip
        page = f"{url}/"
        tools.call("Emulation.setDeviceMetricsOverride", width=900, height=760,
                   deviceScaleFactor=1, mobile=False)  # fmt: skip
        drawn = upload_and_screenshot(tools, page, Path(args.image), Path(args.output))
    print(f"{drawn} detections drawn; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
