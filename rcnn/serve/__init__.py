"""`rcnn serve`: an HTTP endpoint and a web page around one detector (FastAPI + uvicorn)."""

from rcnn.serve.app import create_app

__all__ = ["create_app"]
