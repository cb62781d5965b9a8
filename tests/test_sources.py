import json
import time

import pytest

from etl.http import HttpConfig, HttpError, PoliteClient
from etl.ingest import stage as ingest_mod
from etl.ingest.sources import IngestConfig, get_connector
from etl.ingest.sources.bioscan import is_placeholder_species
from etl.ingest.sources.fathomnet import box_rows, strip_subgenus
from etl.ingest.sources.gbif import occurrence_rows
from etl.ingest.stage import run_ingest
from tests.httpd import ScriptedServer

FAST = HttpConfig(backoff_base=0.01, max_retries=3, allow_private_hosts=True)  # loopback servers


def _count(catalog, source):
    with catalog.connect() as con:
        return con.execute(
            "SELECT count(*), count(DISTINCT record_id) FROM raw_records_history WHERE source = ?", [source]
        ).fetchall()[0]


def test_gbif_pages_through_search_api_and_reingest_adds_nothing(catalog, server, world):
    first = run_ingest(
        catalog,
        IngestConfig("gbif", api_url=server.base_url, allow_private_hosts=True, page_size=100),
        PoliteClient(FAST),
    )
    pages = [r for r in server.requests if r.startswith("/v1/occurrence/search")]
    assert len(pages) >= 3 and all("limit=100" in p for p in pages)
    assert first["n_out"] > 0 and first["dropped"]["no_media_url"] == world.planted["no_media_url"]
    assert first["dropped"]["iiif_manifest_unresolved"] == world.planted["iiif"]
    again = run_ingest(
        catalog, IngestConfig("gbif", api_url=server.base_url, allow_private_hosts=True, page_size=100)
    )
    assert again["n_out"] == 0 and again["unchanged"] == first["n_in"]
    n, distinct = _count(catalog, "gbif")
    assert n == distinct == first["n_out"]


def test_gbif_503_html_page_is_retried(catalog, world):
    from sample_world import serve_sample_world

    with serve_sample_world(world.root, faults={"/v1/occurrence/search": [503, 429]}) as srv:
        client = PoliteClient(FAST)
        out = run_ingest(
            catalog, IngestConfig("gbif", api_url=srv.base_url, allow_private_hosts=True), client
        )
    assert out["errors"] == {"http_retries": 2} and out["n_out"] > 0


def test_html_where_json_expected_is_a_clear_error(server):
    client = PoliteClient(HttpConfig(backoff_base=0.01, max_retries=1, allow_private_hosts=True))
    with pytest.raises(HttpError) as err:
        client.get_json(f"{server.base_url}/bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv")
    assert err.value.kind == "bad_json" and "expected JSON" in str(err.value)
    with pytest.raises(HttpError) as err:
        client.get_json(f"{server.base_url}/no/such/page.json")
    assert err.value.kind == "http_404"


def _dies_after(pages: int):
    """The GBIF connector, killed (as by Ctrl-C) once it has yielded `pages` pages."""
    real = get_connector("gbif")

    def connector(client, cfg, checkpoint):
        for i, page in enumerate(real(client, cfg, checkpoint), 1):
            yield page
            if i == pages:
                raise KeyboardInterrupt("killed")

    return lambda name: connector


def test_killed_ingest_resumes_without_loss_or_duplicates(catalog, server, monkeypatch):
    monkeypatch.setattr(ingest_mod, "get_connector", _dies_after(2))
    monkeypatch.setattr(ingest_mod, "PART_ROWS", 1)  # a part (and a checkpoint) per page, to resume from
    cfg = IngestConfig("gbif", api_url=server.base_url, allow_private_hosts=True, page_size=50)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(catalog, cfg)
    partial = _count(catalog, "gbif")[0]
    monkeypatch.setattr(ingest_mod, "get_connector", get_connector)
    resumed = run_ingest(catalog, cfg)
    offsets = [r for r in server.requests if "offset=0&" in r or r.endswith("offset=0")]
    assert len(offsets) == 1, "the resumed run must not restart from offset 0"
    n, distinct = _count(catalog, "gbif")
    assert n == distinct == partial + resumed["n_out"]
    body = json.loads((server.root / "api_data" / "gbif_occurrences.json").read_text())
    assert resumed["unchanged"] == 0 and n == sum(max(1, len(o["media"])) for o in body if o.get("media"))


def _stored(catalog) -> list[tuple]:
    with catalog.connect() as con:
        return con.execute("SELECT record_id, payload_hash FROM raw_records_history ORDER BY 1").fetchall()


