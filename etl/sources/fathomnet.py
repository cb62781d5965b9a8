"""FathomNet REST API: `/api/images/list/all` pages (0-based, `{"content": [...]}`) until an empty page;
one row per bounding box, carrying the crop box (`x, y, width, height`) to the fetch stage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from etl.http import FetchError, PoliteClient
from etl.records import clean, record_id
from etl.sources import IngestConfig, Page

DEFAULT_API = "https://database.fathomnet.org"
_SUBGENUS = re.compile(r"\s*\([A-Z][a-z]+\)\s*")


def strip_subgenus(name: str) -> str:
    return _SUBGENUS.sub(" ", name).strip()


def box_rows(image: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    uuid = str(image.get("uuid") or image.get("id"))
    for i, box in enumerate(image.get("boundingBoxes") or []):
        concept = clean(box.get("concept"))
        box_id = str(box.get("uuid") or f"{uuid}-{i}")
        try:
            crop = [int(box["x"]), int(box["y"]), int(box["width"]), int(box["height"])]
            drop = None if crop[2] > 0 and crop[3] > 0 else "empty_box"
        except (KeyError, TypeError, ValueError):
            crop, drop = None, "malformed_box"
        if not image.get("url"):
            drop = "no_media_url"
        rows.append(
            {
                "source": "fathomnet",
                "source_id": box_id,
                "occurrence_id": uuid,
                "record_id": record_id("fathomnet", box_id, 0),
                "media_index": i,
                "media_url": image.get("url"),
                "license": "CC-BY-NC-ND-4.0",
                "license_verbatim": "CC BY-NC-ND 4.0",
                "rights_holder": image.get("contributorsEmail") or "MBARI / FathomNet",
                "img_type": "other",
                "verbatim_name": strip_subgenus(concept) if concept else None,
                "crop_box": crop,
                "drop_reason": drop,
                "payload": {"image": {k: v for k, v in image.items() if k != "boundingBoxes"}, "box": box},
            }
        )
    return rows


def pages(client: PoliteClient, cfg: IngestConfig, checkpoint: dict[str, Any]) -> Iterator[Page]:
    base = (cfg.api_url or DEFAULT_API).rstrip("/")
    page = int(checkpoint.get("page", 0))
    size = min(cfg.page_size, 1000)
    seen = 0
    while True:
        body = client.get_json(f"{base}/api/images/list/all", {"page": page, "size": size})
        content = body.get("content") if isinstance(body, dict) else body  # bare arrays occur too
        if not isinstance(content, list):
            raise FetchError("bad_payload", f"FathomNet page {page} has no content list")
        rows = [r for image in content if isinstance(image, dict) for r in box_rows(image)]
        seen += len(content)
        page += 1
        end = not content or (cfg.limit is not None and seen >= cfg.limit)
        yield Page(rows, {"page": page}, complete=end)
        if end:
            return
