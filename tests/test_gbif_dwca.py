"""GBIF Darwin Core Archive downloads, read set-wise: same rows and ids as the search API, every bad line kept."""

import zipfile

import pytest

from etl.ingest import stage as ingest_stage
from etl.ingest.sources import IngestConfig, gbif_dwca
from etl.ingest.sources import gbif as gbif_mod
from etl.ingest.stage import run_ingest
from tests.httpd import LoopbackServer

OCC_COLS = ["gbifID", "datasetKey", "basisOfRecord", "scientificName", "taxonRank", "kingdom", "phylum", "class",
            "order", "family", "genus", "species", "eventDate", "license", "rightsHolder", "publisher",
            "institutionCode", "eventRemarks"]  # fmt: skip
MM_COLS = ["gbifID", "type", "format", "identifier", "references", "creator", "license", "rightsHolder"]

# (occurrence fields, [media fields, ...]): the shapes real GBIF archives hold, one per occurrence.
CASES = [
    ({"basisOfRecord": "HUMAN_OBSERVATION", "publisher": "iNaturalist.org", "license": "CC_BY_NC_4_0"},
     [{"type": "StillImage", "format": "image/jpeg", "identifier": "https://a.org/1.jpg",
       "license": "http://creativecommons.org/licenses/by/4.0/legalcode"},
      {"type": "StillImage", "format": "image/jpeg", "identifier": "https://a.org/2.jpg"}]),
    ({"basisOfRecord": "MATERIAL_CITATION"}, [{"type": "StillImage", "identifier": "https://a.org/3.jpg"}]),
    ({"basisOfRecord": "PRESERVED_SPECIMEN", "license": "CC0_1_0"}, []),
    ({"basisOfRecord": "PRESERVED_SPECIMEN"},
     [{"type": "StillImage", "format": "application/ld+json", "identifier": "https://iiif.org/manifest"},
      {"type": "StillImage", "format": "dzi", "identifier": "https://a.org/tiles.dzi"},
      {"type": "Sound", "format": "audio/mpeg", "identifier": "https://a.org/s.mp3"},
      {"type": "", "format": "text/html", "identifier": "https://a.org/page"},
      {"type": "StillImage", "identifier": "ftp://a.org/5.jpg"},
      {"type": "StillImage", "identifier": "  "}]),
    ({"basisOfRecord": "MACHINE_OBSERVATION", "eventRemarks": "Camera trap, trigger sensitivity high",
      "license": "free text licence"},
     [{"type": "StillImage", "format": "image/jpeg", "identifier": "https://ct.org/9.jpg"}]),
]  # fmt: skip


def _lineage(i: int) -> dict:
    return {"scientificName": "Puma concolor (Linnaeus, 1771)", "taxonRank": "SPECIES", "kingdom": "Animalia",
            "phylum": "Chordata", "class": "Mammalia", "order": "Carnivora", "family": "Felidae", "genus": "Puma",
            "species": "Puma concolor", "datasetKey": f"ds-{i % 2}", "eventDate": "2024-05-01"}  # fmt: skip


def write_dwca(path, cases=CASES, extra_occ_lines: list[bytes] = (), drop_columns=()) -> None:
    occ_cols = [c for c in OCC_COLS if c not in drop_columns]
    occ = ["\t".join(occ_cols).encode()]
    mm = ["\t".join(MM_COLS).encode()]
    for i, (fields, media) in enumerate(cases):
        row = {"gbifID": str(1000 + i), **_lineage(i), **fields}
        occ.append("\t".join(row.get(c, "") for c in occ_cols).encode())
        for m in media:
            mm.append("\t".join({"gbifID": str(1000 + i), **m}.get(c, "") for c in MM_COLS).encode())
    occ += list(extra_occ_lines)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("occurrence.txt", b"\n".join(occ) + b"\n")
        zf.writestr("multimedia.txt", b"\n".join(mm) + b"\n")
        zf.writestr("meta.xml", b"<archive/>")


