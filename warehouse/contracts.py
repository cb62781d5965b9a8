"""Facts several modules share, defined once: the taxonomic ranks, the caption types, the text members of a
shard, the source names, what a user-given name may be, and the drop reasons."""

from __future__ import annotations

import re
from dataclasses import dataclass

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

# EOL's media manifest (the bundle's CSV files, header in the first file only): what the EOL reader parses and
# the sample world writes.
EOL_MANIFEST_COLUMNS: tuple[str, ...] = (
    "EOL content ID",
    "EOL page ID",
    "Medium Source URL",
    "EOL Full-Size Copy URL",
    "License Name",
    "Copyright Owner",
)

# The coarse image types of the paper's curation (etl/filter/image_type.py decides them; ingest's first guess
# is `raw_records.img_type`), and the content scorers of the filter stage (etl/filter), which thresholds in a
# dataset version refer to by name.
IMAGE_TYPES: tuple[str, ...] = ("camera_trap", "citizen_science", "museum_specimen", "other")
FILTER_SCORERS: tuple[str, ...] = ("image_type", "burst", "faces", "museum_category")

# Names that users give (dataset versions, run ids, evaluation sets, tasks) become folder names and SQL values,
# so they must be names, never paths.

# Letters, digits, '.', '-', '_'; not starting with a dot (no '.', '..', hidden folders); at most 128 long.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


# What a model argument may be, wherever one is asked for (evaluate, predict, the museum scorer).
MODEL_SPEC_HELP = "a training run id, an export folder, local-dir:PATH or hf-hub:ORG/NAME"


