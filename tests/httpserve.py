"""A static web server for tests: a directory over HTTP with range requests (as any web server or CDN
answers them), in a thread. ``cut_after``: drop the connection after that many bytes of a body, once,
to play a connection that breaks in the middle of a download. ``down_after``: once that many body
bytes were sent in all, the server goes down (the connection dropped, every later request closed
unanswered) until ``down_after`` is set to None again: a server that dies and comes back."""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path


class Server:
    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        self.root = root
        self.cut_after: int | None = None
        self.down_after: int | None = None
        self.sent = 0  # body bytes sent, over all requests
        self.requests: list[str] = []  # "GET /path range" of each request
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def hang_up(self) -> None:
                self.close_connection = True
                self.connection.shutdown(2)

            def do_GET(self) -> None:
                rng = self.headers.get("Range") or ""
                if server.down_after is not None and server.sent >= server.down_after:
                    self.hang_up()
                    return
                server.requests.append(f"GET {self.path} {rng}".strip())
                path = (server.root / urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end, status = 0, size, 200
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                if m:
                    start = int(m.group(1))
                    end = min(int(m.group(2)) + 1, size) if m.group(2) else size
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                limit = end - start
                cut = server.cut_after is not None and limit > server.cut_after
                if cut:
                    assert server.cut_after is not None
                    limit, server.cut_after = server.cut_after, None
                with open(path, "rb") as f:
                    f.seek(start)
                    while limit > 0 and (chunk := f.read(min(limit, 1 << 20))):
                        self.wfile.write(chunk)
                        server.sent += len(chunk)
                        limit -= len(chunk)
                        if server.down_after is not None and server.sent >= server.down_after:
                            cut = True
                            break
                if cut:
                    # The connection ends mid-body, as the client sees a server die.
                    self.hang_up()

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/"


@contextlib.contextmanager
def serve(root: Path, host: str = "127.0.0.1") -> Iterator[Server]:
    server = Server(root, host)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
