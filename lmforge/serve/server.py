"""Running the app with uvicorn: on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

from ..errors import LmforgeError


def need_server_libraries() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise LmforgeError("serving needs FastAPI and uvicorn: pip install 'lmforge[serve]'") from None


def serve(model, *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None, api_key: str | None = None,
          max_batch: int = 16, max_queue: int = 256, max_tokens: int = 2048, path: str | None = None,
          log_level: str = "warning", ready=None, threads: int | None = None) -> None:
    """Serve `model` until interrupted (Ctrl-C). `ready(url)` is called once the socket listens."""
    need_server_libraries()
    import uvicorn

    from .app import create_app

    if not 0 <= port <= 65535:
        raise LmforgeError(f"--port {port} is not a TCP port; use 1..65535 (0 = any free port)")
    app = create_app(model, name=name, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                     max_tokens=max_tokens, path=path, threads=threads)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if ready is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets)
            if server.started:
                bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
                ready(f"http://{host}:{bound}")
        server.startup = startup
    try:
        server.run()
    finally:
        app.state.served.close()
    if not server.started:
        raise LmforgeError(f"could not listen on {host}:{port} (in use, or not an address of this machine); "
                           "choose another --port or --host")


__all__ = ["serve", "need_server_libraries"]