def test_ingest_writes_parts_of_bounded_size_and_a_kill_before_one_loses_nothing(
    tmp_path, server, monkeypatch
):
    from warehouse.catalog import open_catalog

    cfg = IngestConfig("gbif", api_url=server.base_url, allow_private_hosts=True, page_size=50)
    stored, parts = {}, {}
    for name, bound in (("per-page", 1), ("bounded", ingest_mod.PART_ROWS)):
        monkeypatch.setattr(ingest_mod, "PART_ROWS", bound)
        cat = open_catalog(tmp_path / name)
        run_ingest(cat, cfg)
        stored[name], parts[name] = _stored(cat), len(list((cat.lake / "raw").rglob("*.parquet")))
    assert parts["per-page"] > 3 and parts["bounded"] == 1 and stored["bounded"] == stored["per-page"]

    cat = open_catalog(tmp_path / "killed")
    monkeypatch.setattr(ingest_mod, "get_connector", _dies_after(3))
    with pytest.raises(KeyboardInterrupt):
        run_ingest(cat, cfg)
    assert _stored(cat) == []  # the pages read were not written: their checkpoint was not committed either
    monkeypatch.setattr(ingest_mod, "get_connector", get_connector)
    run_ingest(cat, cfg)
    assert _stored(cat) == stored["per-page"]


def test_gbif_record_mess_is_recorded_not_dropped():
    occ = {
        "gbifID": "1",
        "basisOfRecord": "HUMAN_OBSERVATION",
        "license": "http://creativecommons.org/licenses/by/4.0/legalcode",
        "media": [
            None,
            {"type": "Sound", "identifier": "http://x/a.mp3"},
            {"identifier": "file:///etc/passwd"},
            {"format": "dzi", "identifier": "http://x/a.dzi"},
            {"identifier": "http://x/a.jpg", "license": "Usage Conditions Apply"},
        ],
    }
    rows = occurrence_rows(occ)
    assert [r["drop_reason"] for r in rows] == [
        "no_media_url",
        "not_still_image",
        "unsupported_url_scheme",
        "dzi_unsupported",
        None,
    ]
    assert rows[-1]["license"] == "unknown" and rows[-1]["license_verbatim"] == "Usage Conditions Apply"
    assert occurrence_rows({"gbifID": "2", "media": None})[0]["drop_reason"] == "no_media"
    assert (
        occurrence_rows(
            {"gbifID": "3", "basisOfRecord": "MATERIAL_CITATION", "media": [{"identifier": "http://x/b.jpg"}]}
        )[0]["drop_reason"]
        == "material_citation"
    )


def test_eol_manifest_header_only_in_first_file(catalog, server, world):
    out = run_ingest(catalog, IngestConfig("eol", api_url=server.base_url, allow_private_hosts=True))
    assert out["n_out"] == world.planted["eol_media"]  # no header row from file 2 became a record
    with catalog.connect() as con:
        ids = [r[0] for r in con.execute("SELECT source_id FROM raw_records WHERE source = 'eol'").fetchall()]
        names = [
            r[0] for r in con.execute("SELECT verbatim_name FROM raw_records WHERE source = 'eol'").fetchall()
        ]
    assert all("_" in i and i.split("_")[0].isdigit() for i in ids)
    assert any(n.startswith("<i>") for n in names)  # HTML is kept verbatim; the resolver strips it


def test_bioscan_placeholders_and_image_tree(catalog, server):
    run_ingest(catalog, IngestConfig("bioscan", api_url=server.base_url, allow_private_hosts=True))
    with catalog.connect() as con:
        rows = con.execute("""SELECT media_url, verbatim_species, verbatim_kingdom, license, payload
                              FROM raw_records WHERE source = 'bioscan'""").fetchall()
    assert {r[2] for r in rows} == {"Animalia"} and {r[3] for r in rows} == {"CC-BY-3.0"}
    placeholders = [r for r in rows if "Malaise" in json.loads(r[4])["species"]]
    assert placeholders and all(r[1] is None for r in placeholders)
    assert all("/cropped_256/" in r[0] for r in rows)
    assert any("/pretrain/" in r[0] for r in rows) and any("/test/" in r[0] for r in rows)


