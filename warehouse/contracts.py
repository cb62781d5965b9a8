"""Facts several modules share, defined once: the taxonomic ranks, the caption types, the text members of a
shard, the source names, and what a user-given name may be."""

from __future__ import annotations

import re

# The 7 ranks of every lineage, from the top; `species` holds the epithet alone.
RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
HIGHER_RANKS: tuple[str, ...] = RANKS[:-1]  # the ranks a record may carry above its name

# The caption types rendered for every sample (taxonomy/captions.py), and the five of them BioCLIP 2 trains
# with, one drawn per step (taxonTag variants are written to shards but are not in the paper's mix).
CAPTION_TYPES: tuple[str, ...] = ("sci", "com", "taxon", "sci_com", "taxon_com", "taxonTag", "taxonTag_com")
TRAINING_TEXT_TYPES: tuple[str, ...] = ("sci", "com", "taxon", "sci_com", "taxon_com")

# Text members of a shard sample besides `jpg`, `json` and `txt` (the `--txt-caption` type, for open_clip).
SHARD_TEXT_MEMBERS: tuple[str, ...] = (*CAPTION_TYPES, "scientific_name", "common_name", "taxonomic_name")

# The sources, in the default priority of the dedup keeper rule.
SOURCES: tuple[str, ...] = ("gbif", "eol", "bioscan", "fathomnet")

# Names that users give (dataset versions, run ids, evaluation sets, tasks) become folder names and SQL values,
# so they must be names, never paths.

# Letters, digits, '.', '-', '_'; not starting with a dot (no '.', '..', hidden folders); at most 128 long.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def check_name(kind: str, value: object) -> str:
    """`value` when it is a valid name, else ValueError saying what `kind` (e.g. "version") must look like."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{kind} name {value!r} is not allowed: use letters, digits, '.', '-' and '_' (at most 128, "
            "not starting with '.'); a name is never a path"
        )
    return value
