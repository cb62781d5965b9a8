"""Loopback HTTP server for the sample world, at the real API paths.

Dynamic endpoints: GBIF `/v1/occurrence/search` (limit/offset paging, `endOfRecords`) and FathomNet
`/api/images/list/all` (0-based `page`/`size`, `{"content": [...]}`). Everything else is a file under
`routes/`; text files get `{{BASE_URL}}` replaced, and a folder named `*.tgz` is served as a gzip tarball.
Faults can be injected per path prefix for tests (`faults`: prefix -> list of statuses to return first).
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

TEXT_SUFFIXES = {".json", ".csv", ".tab", ".tsv", ".txt"}
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".json": "application/json",
    ".csv": "text/csv",
    ".tab": "text/tab-separated-values",
    ".tgz": "application/gzip",
}
HTML_503 = b"<html><body><h1>Error 503 Backend fetch failed</h1></body></html>"


class SampleWorldServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, root: Path, host: str = "127.0.0.1", port: int = 0, faults: dict[str, list[int]] | None = None
    ) -> None:
        super().__init__((host, port), _Handler)
        self.root = Path(root)
        self.base_url = f"http://{host}:{self.server_address[1]}"
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.lock = threading.Lock()
        self.requests: list[str] = []
        self.gbif = self._load_json("api_data/gbif_occurrences.json")
        self.fathomnet = self._load_json("api_data/fathomnet_images.json")
        self.tarballs: dict[str, bytes] = {}

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that hung up (timeouts in tests, a killed fetch): not the server's problem
        super().handle_error(request, client_address)

    def _load_json(self, rel: str) -> list:
        path = self.root / rel
        if not path.exists():
            return []
        return json.loads(path.read_text().replace("{{BASE_URL}}", self.base_url))

    def take_fault(self, path: str) -> int | None:
        with self.lock:
            for prefix, statuses in self.faults.items():
                if path.startswith(prefix) and statuses:
                    return statuses.pop(0)
        return None

    def substitute(self, data: bytes) -> bytes:
        return data.replace(b"{{BASE_URL}}", self.base_url.encode())

    def tarball(self, folder: Path) -> bytes:
        key = str(folder)
        if key not in self.tarballs:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for f in sorted(folder.iterdir()):
                    data = self.substitute(f.read_bytes())
                    info = tarfile.TarInfo(f.name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            self.tarballs[key] = buf.getvalue()
        return self.tarballs[key]


class _Handler(BaseHTTPRequestHandler):
    server: SampleWorldServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet: tests read server.requests instead
        pass

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode(), "application/json")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.server.lock:
            self.server.requests.append(self.path)
        fault = self.server.take_fault(path)
        if fault is not None:
            headers = {"Retry-After": "1"} if fault in (429, 420) else {}
            self._send(fault, HTML_503, "text/html", headers)
            return
        if path == "/v1/occurrence/search":
            self._gbif_search(query)
        elif path == "/api/images/list/all":
            self._fathomnet_page(query)
        else:
            self._static(url.path)

    def _gbif_search(self, query: dict[str, str]) -> None:
        try:
            limit = min(int(query.get("limit", 20)), 300)
            offset = int(query.get("offset", 0))
        except ValueError:
            self._send(400, b'{"error": "bad paging"}', "application/json")
            return
        records = self.server.gbif
        if query.get("mediaType") == "StillImage":
            records = [r for r in records if r.get("media")]
        if "taxonKey" in query:
            records = [r for r in records if str(r.get("taxonKey")) == query["taxonKey"]]
        page = records[offset : offset + limit]
        self._json(
            {
                "offset": offset,
                "limit": limit,
                "endOfRecords": offset + limit >= len(records),
                "count": len(records),
                "results": page,
            }
        )

    def _fathomnet_page(self, query: dict[str, str]) -> None:
        page, size = int(query.get("page", 0)), int(query.get("size", 100))
        self._json({"content": self.server.fathomnet[page * size : (page + 1) * size]})

    def _static(self, raw_path: str) -> None:
        rel = raw_path.lstrip("/")
        target = (self.server.root / "routes" / rel).resolve()
        routes = (self.server.root / "routes").resolve()
        if routes not in target.parents and target != routes:
            self._send(403, b"forbidden", "text/plain")
            return
        if target.is_dir() and target.suffix == ".tgz":
            self._send(200, self.server.tarball(target), "application/gzip")
            return
        if not target.is_file():
            self._send(404, b"<html><body>Not Found</body></html>", "text/html")
            return
        data = target.read_bytes()
        if target.suffix in TEXT_SUFFIXES:
            data = self.server.substitute(data)
        self._send(200, data, CONTENT_TYPES.get(target.suffix, "application/octet-stream"))


@contextmanager
def serve_sample_world(
    root: str | Path, faults: dict[str, list[int]] | None = None, port: int = 0
) -> Iterator[SampleWorldServer]:
    """Run the server in a background thread for the duration of the `with` block."""
    server = SampleWorldServer(Path(root), port=port, faults=faults)
    thread = threading.Thread(target=server.serve_forever, name="sample-world-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
