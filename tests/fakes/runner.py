"""Run a WSGI app as a real HTTP server on a loopback port in a background thread."""
from __future__ import annotations

import threading

from werkzeug.serving import make_server


class ThreadedServer:
    """A werkzeug server on 127.0.0.1 in a daemon thread; `url` is its base address."""

    def __init__(self, wsgi_app, port: int = 0):
        self.server = make_server("127.0.0.1", port, wsgi_app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "ThreadedServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
