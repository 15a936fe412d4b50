"""Serving: an OpenAI-compatible HTTP server with continuous batching, and its load benchmark.

    from lmforge.serve import create_app, serve
    app = create_app(lmforge.load("runs/chat"), name="chat", api_key="secret")   # a FastAPI app
    serve(model, host="127.0.0.1", port=8000)                                   # run it with uvicorn

`lmforge serve RUN_OR_MODEL` and `lmforge bench serve URL` are the command-line entries (docs/serving.md).
"""

from .app import create_app
from .bench import bench_serve
from .server import serve

__all__ = ["create_app", "serve", "bench_serve"]