def check_name(kind: str, value: object) -> str:
    """`value` when it is a valid name, else ValueError saying what `kind` (e.g. "version") must look like."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{kind} name {value!r} is not allowed: use letters, digits, '.', '-' and '_' (at most 128, "
            "not starting with '.'); a name is never a path"
        )
    return value


# --- Drop reasons -------------------------------------------------------------------------------------------
# Every row a stage does not carry forward ends with one of these reasons, stored in the column of the stage
# that dropped it (the columns predate this vocabulary and are part of the catalog contract):
#   ingest  raw_records.drop_reason      resolve  resolutions.match_type ('unresolved' counted in stage_runs)
#   fetch   images.status (not 'ok')     dedup    dedup_decisions.reason
#   shard   stage_runs.dropped_by_reason (`filtered:<scorer>`: a threshold of the version on a filter score)
# Two reasons are families with a suffix: `http_<status>` (an HTTP answer >= 400) and `eval_leak:<set>`.
# The catalog view `drop_reasons` lists them with their meanings, for joins in `tol sql`.


@dataclass(frozen=True)
class DropReason:
    stage: str
    meaning: str


# The opt-out signals fetch can honour (`FetchConfig.honour`), each with the drop reason it gives an image.
OPT_OUT_DROP_REASONS = {"robots": "robots_disallowed", "tdmrep": "tdm_reserved", "noai": "noai"}

DROP_REASONS: dict[str, DropReason] = {
    # ingest: the record cannot give an image of an organism
    "no_media": DropReason("ingest", "the occurrence has no media item at all"),
    "no_media_url": DropReason("ingest", "a media item without a URL"),
    "not_still_image": DropReason("ingest", "sound, video or another non-image media type"),
    "iiif_manifest_unresolved": DropReason("ingest", "a IIIF manifest (JSON-LD), not an image URL"),
    "dzi_unsupported": DropReason("ingest", "a Deep Zoom tile pyramid, not one image"),
    "unsupported_url_scheme": DropReason(
        "ingest", "a URL that is not http(s) (fetch also: a redirect to one)"
    ),
    "material_citation": DropReason("ingest", "a GBIF material citation: a figure in a paper, not a photo"),
    "malformed_record": DropReason(
        "ingest", "a source record that is not an object with the expected fields"
    ),
    "malformed_line": DropReason("ingest", "a line of a DwC-A or CSV file that does not parse"),
    "untrusted_media": DropReason("ingest", "EOL marked the media item untrusted by its curators"),
    "not_an_organism": DropReason("ingest", "a FathomNet concept for equipment, debris or similar"),
    "box_outside_image": DropReason("ingest", "a bounding box wholly outside its image"),
    "malformed_box": DropReason("ingest", "a bounding box that is not four numbers with positive size"),
    "unlabelled": DropReason("ingest", "a FathomNet box without a category"),
    # resolve
    "unresolved": DropReason("resolve", "the name matched no taxon of the backbone at any rank"),
    # fetch: the download or the image failed
    "http_status": DropReason("fetch", "`http_<status>`: the server answered with that HTTP status (>= 400)"),
    "timeout": DropReason("fetch", "no complete answer within the timeouts or the whole-request deadline"),
    "connection_error": DropReason("fetch", "the connection failed or was reset"),
    "dns_error": DropReason("fetch", "the host name does not resolve"),
    "private_address": DropReason("fetch", "the host resolves to a non-public address (refused)"),
    "bad_url": DropReason("fetch", "the URL has no host"),
    "too_many_redirects": DropReason("fetch", "more redirects than allowed"),
    "too_large": DropReason("fetch", "the body is larger than the byte limit"),
    "empty_body": DropReason("fetch", "a zero-byte answer"),
    "not_an_image": DropReason("fetch", "the body is not a decodable image"),
    "corrupt_image": DropReason("fetch", "the image is truncated or damaged"),
    "decompression_bomb": DropReason("fetch", "more pixels than the decoder allows"),
    "crop_outside_image": DropReason("fetch", "the record's crop box lies outside the downloaded image"),
    "too_small": DropReason("fetch", "the short side is below the minimum"),
    "robots_disallowed": DropReason("fetch", "the host's robots.txt disallows the image (or cannot be read)"),
    "tdm_reserved": DropReason(
        "fetch", "the host reserves text-and-data-mining rights (TDMRep file or header)"
    ),
    "noai": DropReason("fetch", "the image's X-Robots-Tag says noai or noimageai"),
    "internal_error": DropReason(
        "fetch", "a bug: an unexpected exception (counts towards the failure limit)"
    ),
    # dedup
    "no_hash": DropReason("dedup", "the image was not fetched, so it has no hash"),
    "eval_leak": DropReason(
        "dedup", "`eval_leak:<set>`: near or exact copy of an image of that evaluation set"
    ),
    "exact_duplicate": DropReason("dedup", "same MD5 as a kept image"),
    "near_duplicate": DropReason("dedup", "pHash within near_k bits of a kept image"),
    "degenerate_hash": DropReason("dedup", "a blank or uniform image, whose pHash says nothing"),
    # shard: a threshold of the version on a filter score (scores are kept; the version decides)
    "filtered": DropReason("shard", "`filtered:<scorer>`: a threshold of the version on that scorer's score"),
    "taken_down": DropReason("shard", "a takedown request covers the record (`tol takedown add`)"),
}

_FAMILIES = {
    "http_status": re.compile(r"http_[1-5][0-9]{2}"),
    "eval_leak": re.compile(r"eval_leak:.+"),
    "filtered": re.compile("filtered:(" + "|".join(FILTER_SCORERS) + ")"),
}


def reason_key(reason: str) -> str:
    """The vocabulary entry of `reason` (`http_404` -> `http_status`); ValueError if it has none."""
    if reason in DROP_REASONS and reason not in _FAMILIES:
        return reason
    for key, pattern in _FAMILIES.items():
        if pattern.fullmatch(reason):
            return key
    raise ValueError(f"{reason!r} is not a drop reason of warehouse/contracts.py DROP_REASONS")


def check_reason(reason: str) -> str:
    reason_key(reason)
    return reason


# Upper bounds on counts a run form (or a recipe, or a flag) may ask for: far above this machine's needs,
# far below what would exhaust a host (a form that asks for 10**9 threads or training steps is refused).
MAX_WORKERS = 512
MAX_THREADS = 256
MAX_PIXELS = 2**30  # a 32k x 32k image; Pillow's own bomb limit is 89 M
MAX_STEPS = 100_000_000


def check_bound(what: str, value: int, upper: int, lower: int = 0) -> int:
    """`value` within [lower, upper], else a ValueError naming the setting."""
    if not lower <= value <= upper:
        raise ValueError(f"{what} must be between {lower} and {upper}, not {value}")
    return value


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[a-z_]*(?:key|token|secret|password|passwd|pwd|auth|sig))=)[^&#\s]*"
)


def redact(text: str) -> str:
    """`text` with the credentials a URL can carry masked: `user:password@` and secret-looking query values
    (`api_key=`, `token=`, `password=`, ...). For names, tags, artifacts and error messages."""
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))


# Image files and members: what the fetch stage, evaluation sets, support sets and benchmark readers count as
# an image (a fact they share, so it lives here and evaluation never imports etl for it).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"})


def is_image_name(name: str) -> bool:
    """Whether a file or member name ends in an image suffix (only the last one counts: `a.v2.jpg` is)."""
    return "." in name and "." + name.rsplit(".", 1)[1].lower() in IMAGE_SUFFIXES


def image_member(sample: dict) -> str | None:
    """The image member of a WebDataset sample (`jpg`, `png`, ...), or None when it has none. WebDataset
    splits a name at its first dot, so `a.v2.jpg` arrives as key `a`, member `v2.jpg`: that counts too."""
    return next((m for m in sample if not m.startswith("__") and is_image_name("x." + m)), None)
