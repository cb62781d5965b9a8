"""An incremental resolve answers only what changed and stands for the same answers as a full one."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from etl.ingest.sources import IngestConfig
from flows import stages


def _as_of(catalog, run_id: str) -> dict[str, tuple]:
    with catalog.connect(read_only=True) as con:
        rows = con.execute(
            "SELECT record_id, taxon_id, match_type FROM resolutions_as_of(?)", [run_id]
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_a_rerun_carries_every_answer_and_a_change_is_answered_alone(catalog, server, world):
    stages.ingest(catalog, IngestConfig("gbif", api_url=server.base_url, allow_private_hosts=True))
    stages.load_backbone(catalog, world.backbone)
    first = stages.resolve(catalog)
    assert first["details"]["base_run"] is None and first["n_in"] > 20
    again = stages.resolve(catalog)
    assert again["details"]["base_run"] == first["run_id"]
    assert (again["details"]["resolved_now"], again["details"]["rows_written"]) == (0, 0)
    assert again["details"]["carried"] == first["n_in"]
    assert (again["n_in"], again["n_out"], again["dropped"]) == (
        first["n_in"],
        first["n_out"],
        first["dropped"],
    )
    assert _as_of(catalog, again["run_id"]) == _as_of(catalog, first["run_id"])

    # One record's payload changes (another species' name); another is dropped at a re-ingest.
    raw = catalog.query_arrow(
        "SELECT * FROM raw_records WHERE drop_reason IS NULL AND verbatim_name IS NOT NULL ORDER BY record_id"
    )
    changed, dropped = raw.slice(0, 1), raw.slice(1, 1)
    answered = _as_of(catalog, first["run_id"])
    mine = answered[changed["record_id"][0].as_py()][0]
    other = next(
        i for i, rid in enumerate(raw["record_id"].to_pylist()) if answered[rid][0] not in (mine, None)
    )
    for name in ("verbatim_name", "verbatim_species"):
        changed = changed.set_column(changed.schema.get_field_index(name), name, raw[name].slice(other, 1))
    dropped = dropped.set_column(
        dropped.schema.get_field_index("drop_reason"), "drop_reason", pa.array(["no_media"])
    )
    edited = pa.concat_tables([changed, dropped])
    for name, value in (("payload_hash", pc.binary_join_element_wise(edited["payload_hash"], "x", "")),
                        ("run_id", pa.array(["ingest-edit"] * 2)),
                        ("ingested_at", pa.array([datetime.now(UTC)] * 2, edited.schema.field("ingested_at").type))):  # fmt: skip
        edited = edited.set_column(edited.schema.get_field_index(name), name, value)
    catalog.write_part(
        "raw_records_history", edited, partition={"source": "gbif", "ingest": "edit"}, part="p"
    )

    third = stages.resolve(catalog)
    assert third["details"]["base_run"] == again["run_id"]
    assert third["details"]["chain"] == [third["run_id"], again["run_id"], first["run_id"]]
    assert (third["details"]["resolved_now"], third["details"]["rows_written"]) == (1, 2)
    full = stages.resolve(catalog, full=True)
    assert full["details"]["base_run"] is None and full["details"]["resolved_now"] == full["n_in"]
    assert (third["n_in"], third["n_out"], third["dropped"]) == (
        full["n_in"],
        full["n_out"],
        full["dropped"],
    )
    incremental, fresh = _as_of(catalog, third["run_id"]), _as_of(catalog, full["run_id"])
    dropped_id = dropped["record_id"][0].as_py()
    assert incremental.pop(dropped_id) == (None, "none") and dropped_id not in fresh
    assert incremental == fresh
    changed_id = changed["record_id"][0].as_py()
    assert fresh[changed_id] != _as_of(catalog, first["run_id"])[changed_id]
