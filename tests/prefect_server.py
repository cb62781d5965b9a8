"""A `prefect server start` process on a loopback port, as an operator runs one, for the tests of the
production path (process workers on SQLite, and on PostgreSQL)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(folder: Path, **settings: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a server with its home in `folder` (and `settings`, e.g. its database URL); yields its API URL
    and the environment its clients (tol, prefect, workers) use. Stopped on exit."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOL_"))}
    env |= {
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **settings,
    }
    (folder / "prefect").mkdir(exist_ok=True)
    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(180):
                try:
                    if requests.get(f"{api}/health", timeout=2).ok:
                        break
                except requests.RequestException:
                    time.sleep(1)
            yield api, env
        finally:
            server.terminate()
            server.wait(timeout=60)
