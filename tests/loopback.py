"""A folder served over HTTP on 127.0.0.1 (an OS-chosen port) from a thread, for tests."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(directory: Path | None = None, handler: type = QuietHandler) -> Iterator[str]:
    """Yield the server's base URL (`handler` serves `directory`, or whatever it serves itself
    without one); the server is stopped and its socket closed afterwards."""
    if directory is not None:
        handler = functools.partial(handler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
