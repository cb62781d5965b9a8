"""Executors run a per-unit function over work units. What a step does stays apart from where it runs.

A work unit is a small descriptor (a dict of strings and numbers: lake paths, row ranges, output names),
never the rows themselves. The unit function reads its inputs from the lake, writes its outputs itself
(atomic lake parts, shard tars) and returns a small Arrow table of results (counts, paths, checksums).
So the driver's memory is O(units), the same code runs on one machine and on a cluster whose nodes see
the home at the same path, and a killed run loses only the units in flight: finished units' outputs are
already on disk. Both executors must give identical results for the same units."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from warehouse.contracts import MAX_WORKERS, check_bound

EXECUTORS: tuple[str, ...] = ("local", "spark")

Unit = dict[str, Any]
UnitFn = Callable[[Unit], pa.Table]


class Executor(Protocol):
    def warm_up(self, modules: Sequence[str] = ()) -> None:
        """Start what the executor needs (a Spark session, its workers importing `modules`: the unit
        function's) in the background, so that it overlaps the driver's planning; `run_units` waits for it.
        Optional: `run_units` starts it anyway."""
        ...

    def run_units(self, fn: UnitFn, units: Sequence[Unit]) -> Iterator[tuple[int, pa.Table]]:
        """Yield (unit index, result table) as units complete, in any order. Closing the iterator early
        (a failure-rate stop, Ctrl-C) stops the units not started yet."""
        ...


def run_bounded(
    submit: Callable[[Unit], Future],
    units: Sequence[Unit],
    width: int,
    on_stop: Callable[[], None] | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """Keep at most `width` units submitted (a future each); yield (index, result) as they complete. Closed
    early, it cancels what has not started and calls `on_stop` (to cancel what runs)."""
    pending: dict[Future, int] = {}
    todo = iter(enumerate(units))
    try:
        while True:
            while len(pending) < width and (nxt := next(todo, None)) is not None:
                pending[submit(nxt[1])] = nxt[0]
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield pending.pop(fut), fut.result()
    finally:
        if pending:
            for fut in pending:
                fut.cancel()
            if on_stop is not None:
                on_stop()


def table_to_ipc(table: pa.Table) -> bytes:
    """A result table as Arrow IPC bytes (what crosses a process or a network boundary)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _local(workers: int, spark_master: str | None) -> Executor:
    from etl.executors.local import LocalExecutor

    return LocalExecutor(workers)


def _spark(workers: int, spark_master: str | None) -> Executor:
    from etl.executors.spark import SparkExecutor

    return SparkExecutor(master=spark_master or f"local[{workers}]")


_FACTORIES: dict[str, Callable[[int, str | None], Executor]] = {"local": _local, "spark": _spark}
assert tuple(_FACTORIES) == EXECUTORS


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the byte-heavy stages (fetch, shard) run: `local` processes, or Spark (`spark_master`, default
    `local[workers]`)."""

    name: str = field(
        default="local",
        metadata={"help": "where the work units run", "flag": "--executor", "choices": EXECUTORS},
    )
    workers: int = field(default=2, metadata={"help": "local worker processes (or Spark's local[N])"})
    spark_master: str | None = field(
        default=None, metadata={"help": "a Spark master URL, e.g. spark://host:7077 (default local[N])"}
    )

    def __post_init__(self) -> None:
        if self.name not in EXECUTORS:
            raise ValueError(f"unknown executor {self.name!r}; choose one of: {', '.join(EXECUTORS)}")
        check_bound("workers", self.workers, MAX_WORKERS, 1)

    def build(self) -> Executor:
        """The executor itself; a Spark session starts only when it is first given units (or warmed up)."""
        return _FACTORIES[self.name](self.workers, self.spark_master)


LOCAL = ExecutorConfig()  # the default of every stage that takes an executor