def _api_rows() -> dict[str, dict]:
    """What the search-API connector makes of the same occurrences (its JSON shape)."""
    out = {}
    for i, (fields, media) in enumerate(CASES):
        occ = {"gbifID": str(1000 + i), **_lineage(i), **fields}
        occ["media"] = [{k: v for k, v in m.items() if k != "gbifID" and v != ""} for m in media]
        for row in gbif_mod.occurrence_rows(occ):
            out[row["record_id"]] = row
    return out


def test_archive_rows_equal_the_search_api_rows(catalog, tmp_path):
    write_dwca(tmp_path / "dl.zip", extra_occ_lines=[b"2000\tds\tHUMAN_OBSERVATION\tBad \xff\xfe name"])
    summary = run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "dl.zip")))
    with catalog.connect() as con:
        got = {
            r[0]: r[1:]
            for r in con.execute(
                """SELECT record_id, drop_reason, license, img_type, media_url, verbatim_name, verbatim_class
                   FROM raw_records WHERE source = 'gbif'"""
            ).fetchall()
        }
        bad = con.execute(
            "SELECT source_id, payload FROM raw_records WHERE drop_reason = 'malformed_line'"
        ).fetchall()
    api = _api_rows()
    assert set(api) <= set(got)  # the same record ids as the API path for the same occurrences and URLs
    for rid, row in api.items():
        want = (row["drop_reason"], row["license"], row["img_type"], row.get("media_url"), row["verbatim_name"],
                row["verbatim_class"])  # fmt: skip
        assert got[rid] == want, (rid, got[rid], want)
    assert len(bad) == 1 and bad[0][0] == "occurrence.txt:7" and "INVALID" in bad[0][1].upper()
    assert summary["n_out"] == len(api) + 1
    again = run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "dl.zip")))
    assert again["n_in"] == 0 and again["n_out"] == 0  # the archive's checksum is the high-water mark


def test_archive_missing_a_required_column_is_a_clear_error(catalog, tmp_path):
    write_dwca(tmp_path / "dl.zip", drop_columns=("gbifID",))
    with pytest.raises(ValueError, match=r"missing column.*gbifID"):
        run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "dl.zip")))


def test_archive_missing_optional_columns_still_ingests(catalog, tmp_path):
    write_dwca(tmp_path / "dl.zip", drop_columns=("publisher", "eventRemarks", "class"))
    run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "dl.zip")))
    with catalog.connect() as con:
        n, classes = con.execute("SELECT count(*), count(verbatim_class) FROM raw_records").fetchall()[0]
    assert n == len(_api_rows()) and classes == 0


def test_killed_archive_ingest_resumes_without_loss_or_duplicates(catalog, tmp_path, monkeypatch):
    cases = [({"basisOfRecord": "HUMAN_OBSERVATION"},
              [{"type": "StillImage", "identifier": f"https://a.org/{i}-{j}.jpg"} for j in range(2)])
             for i in range(50)]  # fmt: skip
    write_dwca(tmp_path / "dl.zip", cases=cases)
    monkeypatch.setattr(gbif_dwca, "BATCH_ROWS", 16)
    monkeypatch.setattr(ingest_stage, "PART_ROWS", 1)  # a part (and a checkpoint) per batch, to resume from
    real = gbif_dwca.pages

    def dies_after_three(*args, **kwargs):
        for n, page in enumerate(real(*args, **kwargs)):
            if n == 3:
                raise KeyboardInterrupt("killed")
            yield page

    monkeypatch.setattr(gbif_dwca, "pages", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "dl.zip")))
    monkeypatch.setattr(gbif_dwca, "pages", real)
    resumed = run_ingest(catalog, IngestConfig("gbif", path=str(tmp_path / "dl.zip")))
    assert resumed["n_out"] == 100 - 3 * 16  # the 3 committed batches are not written again
    with catalog.connect() as con:
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT record_id) FROM raw_records_history"
        ).fetchall()[0]
    assert n == distinct == 100


