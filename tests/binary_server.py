"""A port held by a process that is no HTTP server: it answers an HTTP request with bytes that are no status line
(http.client raises BadStatusLine), as another service on a port a URL names by mistake, or that took a port picked
for a server, does."""
from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def binary_protocol_server() -> Iterator[int]:
    """Its port, for the block."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    conn.recv(1024)
                    conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00@\x00\xfe\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