@pytest.mark.parametrize(
    ("name", "placeholder"),
    [
        ("Gnamptogenys sulcata", False),
        ("Malaise4021", True),
        ("Aus sp.", True),
        ("aus bus", True),
        ("Aus_bus cus", True),
        ("Aus cf. bus", True),
        ("BOLD:AAA1234", True),
        ("", False),
    ],
)
def test_bioscan_placeholder_rule(name, placeholder):
    assert is_placeholder_species(name) is placeholder


def test_fathomnet_one_row_per_box_with_crop(catalog, server, world):
    out = run_ingest(
        catalog, IngestConfig("fathomnet", api_url=server.base_url, allow_private_hosts=True, page_size=4)
    )
    assert out["n_out"] == world.planted["fathomnet_boxes"]
    assert strip_subgenus("Abraliopsis (Boreabraliopsis) felis") == "Abraliopsis felis"
    rows = box_rows(
        {
            "uuid": "u",
            "url": "http://x/i.png",
            "boundingBoxes": [
                {"uuid": "b1", "concept": "Aus", "x": 1, "y": 2, "width": 3, "height": 4},
                {"uuid": "b2", "concept": "Aus", "x": "?", "y": 2, "width": 3, "height": 4},
            ],
        }
    )
    assert rows[0]["crop_box"] == [1, 2, 3, 4] and rows[1]["drop_reason"] == "malformed_box"


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown source 'inat'"):
        get_connector("inat")


def test_fathomnet_coco_export_non_organisms_and_boxes_outside(catalog, tmp_path):
    import json as json_mod

    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "coco_url": "https://fathomnet.org/a.png", "width": 1920, "height": 1080},
            {"id": 2, "file_name": "b.png", "url": "https://fathomnet.org/b.png", "width": 640, "height": 480},
        ],
        "categories": [
            {"id": 10, "name": "Sebastes (Sebastomus) rosaceus", "supercategory": "Animalia"},
            {"id": 11, "name": "trash", "supercategory": "Trash"},
            {"id": 12, "name": "Rock", "supercategory": "Geology"},
        ],
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 10, "bbox": [10.4, 20.6, 100.0, 50.0]},
            {"id": 101, "image_id": 1, "category_id": 11, "bbox": [5, 5, 10, 10]},
            {"id": 102, "image_id": 2, "category_id": 12, "bbox": [5, 5, 10, 10]},
            {"id": 103, "image_id": 2, "category_id": 10, "bbox": [700, 10, 50, 50]},
            {"id": 104, "image_id": 2, "category_id": 10, "bbox": "oops"},
        ],
    }  # fmt: skip
    path = tmp_path / "export.json"
    path.write_text(json_mod.dumps(coco))
    run_ingest(catalog, IngestConfig("fathomnet", path=str(path)))
    with catalog.connect() as con:
        rows = {
            r[0]: r[1:]
            for r in con.execute(
                """SELECT 'coco-' || (payload->>'$.box.annotation.id'), verbatim_name, crop_box, drop_reason,
                          media_url FROM raw_records"""
            ).fetchall()
        }
    assert rows["coco-100"] == ("Sebastes rosaceus", [10, 21, 100, 50], None, "https://fathomnet.org/a.png")
    assert rows["coco-101"][2] == rows["coco-102"][2] == "not_an_organism"
    assert rows["coco-103"][2] == "box_outside_image" and rows["coco-104"][2] == "malformed_box"
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(Exception, match="not a COCO export"):
        run_ingest(catalog, IngestConfig("fathomnet", path=str(tmp_path / "bad.json")))


def test_fathomnet_bare_array_pages():
    from etl.ingest.sources.fathomnet import pages

    class Client:
        def __init__(self):
            self.pages = [[{"uuid": "u1", "url": "https://f.org/1.png",
                            "boundingBoxes": [{"uuid": "b1", "concept": "Aurelia aurita", "x": 1, "y": 1,
                                               "width": 5, "height": 5}]}], []]  # fmt: skip

        def get_json(self, url, params):
            return self.pages.pop(0)

    got = list(pages(Client(), IngestConfig("fathomnet"), {}))
    assert [len(p.rows) for p in got] == [1, 0] and got[-1].complete
    assert got[0].rows[0]["verbatim_name"] == "Aurelia aurita"


