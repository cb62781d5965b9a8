"""Executors run a per-partition function `Iterator[RecordBatch] -> Iterator[RecordBatch]` over Arrow
partitions. What a step does stays apart from where it runs; both executors must give identical rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import pyarrow as pa

EXECUTORS: tuple[str, ...] = ("local", "spark")

PartitionFn = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


class Executor(Protocol):
    def map_partitions(
        self, fn: PartitionFn, partitions: list[pa.Table], schema: pa.Schema
    ) -> Iterator[tuple[int, pa.Table]]:
        """Yield (partition index, output table) as partitions complete, in any order."""
        ...


def get_executor(name: str, workers: int = 2, spark_master: str | None = None) -> Executor:
    from etl.executors.local import LocalExecutor

    registry: dict[str, Callable[[], Executor]] = {"local": lambda: LocalExecutor(workers)}
    if name == "spark":
        from etl.executors.spark import SparkExecutor

        return SparkExecutor(master=spark_master or f"local[{workers}]")
    if name not in registry:
        raise ValueError(f"unknown executor {name!r}; choose one of: local, spark")
    return registry[name]()
