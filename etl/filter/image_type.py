"""The `image_type` scorer: the paper's image-type rules over GBIF fields, read from an editable data file
(`image_types.yaml` beside this module, with its provenance), computed set-wise in DuckDB."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

RULES_FILE = Path(__file__).with_name("image_types.yaml")

_SECTIONS = {
    "provenance": None,
    "camera_trap": ("event_remarks_contain", "machine_observation_publishers"),
    "museum_specimen": ("basis_of_record",),
    "citizen_science": ("publishers", "datasets"),
}


@dataclass(frozen=True)
class ImageTypeRules:
    event_remarks_contain: tuple[str, ...]
    machine_observation_publishers: tuple[str, ...]
    basis_of_record: tuple[str, ...]
    publishers: tuple[str, ...]
    datasets: tuple[str, ...]
    provenance: str
    sha256: str  # of the file: the scorer's model_version


def load_rules(path: str | Path | None = None) -> ImageTypeRules:
    """The rules of `path` (default: the shipped file); a clear error for a missing section or a stray key."""
    path = Path(path) if path else RULES_FILE
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: image-type rules must be a mapping of {', '.join(_SECTIONS)}")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}")
    lists: dict[str, tuple[str, ...]] = {}
    for section, keys in _SECTIONS.items():
        if keys is None:
            continue
        body = data.get(section) or {}
        if not isinstance(body, dict) or set(body) - set(keys):
            raise ValueError(f"{path}: section {section} takes {', '.join(keys)}")
        for key in keys:
            values = body.get(key) or []
            if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
                raise ValueError(f"{path}: {section}.{key} must be a list of non-empty strings")
            lists[key] = tuple(v.strip() for v in values)
    if not str(data.get("provenance") or "").strip():
        raise ValueError(f"{path}: say where the lists come from under `provenance`")
    return ImageTypeRules(
        **lists,
        provenance=" ".join(str(data["provenance"]).split()),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


def _str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _any_contains(column: str, needles: tuple[str, ...]) -> str:
    if not needles:
        return "false"
    return "(" + " OR ".join(f"contains(lower({column}), {_str(n.lower())})" for n in needles) + ")"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(_str(v) for v in values)})" if values else "false"


def image_type_sql(rules: ImageTypeRules) -> str:
    """The type of a `raw_records r` row, as a SQL expression. GBIF's eventRemarks is read from the payload
    (the API's occurrence object, or a DwC-A row's `occurrence`)."""
    remarks = (
        "coalesce(json_extract_string(r.payload, '$.eventRemarks'),"
        " json_extract_string(r.payload, '$.occurrence.eventRemarks'), '')"
    )
    publisher = "coalesce(r.publisher, '')"
    expr = f"""CASE
        WHEN r.source <> 'gbif' THEN coalesce(r.img_type, 'other')
        WHEN {_any_contains(remarks, rules.event_remarks_contain)}
          OR (r.basis_of_record = 'MACHINE_OBSERVATION'
              AND {_any_contains(publisher, rules.machine_observation_publishers)}) THEN 'camera_trap'
        WHEN {_in("r.basis_of_record", rules.basis_of_record)} THEN 'museum_specimen'
        WHEN {_any_contains(publisher, rules.publishers)} OR {_in("r.dataset_key", rules.datasets)}
          THEN 'citizen_science'
        ELSE 'other' END"""
    # The labels are the shared vocabulary, in its order: camera_trap, citizen_science, museum_specimen.
    return expr
