"""A Spark standalone cluster on loopback for the tests: one master and two one-core workers, started with
the pyspark package's own launcher (`bin/spark-class org.apache.spark.deploy.master.Master` / `...Worker`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_workers(webui: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{webui}/json/", timeout=2) as resp:
            return int(json.load(resp).get("aliveworkers", 0))
    except OSError:
        return 0


@contextmanager
def standalone_cluster(tmp: Path, workers: int = 2, timeout: float = 120) -> Iterator[str]:
    """Yield the master URL (`spark://127.0.0.1:<port>`) once every worker has registered."""
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(tmp / "logs"),
        "PYSPARK_PYTHON": sys.executable,
    }
    port, webui = _free_port(), _free_port()
    master = f"spark://127.0.0.1:{port}"
    launcher = str(spark_home / "bin" / "spark-class")
    logs = tmp / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def launch(name: str, *args: str) -> None:
        # The shell sends the process's output to its log file (the test reads it when start-up fails).
        redirect = 'exec "$0" "$@" > "$TOL_SPARK_LOG" 2>&1'
        log_env = {**env, "TOL_SPARK_LOG": str(logs / f"{name}.log")}
        procs.append(
            subprocess.Popen(["sh", "-c", redirect, launcher, *args], env=log_env, start_new_session=True)
        )

    try:
        launch(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(webui),
        )
        for i in range(workers):
            launch(
                f"worker-{i}",
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "1g",
                "--webui-port",
                str(_free_port()),
                "--work-dir",
                str(tmp / f"work-{i}"),
                master,
            )
        deadline = time.monotonic() + timeout
        while _alive_workers(webui) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                tails = "\n".join((logs / f).read_text(errors="replace")[-2000:] for f in os.listdir(logs))
                raise RuntimeError(f"the standalone cluster did not come up:\n{tails}")
            time.sleep(0.5)
        yield master
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
