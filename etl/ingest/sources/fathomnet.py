"""FathomNet: the REST API (`/api/images/list/all` pages, 0-based, `{"content": [...]}` or a bare array, until
an empty page) or a COCO-format export (`--path export.json`). One row per bounding box, carrying the crop box
(`x, y, width, height`) to the fetch stage. Concepts that are not organisms (trash, equipment, geology) and
boxes wholly outside their image are kept with a drop reason."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etl.http import HttpError, PoliteClient
from etl.ingest.records import clean, record_id
from etl.ingest.sources import IngestConfig, Page

DEFAULT_API = "https://database.fathomnet.org"
_SUBGENUS = re.compile(r"\s*\([A-Z][a-z]+\)\s*")
# FathomNet annotates what the camera sees, not only animals. Lower-case concept names, or their first word,
# and COCO supercategories that mean "not an organism".
NON_ORGANISM = {
    "trash", "debris", "marine debris", "litter", "plastic", "bag", "bottle", "can", "rope", "line", "net",
    "cable", "tire", "equipment", "instrument", "sensor", "laser", "rov", "sampler", "marker", "rock",
    "boulder", "cobble", "pebble", "sand", "sediment", "mud", "geology", "bubble", "bubbles", "shadow",
    "marine snow", "detritus",
}  # fmt: skip
NON_ORGANISM_SUPERCATEGORIES = {"trash", "debris", "equipment", "geology", "substrate", "abiotic", "other"}


def is_organism(concept: str | None, supercategory: str | None = None) -> bool:
    if (supercategory or "").strip().lower() in NON_ORGANISM_SUPERCATEGORIES:
        return False
    name = (concept or "").strip().lower()
    return bool(name) and name not in NON_ORGANISM and name.split(" ")[0] not in NON_ORGANISM


def _box_outside(crop: list[int], width: Any, height: Any) -> bool:
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        return False  # size unknown here: the fetch stage checks against the decoded image
    x, y, bw, bh = crop
    return x >= w or y >= h or x + bw <= 0 or y + bh <= 0


def strip_subgenus(name: str) -> str:
    return _SUBGENUS.sub(" ", name).strip()


def _row(
    image: dict[str, Any],
    box: dict[str, Any],
    i: int,
    crop: list[int] | None,
    drop: str | None,
    supercategory=None,
) -> dict[str, Any]:
    uuid = str(image.get("uuid") or image.get("id"))
    concept = clean(box.get("concept"))
    box_id = str(box.get("uuid") or box.get("id") or f"{uuid}-{i}")
    url = image.get("url") or image.get("coco_url") or image.get("flickr_url")
    if drop is None and not url:
        drop = "no_media_url"
    if drop is None and not is_organism(concept, supercategory):
        drop = "not_an_organism"
    if drop is None and crop and _box_outside(crop, image.get("width"), image.get("height")):
        drop = "box_outside_image"
    return {
        "source": "fathomnet",
        "source_id": box_id,
        "occurrence_id": uuid,
        "record_id": record_id("fathomnet", box_id, 0),
        "media_index": i,
        "media_url": url,
        "license": "CC-BY-NC-ND-4.0",
        "license_verbatim": "CC BY-NC-ND 4.0",
        "rights_holder": image.get("contributorsEmail") or "MBARI / FathomNet",
        "img_type": "other",
        "verbatim_name": strip_subgenus(concept) if concept else None,
        "crop_box": crop,
        "drop_reason": drop,
        "payload": {"image": {k: v for k, v in image.items() if k != "boundingBoxes"}, "box": box},
    }


def _crop(x: Any, y: Any, w: Any, h: Any) -> tuple[list[int] | None, str | None]:
    try:
        crop = [round(float(x)), round(float(y)), round(float(w)), round(float(h))]
    except (TypeError, ValueError):
        return None, "malformed_box"
    return crop, None if crop[2] > 0 and crop[3] > 0 else "empty_box"


def box_rows(image: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for one image of the REST API (its `boundingBoxes`)."""
    rows = []
    for i, box in enumerate(image.get("boundingBoxes") or []):
        if not isinstance(box, dict):
            box = {}
        crop, drop = _crop(box.get("x"), box.get("y"), box.get("width"), box.get("height"))
        rows.append(_row(image, box, i, crop, drop))
    return rows


def coco_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for a COCO export: one per annotation, its category as the concept.

    COCO numbers annotations from 1 in every export, so an annotation id means nothing across exports. A
    box's identity is its image (uuid, else URL, else file name), its box and its concept: the same box of
    the same image in two exports is one record, and boxes of different exports never collide. Annotations
    without a category (test splits) are kept as `unlabelled`."""
    images = {img.get("id"): img for img in doc.get("images") or [] if isinstance(img, dict)}
    categories = {c.get("id"): c for c in doc.get("categories") or [] if isinstance(c, dict)}
    rows = []
    counts: dict[Any, int] = {}
    for ann in doc.get("annotations") or []:
        if not isinstance(ann, dict):
            continue
        image = images.get(ann.get("image_id"), {"id": ann.get("image_id")})
        category = categories.get(ann.get("category_id"), {})
        i = counts[image.get("id")] = counts.get(image.get("id"), -1) + 1
        bbox = ann.get("bbox")
        crop, drop = _crop(*bbox) if isinstance(bbox, list) and len(bbox) == 4 else (None, "malformed_box")
        if ann.get("category_id") is None and drop is None:
            drop = "unlabelled"
        where = image.get("uuid") or image.get("coco_url") or image.get("url") or image.get("file_name")
        if where is None:
            where = f"image-{image.get('id')}"  # an export without image identity: ids stay per export
        shape = ",".join(str(v) for v in crop) if crop else json.dumps(bbox, sort_keys=True)
        box_id = f"coco:{where}#{shape}:{category.get('name') or ''}"
        box = {"id": box_id, "concept": category.get("name"), "annotation": ann}
        rows.append(_row(image, box, i, crop, drop, category.get("supercategory")))
    return rows


def pages(client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any]) -> Iterator[Page]:
    if cfg.path:
        size = Path(cfg.path).stat().st_size
        if size > cfg.max_document_bytes:  # JSON is read whole: bounded before it is
            raise HttpError(
                "too_large", f"{cfg.path}: {size} bytes, over max_document_bytes ({cfg.max_document_bytes})"
            )
        doc = json.loads(Path(cfg.path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("annotations"), list):
            raise HttpError("bad_payload", f"{cfg.path}: not a COCO export (no annotations list)")
        rows = coco_rows(doc)
        yield Page(rows[: cfg.limit] if cfg.limit else rows, {"path": cfg.path}, complete=True)
        return
    base = (cfg.api_url or DEFAULT_API).rstrip("/")
    page = int(checkpoint.get("page", 0))
    size = min(cfg.page_size, 1000)
    seen = 0
    while True:
        body = client.get_json(f"{base}/api/images/list/all", {"page": page, "size": size})
        content = body.get("content") if isinstance(body, dict) else body  # bare arrays occur too
        if not isinstance(content, list):
            raise HttpError("bad_payload", f"FathomNet page {page} has no content list")
        rows = [r for image in content if isinstance(image, dict) for r in box_rows(image)]
        seen += len(content)
        page += 1
        end = not content or (cfg.limit is not None and seen >= cfg.limit)
        yield Page(rows, {"page": page}, complete=end)
        if end:
            return
