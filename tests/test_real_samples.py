"""Real recorded responses (../shared/samples, copied from public repositories' fixtures) through our parsers.
Skipped where that folder is absent; the other tests use our own fixtures of the same shapes."""

import base64
import json
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/samples not present")


def _body(name: str) -> dict:
    import yaml

    doc = yaml.safe_load((SAMPLES / name).read_text(encoding="utf-8"))
    interaction = (doc.get("interactions") or doc.get("http_interactions"))[0]
    body = interaction["response"]["body"]
    text = body.get("string") or base64.b64decode(body["base64_string"]).decode("utf-8")
    return json.loads(text)


def test_real_gbif_search_page():
    """3 records: genus-level, order-level and a synonym, media without a media-level licence."""
    from etl.ingest.sources.gbif import occurrence_rows

    page = _body("pygbif__test_search_recorded_by_id.yaml")
    rows = [r for occ in page["results"] for r in occurrence_rows(occ)]
    assert len(rows) == sum(len(o["media"]) for o in page["results"]) == 5
    assert all(r["drop_reason"] is None and r["media_url"].startswith("https://") for r in rows)
    assert {r["license"] for r in rows} == {"CC-BY-NC-4.0"}  # the record's licence, with `legalcode`
    assert len({r["record_id"] for r in rows}) == 5
    by_rank = {r["verbatim_rank"]: r for r in rows}
    assert by_rank["GENUS"]["verbatim_species"] is None and by_rank["GENUS"]["verbatim_genus"] == "Favolus"
    synonym = by_rank["SPECIES"]
    # The record's name is the synonym; GBIF's `species` field already holds the accepted species.
    assert (
        synonym["verbatim_name"].startswith("Pycnoporus")
        and synonym["verbatim_species"] == "Fabisporus sanguineus"
    )


def test_real_gbif_names_resolve_against_a_backbone_of_their_taxa(tmp_path):
    """The synonym record resolves through `species` (accepted) before its verbatim synonym name."""
    from taxonomy.resolve import Query, resolve_query

    page = _body("pygbif__test_search_recorded_by_id.yaml")
    occ = next(o for o in page["results"] if o["taxonomicStatus"] == "SYNONYM")
    from taxonomy.backbone import load_backbone
    from taxonomy.resolve import load_index
    from warehouse.catalog import open_catalog

    cols = ["taxonID", "scientificName", "canonicalName", "taxonRank", "taxonomicStatus", "acceptedNameUsageID",
            "kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet"]  # fmt: skip
    lineage = ["Fungi", "Basidiomycota", "Agaricomycetes", "Polyporales", "Polyporaceae"]
    rows = [
        ["1", "Fabisporus sanguineus (L.) Zmitr.", "Fabisporus sanguineus", "species", "accepted", "", *lineage,
         "Fabisporus", "sanguineus"],
        ["2", "Pycnoporus sanguineus (L.) Murrill", "Pycnoporus sanguineus", "species", "synonym", "1", *lineage,
         "", ""],
    ]  # fmt: skip
    (tmp_path / "bb").mkdir()
    (tmp_path / "bb" / "Taxon.tsv").write_text("\n".join("\t".join(r) for r in [cols, *rows]) + "\n")
    cat = open_catalog(tmp_path / "home")
    index = load_index(cat, load_backbone(cat, tmp_path / "bb"))
    q = Query(occ["species"], occ["scientificName"], occ["kingdom"], None, None, occ["order"], None, None)
    assert (resolve_query(index, q).taxon_id, resolve_query(index, q).match_type) == ("1", "exact")
    only_verbatim = Query(None, occ["scientificName"], occ["kingdom"], None, None, None, None, None)
    assert resolve_query(index, only_verbatim).match_type == "synonym"  # authorship stripped, then synonym


def test_real_eol_data_object():
    """One StillImage with mediaURL, eolMediaURL, a licence URL and agents; names carry <i> tags."""
    from etl.ingest.sources.eol import data_object_row
    from taxonomy.names import parse_name

    taxon = _body("taxize__eol_dataobjects_9a499eef.yml")["taxon"]
    obj = taxon["dataObjects"][0]
    row = data_object_row(str(taxon["identifier"]), taxon, obj, 0)
    assert row["drop_reason"] is None and row["media_url"] == obj["eolMediaURL"]
    assert row["license"] == "CC-BY-3.0" and row["rights_holder"] == obj["rightsHolder"]
    assert row["creator"] == "Andreas Augstein" and row["source_id"].endswith(f"_{taxon['identifier']}")
    assert parse_name(row["verbatim_name"]).canonical == "Aurelia aurita"
    forms = [c.get("canonicalForm") for c in _body("taxize__eol_dataobjects_9a499eef.yml")["taxonConcepts"]]
    parsed = {parse_name(f).canonical for f in forms if f}
    assert "Aurelia aurita" in parsed and None not in {
        parse_name(f).canonical for f in forms if f and "<i>" in f
    }
