"""Arrow schemas of every catalog table: the user-facing contract (documented column by column in README)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from warehouse.contracts import RANKS

RAW_RECORDS = pa.schema(
    [
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("occurrence_id", pa.string()),
        ("media_index", pa.int32()),
        ("media_url", pa.string()),
        ("media_format", pa.string()),
        ("license", pa.string()),
        ("license_verbatim", pa.string()),
        ("rights_holder", pa.string()),
        ("creator", pa.string()),
        ("publisher", pa.string()),
        ("dataset_key", pa.string()),
        ("basis_of_record", pa.string()),
        ("img_type", pa.string()),
        ("verbatim_name", pa.string()),
        ("verbatim_rank", pa.string()),
        ("verbatim_kingdom", pa.string()),
        ("verbatim_phylum", pa.string()),
        ("verbatim_class", pa.string()),
        ("verbatim_order", pa.string()),
        ("verbatim_family", pa.string()),
        ("verbatim_genus", pa.string()),
        ("verbatim_species", pa.string()),
        ("vernacular_name", pa.string()),
        ("event_date", pa.string()),
        ("crop_box", pa.list_(pa.int32())),
        ("drop_reason", pa.string()),
        ("payload_hash", pa.string()),
        ("payload", pa.string()),
        ("run_id", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

TAXA = pa.schema(
    [
        ("taxon_id", pa.string()),
        *[(r, pa.string()) for r in RANKS],
        ("scientific_name", pa.string()),
        ("taxon_rank", pa.string()),
        ("common_name", pa.string()),
        ("common_name_rank", pa.string()),
        ("backbone_version", pa.string()),
    ]
)

RESOLUTIONS = pa.schema(
    [
        ("record_id", pa.string()),
        ("taxon_id", pa.string()),
        ("match_type", pa.string()),
        ("confidence", pa.float32()),
        ("query_name", pa.string()),
        ("reason", pa.string()),
        ("backbone_version", pa.string()),
        ("run_id", pa.string()),
        # The raw payload answered: an incremental resolve answers again the records whose payload changed.
        ("payload_hash", pa.string()),
    ]
)

IMAGES = pa.schema(
    [
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("media_url", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("http_status", pa.int32()),
        ("md5", pa.string()),
        ("phash", pa.int64()),
        ("phash_hex", pa.string()),
        ("pdq_hex", pa.string()),  # 256-bit PDQ, only when fetched with --pdq
        ("pdq_quality", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("original_bytes", pa.int64()),
        ("bytes", pa.int64()),
        ("seconds", pa.float32()),
        ("attempts", pa.int32()),
        # Where the JPEG lies: `blob` (a file relative to the home, see IMAGE_BLOBS) at `blob_offset`,
        # `bytes` long. Bytes are kept out of Parquet so that a reader takes exactly the images it needs.
        ("blob", pa.string()),
        ("blob_offset", pa.int64()),
        ("run_id", pa.string()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)

DEDUP_DECISIONS = pa.schema(
    [
        ("record_id", pa.string()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),
        ("duplicate_of", pa.string()),
        ("distance", pa.int32()),
        ("run_id", pa.string()),
    ]
)

EVAL_HASHES = pa.schema(
    [
        ("eval_set", pa.string()),
        ("path", pa.string()),
        ("md5", pa.string()),
        ("phash", pa.int64()),
        ("run_id", pa.string()),
        ("pdq_hex", pa.string()),  # 256-bit PDQ, when the set was hashed with the PDQ leak check on
        ("pdq_quality", pa.int32()),
    ]
)

# Benchmarks listed by source id rather than by image (Rare Species by EOL page id): every record of a listed
# id is an evaluation leak of that set.
EVAL_IDS = pa.schema(
    [
        ("eval_set", pa.string()),
        ("source", pa.string()),
        ("occurrence_id", pa.string()),  # EOL: the page id (raw_records.occurrence_id)
        ("run_id", pa.string()),
    ]
)

# One row per image and scorer (etl/filter): what the scorer said, never a decision. `score` is the number a
# threshold compares (images in the occurrence, a face probability, a similarity), `label` the class named
# (an image type, a category), `details` JSON (boxes, the runner-up category).
FILTER_SCORES = pa.schema(
    [
        ("record_id", pa.string()),
        ("scorer", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("score", pa.float64()),
        ("label", pa.string()),
        ("details", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)

# The centroids of a support set (`tol filter build-support`): k per category, for nearest-centroid scoring.
SUPPORT_CENTROIDS = pa.schema(
    [
        ("support", pa.string()),
        ("category", pa.string()),
        ("centroid", pa.list_(pa.float32())),
        ("images", pa.int64()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
    ]
)


# The image lake's bytes: one file per fetch part, `lake/<IMAGE_BLOBS>/source=<source>/<part>.jpgs`, the
# processed JPEGs of the part's ok rows back to back, in the part's row order. A file is written whole
# (atomically) before the Parquet part that points into it, so no row ever points at missing bytes.
BUILD_PLAN = (
    "plan.parquet"  # in a version's build folder: every sample's split, shard, key and image location
)
IMAGE_BLOBS = "image_blobs"
BLOB_SUFFIX = ".jpgs"


@dataclass(frozen=True)
class LakeTable:
    """A table stored as Parquet parts under `lake/<folder>/<key>=<value>/.../<part>.parquet`, one folder
    level per partition key, exposed as a catalog view of the same name."""

    folder: str
    partitions: tuple[str, ...]
    schema: pa.Schema

    @property
    def pattern(self) -> str:
        """The glob of its parts, relative to the home folder."""
        return "/".join(["lake", self.folder, *(["*"] * len(self.partitions)), "*.parquet"])


LAKE_TABLES: dict[str, LakeTable] = {
    "raw_records_history": LakeTable("raw", ("source", "ingest"), RAW_RECORDS),
    "resolutions_history": LakeTable("resolved", ("run",), RESOLUTIONS),
    "images_history": LakeTable("images", ("source",), IMAGES),
    "dedup_decisions_history": LakeTable("dedup", ("run",), DEDUP_DECISIONS),
    "eval_hashes": LakeTable("eval_hashes", ("set",), EVAL_HASHES),
    "eval_ids": LakeTable("eval_ids", ("set",), EVAL_IDS),
    "filter_scores_history": LakeTable("filter", ("scorer", "run"), FILTER_SCORES),
    "filter_support": LakeTable("filter_support", ("support",), SUPPORT_CENTROIDS),
}


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def duckdb_type(arrow_type: pa.DataType) -> str:
    """DuckDB column type for an Arrow type; used to build typed empty views before any data exists."""
    if pa.types.is_list(arrow_type):
        return duckdb_type(arrow_type.value_type) + "[]"
    mapping = {
        pa.string(): "VARCHAR",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.float32(): "FLOAT",
        pa.float64(): "DOUBLE",
        pa.bool_(): "BOOLEAN",
        pa.binary(): "BLOB",
        pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    }
    try:
        return mapping[arrow_type]
    except KeyError as exc:
        raise TypeError(f"no DuckDB type mapped for Arrow type {arrow_type}") from exc
