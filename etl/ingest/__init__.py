"""Ingest: the four source connectors (`sources/`), the shared record shape (`records`), and the stage that
writes `raw_records` (`stage`). Reads: the network or local files. Writes: `lake/raw_records`."""