def test_eol_pages_api_rows_keyed_like_the_manifest():
    from etl.ingest.sources.eol import API_IMAGES_PER_PAGE, manifest_row, pages

    def obj(i, **kw):
        return {"dataObjectVersionID": 7000 + i, "dataType": "http://purl.org/dc/dcmitype/StillImage",
                "mimeType": "image/jpeg", "license": "http://creativecommons.org/licenses/by/3.0/",
                "rightsHolder": "A. Photographer", "mediaURL": f"https://commons.org/{i}.jpg",
                "eolMediaURL": f"https://content.eol.org/{i}.jpg", **kw}  # fmt: skip

    first = [obj(i) for i in range(API_IMAGES_PER_PAGE)]
    second = [
        obj(100, dataType="http://purl.org/dc/dcmitype/MovingImage"),
        obj(101, eolMediaURL=None, mediaURL=None),
        obj(102, vettedStatus="Untrusted"),
    ]

    class Client:
        def __init__(self):
            self.calls = []

        def get_json(self, url, params):
            self.calls.append((url, params["images_page"]))
            objects = first if params["images_page"] == 1 else second
            return {"taxonConcept": {"identifier": 46554351, "scientificName": "Aurelia aurita (Linnaeus, 1758)",
                                     "taxonConcepts": [{"canonicalForm": "<i>Aurelia aurita</i>",
                                                        "taxonRank": "species"}],
                                     "dataObjects": objects}}  # fmt: skip

    client = Client()
    got = list(pages(client, IngestConfig("eol", params={"page_ids": "46554351"}), {}))
    rows = got[0].rows
    assert [c[1] for c in client.calls] == [1, 2] and len(rows) == API_IMAGES_PER_PAGE + 3
    assert rows[0]["source_id"] == "7000_46554351" and rows[0]["license"] == "CC-BY-3.0"
    assert [r["drop_reason"] for r in rows[-3:]] == ["not_still_image", "no_media_url", "untrusted_media"]
    manifest = manifest_row(
        ["7000", "46554351", "https://commons.org/0.jpg", "https://content.eol.org/0.jpg", "cc-by-3.0", "A."],
        {},
    )
    assert rows[0]["record_id"] == manifest["record_id"]  # content ids change; the key does not
    assert got[0].checkpoint == {"pages_done": ["46554351"]} and got[0].complete


class _FlakyGbif(ScriptedServer):
    """A GBIF search endpoint that misbehaves in scripted ways, then answers properly."""

    def __init__(self, script: list[tuple[int, bytes, dict]]):
        self.script = list(script)
        self.times: list[float] = []
        super().__init__(self._answer)

    def _answer(self, path: str):
        self.times.append(time.monotonic())
        if self.script:
            return self.script.pop(0)
        occ = {"gbifID": "77", "scientificName": "Puma concolor", "basisOfRecord": "HUMAN_OBSERVATION",
               "media": [{"type": "StillImage", "identifier": "https://i.org/77.jpg"}]}  # fmt: skip
        return 200, json.dumps({"results": [occ], "endOfRecords": True}).encode(), {}


@pytest.mark.parametrize(
    ("script", "min_wait"),
    [
        ([(200, b'{"results": [{"gbifID": "1", "media": [', {})], 0.0),  # truncated JSON: retried
        ([(429, b"slow down", {"Retry-After": "2"})], 2.0),  # Retry-After honoured before the retry
        ([(503, b"<html><body>Service Unavailable</body></html>", {"Content-Type": "text/html"})], 0.0),
    ],
    ids=["truncated-json", "429-retry-after-2", "503-html"],
)
def test_gbif_page_faults_end_in_a_clean_retry(catalog, script, min_wait):
    from etl.http import HttpConfig, PoliteClient

    fake = _FlakyGbif(script)
    try:
        client = PoliteClient(HttpConfig(backoff_base=0.05, max_retries=3, allow_private_hosts=True), seed=0)
        out = run_ingest(
            catalog, IngestConfig("gbif", api_url=fake.base, allow_private_hosts=True), client=client
        )
    finally:
        fake.close()
    assert out["n_out"] == 1 and client.retries >= 1
    assert fake.times[1] - fake.times[0] >= min_wait


def test_gbif_page_whose_results_is_not_a_list_is_a_clear_error(catalog):
    fake = _FlakyGbif([(200, b'{"results": {"oops": 1}, "endOfRecords": false}', {})])
    try:
        with pytest.raises(Exception, match="no results list"):
            run_ingest(catalog, IngestConfig("gbif", api_url=fake.base, allow_private_hosts=True))
    finally:
        fake.close()
    with catalog.connect() as con:
        status, message = con.execute(
            "SELECT status, message FROM stage_runs WHERE stage = 'ingest'"
        ).fetchall()[0]
    assert status == "failed" and "no results list" in message  # recorded, and nothing half-written
