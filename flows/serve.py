"""`tol serve`: a local Prefect server (SQLite, 127.0.0.1) serving the deployments: scheduled ingestion and
a parameterised `train` a user runs from the UI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

INGEST_CRON = "0 3 * * *"  # daily at 03:00, the quiet hours of most hosts


def build_deployments(home: str) -> list:
    from flows.pipeline import curate_flow, evaluate_flow, ingest_flow, train_flow

    home = str(Path(home).resolve())
    return [
        ingest_flow.to_deployment(name="scheduled-ingest", cron=INGEST_CRON, parameters={"home": home}),
        curate_flow.to_deployment(name="curate", parameters={"home": home}),
        train_flow.to_deployment(name="train", parameters={"home": home, "preset": "cpu-tiny"}),
        evaluate_flow.to_deployment(name="evaluate", parameters={"home": home}),
    ]


def serve(home: str, port: int = 4200) -> None:
    """Start the server, wait for its health check, then serve the deployments until interrupted."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(Path(home).resolve() / "prefect"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{api}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None:
                raise RuntimeError("the Prefect server exited during start-up")
            time.sleep(1)
        else:
            raise TimeoutError("the Prefect server did not answer within 120 s")
        os.environ.update({"PREFECT_API_URL": api, "PREFECT_HOME": env["PREFECT_HOME"]})
        from prefect import serve as prefect_serve

        print(
            f"Prefect UI: http://127.0.0.1:{port}  (deployments: scheduled-ingest, curate, train, evaluate)"
        )
        prefect_serve(*build_deployments(home))
    finally:
        server.terminate()
        server.wait(timeout=30)
