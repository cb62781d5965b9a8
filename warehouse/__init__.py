"""The catalog: Arrow schemas of every table, the DuckDB file, lake views and stage-run bookkeeping."""

from warehouse.catalog import Catalog, open_catalog
from warehouse.lake import write_parquet_atomic
from warehouse.stage_runs import StageRun

__all__ = ["Catalog", "StageRun", "open_catalog", "write_parquet_atomic"]
