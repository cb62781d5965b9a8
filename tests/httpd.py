"""A scripted loopback HTTP server for tests: a function of the path gives (status, body, headers)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple[int, bytes, dict[str, str]]


class LoopbackServer:
    """`handler` (a BaseHTTPRequestHandler class) served on 127.0.0.1, any free port, from a daemon thread.
    Use it as a context manager, or call `close()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScriptedServer(LoopbackServer):
    """Answers every GET with `answer(path)`; `seen` lists the paths asked for, in order."""

    def __init__(self, answer: Callable[[str], Reply]):
        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                seen.append(self.path)
                status, body, headers = answer(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)
