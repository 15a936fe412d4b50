"""A real uvicorn server on a free loopback port, serving a tiny real model, for the `openai` client."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """create_app(model, **options) served by uvicorn in a thread of this process."""

    def __init__(self, model, **options) -> None:
        import uvicorn

        from lmforge.serve import create_app

        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: one thread is faster and immune to other jobs on the machine
        self.app = create_app(model, **options)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)

    def client(self, api_key: str = "none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.served.close()
        torch.set_num_threads(self.threads)


@pytest.fixture(scope="module")
def decoder():
    from _generate_models import lmforge_decoder

    return lmforge_decoder("llama", context=96)


@pytest.fixture(scope="module")
def server(decoder):
    s = Running(decoder, name="tiny", max_batch=8, max_tokens=64)
    yield s
    s.close()


class Reply:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        self.content = body
        self.text = body.decode("utf-8", "replace")

    def json(self):
        import json

        return json.loads(self.content)


def http(method: str, url: str, body=None, json_body=None, headers=None) -> Reply:
    """One plain HTTP request (the standard library: the raw bytes go out as given)."""
    import http.client
    import json
    import urllib.parse

    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    h = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        h.setdefault("Content-Type", "application/json")
    elif body is not None:
        body = body.encode() if isinstance(body, str) else body
        h.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, u.path, body, h)
        resp = conn.getresponse()
        return Reply(resp.status, resp.read())
    finally:
        conn.close()