class _FakeGbif(LoopbackServer):
    """The occurrence-download API: POST a request (basic auth), poll its status, fetch the zip."""

    def __init__(self, archive: bytes) -> None:
        import base64
        import json
        from http.server import BaseHTTPRequestHandler

        fake = self
        self.requests: list[dict] = []
        self.polls = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, ctype="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                auth = self.headers.get("Authorization", "")
                if auth != "Basic " + base64.b64encode(b"alice:secret").decode():
                    return self._send(401, b"unauthorised", "text/plain")
                fake.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self._send(201, b"0001234-250101120000000", "text/plain")

            def do_GET(self):
                if self.path.startswith("/v1/occurrence/download/"):
                    fake.polls += 1
                    status = "RUNNING" if fake.polls < 3 else "SUCCEEDED"
                    link = f"{fake.base}/dl/0001234.zip" if status == "SUCCEEDED" else None
                    return self._send(200, json.dumps({"status": status, "downloadLink": link}).encode())
                if self.path == "/dl/0001234.zip":
                    return self._send(200, archive, "application/zip")
                self._send(404, b"", "text/plain")

        super().__init__(Handler)


def test_asynchronous_download_is_requested_polled_fetched_and_read(catalog, tmp_path, monkeypatch):
    write_dwca(tmp_path / "dl.zip")
    fake = _FakeGbif((tmp_path / "dl.zip").read_bytes())
    cfg = IngestConfig("gbif", api_url=fake.base, allow_private_hosts=True, params={"taxonKey": "212", "country": "NO,SE"}, download=True,
                       download_poll_seconds=0.05)  # fmt: skip
    try:
        with pytest.raises(Exception, match="credentials are sent only to"):
            run_ingest(catalog, cfg)  # a base the operator did not list: the account is not sent there
        monkeypatch.setenv("TOL_GBIF_CREDENTIAL_URLS", fake.base)
        with pytest.raises(Exception, match="GBIF_USER"):
            run_ingest(catalog, cfg)  # no credentials: a clear error before any request
        monkeypatch.setenv("GBIF_USER", "alice")
        monkeypatch.setenv("GBIF_PWD", "secret")
        monkeypatch.setenv("GBIF_EMAIL", "alice@example.org")
        summary = run_ingest(catalog, cfg)
    finally:
        fake.close()
    assert fake.polls == 3 and len(fake.requests) == 1
    preds = {p["key"]: p for p in fake.requests[0]["predicate"]["predicates"]}
    assert preds["TAXON_KEY"]["value"] == "212" and preds["COUNTRY"] == {"type": "in", "key": "COUNTRY",
                                                                        "values": ["NO", "SE"]}  # fmt: skip
    assert preds["MEDIA_TYPE"]["value"] == "StillImage" and fake.requests[0]["format"] == "DWCA"
    assert summary["n_out"] == len(_api_rows())


def test_paths_with_apostrophes(catalog, tmp_path):
    import shutil

    from taxonomy.backbone import load_backbone

    folder = tmp_path / "O'Brien's downloads"
    folder.mkdir()
    write_dwca(tmp_path / "dl.zip")
    with zipfile.ZipFile(tmp_path / "dl.zip") as zf:
        zf.extractall(folder)  # read in place: the file paths themselves hold the apostrophes
    assert run_ingest(catalog, IngestConfig("gbif", path=str(folder)))["n_out"] == len(_api_rows())
    backbone = folder / "back'bone"
    shutil.copytree(__import__("pathlib").Path(__file__).parent / "data" / "hard_backbone", backbone)
    assert load_backbone(catalog, backbone)


def test_a_checklist_key_rides_on_the_taxon_predicates():
    """GBIF reads taxon keys against a checklist given on each taxon predicate (gbif/gbif-api: EqualsPredicate
    and InPredicate take `checklistKey`), so the recipe's checklistKey is never a predicate of its own."""
    col = "7ddf754f-d193-4cc9-b351-99906754a03b"  # Catalogue of Life, as in rgbif's recorded v2 matcher calls
    pred = gbif_mod.download_predicate({"taxonKey": "V2,Q2M4", "country": "NO", "checklistKey": col})
    by_key = {p["key"]: p for p in pred["predicates"]}
    assert set(by_key) == {"TAXON_KEY", "COUNTRY"}
    assert by_key["TAXON_KEY"] == {
        "type": "in",
        "key": "TAXON_KEY",
        "values": ["V2", "Q2M4"],
        "checklistKey": col,
    }
    assert "checklistKey" not in by_key["COUNTRY"]
