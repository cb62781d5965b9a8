"""Local executor: a process pool over partitions (threads for I/O live inside the partition function)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import pyarrow as pa

from etl.executors import PartitionFn


def _apply(fn: PartitionFn, table: pa.Table, schema: pa.Schema) -> pa.Table:
    batches = list(fn(iter(table.to_batches())))
    return pa.Table.from_batches(batches, schema=schema)


class LocalExecutor:
    def __init__(self, workers: int = 2) -> None:
        self.workers = max(1, workers)

    def map_partitions(
        self, fn: PartitionFn, partitions: list[pa.Table], schema: pa.Schema
    ) -> Iterator[tuple[int, pa.Table]]:
        if self.workers == 1:
            for i, part in enumerate(partitions):
                yield i, _apply(fn, part, schema)
            return
        # spawn, not fork: the caller may hold threads (Prefect, DuckDB) that fork would copy mid-state.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx) as pool:
            pending: dict[Future, int] = {}
            todo = list(enumerate(partitions))
            while todo or pending:
                while todo and len(pending) < self.workers * 2:
                    i, part = todo.pop(0)
                    pending[pool.submit(_apply, fn, part, schema)] = i
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield pending.pop(fut), fut.result()
