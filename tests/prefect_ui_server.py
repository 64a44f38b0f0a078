"""A Prefect server as its address looks to a user who copied the UI's: its API (and the API's /health) under /api,
404 at the root's /health, as when PREFECT_API_URL lacks /api."""
from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator


class PrefectUnderApi(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802  (http.server's naming)
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def prefect_under_api() -> Iterator[str]:
    """The server's root URL (without /api), for the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PrefectUnderApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
