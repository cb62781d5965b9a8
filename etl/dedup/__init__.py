"""Dedup: exact, near-duplicate and evaluation-leak decisions (`stage`) over the hashes fetch wrote, with the
near-duplicate search (`near_dup`). Reads: `images`, `lineage`. Writes: `lake/dedup`."""
