"""Shards: a dataset version as WebDataset tar shards with a manifest (`stage`). Reads: `images`, `lineage`,
`dedup`. Writes: `shards/` and the `dataset_versions` row."""
