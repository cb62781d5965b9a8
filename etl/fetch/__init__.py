"""Fetch: download (through `etl.http`), decode, resize and hash images (`images`); the stage (`stage`)
writes `lake/images`. Reads: `raw_records`."""
