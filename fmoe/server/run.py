"""Running the server: in the foreground (``fmoe serve``) or on a background thread (tests, notebooks).

    serve(model, tok, host="127.0.0.1", port=8000, name="fmoe-demo", api_key=None, max_queue=8)   # blocks
    with BackgroundServer(model, tok, port=0, max_queue=2) as srv:                                 # a free port
        openai.OpenAI(base_url=srv.url + "/v1", api_key="x") ...
"""
from __future__ import annotations

import threading
import time

from fmoe.server.app import create_app
from fmoe.server.engine import ServerEngine


def _config(app, host: str, port: int, log_level: str):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                          timeout_graceful_shutdown=2)


def serve(model, tok, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log_level: str = "info", **engine_options) -> None:
    import uvicorn

    engine = ServerEngine(model, tok, **engine_options).start()
    try:
        uvicorn.Server(_config(create_app(engine, api_key, host), host, port, log_level)).run()
    finally:
        engine.stop()


class BackgroundServer:
    """uvicorn on a daemon thread of this process; ``port=0`` takes a free port (``.port``, ``.url``)."""

    def __init__(self, model, tok, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 log_level: str = "warning", **engine_options):
        import uvicorn

        self.engine = ServerEngine(model, tok, **engine_options)
        self.app = create_app(self.engine, api_key, host)
        self.server = uvicorn.Server(_config(self.app, host, port, log_level))
        self.host, self.port = host, port
        self.thread = threading.Thread(target=self.server.run, name="fmoe-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.engine.start()
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.stop()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
