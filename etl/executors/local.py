"""Local executor: a process pool over work units (threads for I/O live inside the unit function)."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

import pyarrow as pa

from etl.executors import Unit, UnitFn, run_bounded


def die_with_parent(parent: int) -> None:
    """Pool-worker initializer: end this worker when the process that started it dies, however it dies (a
    kill -9 of `tol fetch` must not leave workers downloading for minutes). Linux delivers SIGKILL through
    PR_SET_PDEATHSIG; a thread watching the parent pid covers other systems and the race before prctl."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


class LocalExecutor:
    def __init__(self, workers: int = 2) -> None:
        self.workers = max(1, workers)

    def warm_up(self, modules: Sequence[str] = ()) -> None:
        """Nothing to start ahead: the pool spawns its workers in about a second."""

    def run_units(self, fn: UnitFn, units: Sequence[Unit]) -> Iterator[tuple[int, pa.Table]]:
        if self.workers == 1:
            for i, unit in enumerate(units):
                yield i, fn(unit)
            return
        # spawn, not fork: the caller may hold threads (Prefect, DuckDB) that fork would copy mid-state.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=self.workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            yield from run_bounded(lambda unit: pool.submit(fn, unit), units, self.workers * 2)
