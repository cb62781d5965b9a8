"""Spark executor: each work unit is one Spark job of one task, on `local[*]` or any cluster master.

The driver ships only the unit descriptors; the task runs the unit function on an executor, which reads
its inputs from the shared home and writes its outputs there, and sends back the small result table as
Arrow IPC bytes. Jobs are submitted from a pool of driver threads as wide as the cluster's cores, so
results stream back unit by unit (progress, failure-rate stops) and a killed driver loses only the units
in flight. Nothing is concatenated in the driver and no DataFrame of rows is collected.

On a cluster, every node must see the home at the same path (a shared POSIX filesystem: NFS, Lustre,
a mounted volume) and run the same Python environment (`PYSPARK_PYTHON`, by default this interpreter's
path). Object stores (s3://, gs://) as the home are not supported yet."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from etl.executors import Unit, UnitFn, run_bounded, table_from_ipc, table_to_ipc

log = logging.getLogger("tol.spark")


def _run_one(fn: UnitFn, unit: Unit) -> bytes:
    return table_to_ipc(fn(unit))


def _import_all(modules: tuple[str, ...]) -> int:
    """A warm-up task: the executor's Python worker imports the unit function's modules once."""
    for name in modules:
        importlib.import_module(name)
    return os.getpid()


# The JVMs only pass bytes between our Python workers, so they are tuned to start fast: the client compiler
# alone and the serial collector took a session and its first job on the loopback cluster from 12.3-12.9 s
# to 7.7-8.5 s. TOL_SPARK_JAVA_OPTIONS replaces them (empty: none; these override extraJavaOptions set in
# spark-defaults.conf, so set yours here).
DEFAULT_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def java_options() -> str:
    """The driver's and executors' extra JVM options: `TOL_SPARK_JAVA_OPTIONS`, else the default above."""
    value = os.environ.get("TOL_SPARK_JAVA_OPTIONS")
    return DEFAULT_JAVA_OPTIONS if value is None else value.strip()


class SparkExecutor:
    def __init__(self, master: str = "local[2]", app_name: str = "treeoflife") -> None:
        self.master = master
        self.app_name = app_name
        self._started: Future | None = None

    def warm_up(self, modules: Sequence[str] = ()) -> None:
        """Create the session and run one task per slot, importing `modules`, in a background thread: the
        JVM, the executors' registration and their Python workers (seconds on a standalone cluster)
        overlap the driver's planning instead of following it."""
        if self._started is None:
            # Workers must run this interpreter (its venv holds pyarrow and our packages), not the system
            # one; set here, in the calling thread, not in the starter beside the driver's other threads.
            os.environ["PYSPARK_PYTHON"] = os.environ.get("PYSPARK_PYTHON") or sys.executable
            self._started = Future()
            # A daemon thread: a stage that fails before its units does not wait for the session at exit.
            threading.Thread(
                target=self._start, args=(tuple(modules),), name="spark-start", daemon=True
            ).start()

    def _start(self, modules: tuple[str, ...]) -> None:
        try:
            sc = self._session().sparkContext
            slots = max(1, sc.defaultParallelism)
            t0 = time.perf_counter()
            sc.parallelize(range(slots), slots).map(lambda _: _import_all(modules)).collect()
            log.info("spark: %d workers warm in %.1f s", slots, time.perf_counter() - t0)
        except BaseException as exc:  # run_units raises it
            self._started.set_exception(exc)
        else:
            self._started.set_result(sc)

    def _session(self):
        from pyspark.sql import SparkSession

        python = os.environ["PYSPARK_PYTHON"]  # set by warm_up
        active = SparkSession.getActiveSession()
        if active is not None and active.sparkContext.master != self.master:
            log.info(
                "spark: stopping the session on %s for one on %s", active.sparkContext.master, self.master
            )
            active.stop()  # getOrCreate would hand back the old session, whatever master is asked for
        builder = (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.pyspark.python", python)
            .config("spark.ui.enabled", "false")
            # One unit is one task: a unit that fails fails the stage (its rerun resumes), rather than Spark
            # retrying it behind the stage's back.
            .config("spark.task.maxFailures", "1")
        )
        # Python workers import each unit function's module by name: give them the driver's import path
        # (the folders on sys.path), so a function of a script's own module (a benchmark's helpers) is found.
        driver_path = [p for p in sys.path if p and os.path.isdir(p)]
        inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        builder = builder.config(
            "spark.executorEnv.PYTHONPATH", os.pathsep.join(dict.fromkeys([*inherited, *driver_path]))
        )
        java = java_options()
        if java:
            builder = builder.config("spark.driver.extraJavaOptions", java)
            builder = builder.config("spark.executor.extraJavaOptions", java)
        return builder.getOrCreate()

    def run_units(self, fn: UnitFn, units: Sequence[Unit]) -> Iterator[tuple[int, pa.Table]]:
        if not units:
            return
        self.warm_up()
        sc = self._started.result()
        slots = max(1, sc.defaultParallelism)
        log.info("spark: %d units on %s (%d task slots)", len(units), self.master, slots)

        def job(unit: Unit) -> pa.Table:
            (data,) = sc.parallelize([unit], 1).map(lambda u: _run_one(fn, u)).collect()
            return table_from_ipc(data)

        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="spark-unit") as pool:
            yield from run_bounded(
                lambda unit: pool.submit(job, unit), units, slots, on_stop=sc.cancelAllJobs
            )
