"""Spark executor: the same per-partition function through `DataFrame.mapInArrow`, on `local[*]` or any
master. Each input partition becomes one Spark partition, so outputs map back to their partition index."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from etl.executors import PartitionFn

PART = "__partition"


class SparkExecutor:
    def __init__(self, master: str = "local[2]", app_name: str = "treeoflife") -> None:
        self.master = master
        self.app_name = app_name

    def _session(self):
        from pyspark.sql import SparkSession

        # Workers must run this interpreter (its venv holds pyarrow and our packages), not the system one.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        return (
            SparkSession.builder.master(self.master)
            .appName(self.app_name)
            .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )

    def map_partitions(
        self, fn: PartitionFn, partitions: list[pa.Table], schema: pa.Schema
    ) -> Iterator[tuple[int, pa.Table]]:
        if not partitions:
            return
        from pyspark.sql.pandas.types import from_arrow_schema

        spark = self._session()
        tagged = pa.concat_tables(
            [p.append_column(PART, pa.array([i] * p.num_rows, pa.int32())) for i, p in enumerate(partitions)]
        )
        out_schema = schema.append(pa.field(PART, pa.int32()))

        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            batches = [b for b in batches if b.num_rows]
            if not batches:
                return  # Spark may hand a worker an empty partition
            table = pa.Table.from_batches(batches)
            for part in sorted(set(table.column(PART).to_pylist())):
                rows = table.filter(pc.equal(table.column(PART), part)).drop_columns([PART])
                for out in fn(iter(rows.to_batches())):
                    yield out.append_column(PART, pa.array([part] * out.num_rows, pa.int32()))

        df = spark.createDataFrame(tagged).repartition(len(partitions), PART)
        result = df.mapInArrow(run, from_arrow_schema(out_schema)).toArrow()
        for i in range(len(partitions)):
            part = result.filter(pc.equal(result.column(PART), i)).drop_columns([PART])
            yield i, part.cast(schema)
