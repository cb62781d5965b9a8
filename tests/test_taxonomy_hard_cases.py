"""Hard real-world names against a small backbone of real taxa (tests/data/hard_backbone, GBIF DwC-A shapes).

Each row: the input (name and whatever higher ranks the record carries), the answer a taxonomist would give
(accepted name and its rank, or None), the match type, and why. Rank holes are the GBIF backbone's: ray-finned
fishes have no class, turtles have class Testudines and no order (as in the GBIF backbone), and they must stay holes.
"""

from pathlib import Path

import pytest

from taxonomy.backbone import load_backbone
from taxonomy.resolve import Query, load_index, resolve_query

BACKBONE = Path(__file__).parent / "data" / "hard_backbone"

# (input name, given ranks, expected accepted name, expected rank, match type, why)
CASES = [
    # Homonyms across kingdoms
    (
        "Calopteryx splendens",
        {"kingdom": "Animalia"},
        "Calopteryx splendens",
        "species",
        "exact",
        "the damselfly; the binomial exists only in Animalia",
    ),
    (
        "Calopteryx",
        {},
        None,
        None,
        "none",
        "damselfly genus (accepted) and plant genus (synonym of Thibaudia): two kingdoms, nothing decides",
    ),
    (
        "Calopteryx",
        {"kingdom": "Plantae"},
        "Thibaudia",
        "genus",
        "synonym",
        "the plant Calopteryx A.C.Sm. is a synonym of Thibaudia",
    ),
    ("Calopteryx", {"kingdom": "Animalia"}, "Calopteryx", "genus", "exact", "the record's kingdom decides"),
    ("Morus", {}, None, None, "none", "mulberry and gannet genera share no rank at all: must not guess"),
    ("Morus", {"kingdom": "Plantae"}, "Morus", "genus", "exact", "mulberries"),
    ("Morus", {"class": "Aves"}, "Morus", "genus", "exact", "class alone decides: the gannets"),
    ("Morus", {"kingdom": "Viridiplantae"}, "Morus", "genus", "exact", "Viridiplantae is Plantae"),
    (
        "Morus bassanus",
        {},
        "Morus bassanus",
        "species",
        "exact",
        "the binomial is unique although the genus is not",
    ),
    ("Pieris rapae", {}, "Pieris rapae", "species", "exact", "cabbage white, unique binomial"),
    ("Pieris japonica", {}, "Pieris japonica", "species", "exact", "the plant, unique binomial"),
    ("Pieris", {"family": "Pieridae"}, "Pieris", "genus", "exact", "family decides"),
    ("Pieris", {"kingdom": "Metazoa"}, "Pieris", "genus", "exact", "Metazoa is Animalia"),
    ("Prunella vulgaris", {}, "Prunella vulgaris", "species", "exact", "self-heal (plant)"),
    ("Prunella modularis", {}, "Prunella modularis", "species", "exact", "dunnock (bird)"),
    (
        "Laelia rosea",
        {"kingdom": "Plantae"},
        "Laelia rosea",
        "species",
        "exact",
        "species-level homonym: the orchid",
    ),
    ("Laelia rosea", {"kingdom": "Animalia"}, "Laelia rosea", "species", "exact", "the tussock moth"),
    ("Laelia rosea", {}, None, None, "none", "orchid or moth: no rank in common, must not guess"),
    (
        "Micropterus",
        {},
        "Animalia",
        "kingdom",
        "higherrank",
        "two animal genera: the lowest rank both agree on is the kingdom (what GBIF answers too)",
    ),
    ("Micropterus", {"class": ""}, "Animalia", "kingdom", "higherrank", "an empty rank is no rank"),
    # Rank holes
    (
        "Micropterus salmoides",
        {},
        "Micropterus salmoides",
        "species",
        "exact",
        "largemouth bass; class stays null",
    ),
    ("Carassius auratus", {}, "Carassius auratus", "species", "exact", "goldfish: ray-finned, no class"),
    ("Salmo trutta", {}, "Salmo trutta", "species", "exact", "brown trout, no class"),
    ("Chelonia mydas", {}, "Chelonia mydas", "species", "exact", "green turtle: class Testudines, no order"),
    (
        "Testudo hermanni Gmelin, 1789",
        {},
        "Testudo hermanni",
        "species",
        "exact",
        "authorship with year removed",
    ),
    # Synonyms (real GBIF backbone examples)
    ("Helianthus canus", {}, "Helianthus petiolaris", "species", "synonym", "GBIF's own synonym example"),
    (
        "Ballota acetabulosa",
        {},
        "Pseudodictamnus acetabulosus",
        "species",
        "synonym",
        "moved to Pseudodictamnus",
    ),
    ("Delphinium bolosii", {}, "Delphinium fissum", "species", "synonym", "sunk into D. fissum"),
    ("Felis concolor Linnaeus, 1771", {}, "Puma concolor", "species", "synonym", "basionym of the cougar"),
    # Misspellings
    ("Puma concolour", {}, "Puma concolor", "species", "fuzzy", "one inserted letter in the epithet"),
    (
        "Calopteryx splendes",
        {"kingdom": "Animalia"},
        "Calopteryx splendens",
        "species",
        "fuzzy",
        "one dropped letter",
    ),
    (
        "Pseudodictamnus acetabulosa",
        {},
        "Pseudodictamnus acetabulosus",
        "species",
        "fuzzy",
        "epithet gender after the genus change: two edits",
    ),
    (
        "Carasius auratus",
        {"family": "Cyprinidae"},
        "Carassius auratus",
        "species",
        "fuzzy",
        "misspelt genus, found within the record's family",
    ),
    (
        "Carasius auratus",
        {},
        "Carassius auratus",
        "species",
        "fuzzy",
        "misspelt genus without a family: the one near genus with that epithet (GBIF answers FUZZY too)",
    ),
    (
        "Carasius nonexistens",
        {},
        None,
        None,
        "none",
        "misspelt genus, and no near genus has the epithet: nothing to correct it to",
    ),
    (
        "Puma c\u043encolor",
        {},
        "Puma",
        "genus",
        "higherrank",
        "a Cyrillic letter in the epithet: the genus, as a higher rank with the reason",
    ),
    (
        "Puma con\u200bcolor",
        {},
        "Puma concolor",
        "species",
        "exact",
        "a zero-width space removed, and said so",
    ),
    ("Puma 'concolor'", {}, "Puma concolor", "species", "exact", "stray quotes removed, and said so"),
    ("Puma con", {}, "Puma", "genus", "higherrank", "a 3-letter epithet is too short to correct: genus only"),
    # Genus-only and qualifiers
    ("Quercus", {}, "Quercus", "genus", "exact", "genus-only record"),
    ("Quercus sp.", {}, "Quercus", "genus", "exact", "sp. means an undetermined species of the genus"),
    ("Carex cf. flava", {}, "Carex", "genus", "exact", "cf. is uncertain: only the genus is certain"),
    (
        "Quercus × hispanica Lam.",
        {},
        "Quercus hispanica",
        "species",
        "exact",
        "named hybrid; the backbone row has an empty canonicalName",
    ),
    ("Puma concolor couguar", {}, "Puma concolor", "species", "exact", "trinomial: matched at species"),
    # Formatting
    ("PUMA CONCOLOR", {}, "Puma concolor", "species", "exact", "all caps from a label transcription"),
    ("<i>Bufo bufo</i> (Linnaeus, 1758)", {}, "Bufo bufo", "species", "exact", "EOL-style HTML markup"),
    (
        "Bombus (Pyrobombus) hypnorum",
        {},
        "Bombus hypnorum",
        "species",
        "exact",
        "subgenus in brackets dropped",
    ),
    (
        "Cañis lupus",
        {"family": "Felidae"},
        "Felidae",
        "family",
        "higherrank",
        "non-ASCII letter normalised; not in this backbone, so the record's family",
    ),
    # Contradictions, doubtful, unusable
    (
        "Puma concolor",
        {"kingdom": "Plantae"},
        "Plantae",
        "kingdom",
        "higherrank",
        "the name exists only in Animalia: a plant record keeps a plant label (its kingdom), flagged",
    ),
    (
        "Calopteryx splendens",
        {"kingdom": "Plantae"},
        "Thibaudia",
        "genus",
        "higherrank",
        "the binomial is a damselfly; in Plantae its genus is a synonym of Thibaudia (GBIF's answer)",
    ),
    (
        "Ursus horribilis",
        {},
        "Ursus horribilis",
        "species",
        "doubtful",
        "a doubtful usage, kept and counted as such",
    ),
    (
        "Zzyzxia imaginaria",
        {"family": "Felidae"},
        "Felidae",
        "family",
        "higherrank",
        "unknown name, known family",
    ),
    ("Zzyzxia imaginaria", {}, None, None, "none", "unknown name, no ranks"),
    ("   ", {}, None, None, "none", "whitespace is no name"),
    ("BOLD:AAA1234", {}, None, None, "none", "a BIN code is not a name"),
    ("Пума конколор", {}, None, None, "none", "Cyrillic script is not a scientific name"),
    ("unknown", {"kingdom": "incertae sedis"}, None, None, "none", "a null token and a pseudo-kingdom"),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from warehouse.catalog import open_catalog

    cat = open_catalog(tmp_path_factory.mktemp("hard") / "home")
    return load_index(cat, load_backbone(cat, BACKBONE))


def _query(name: str, ranks: dict) -> Query:
    return Query(
        None,
        name,
        ranks.get("kingdom"),
        ranks.get("phylum"),
        ranks.get("class"),
        ranks.get("order"),
        ranks.get("family"),
        ranks.get("genus"),
    )


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("name", "ranks", "want", "rank", "match_type", "why"), CASES, ids=lambda v: str(v)[:30]
)
def test_hard_case(index, name, ranks, want, rank, match_type, why):
    res = resolve_query(index, _query(name, ranks))
    got = index.lineage[res.taxon_id] if res.taxon_id else None
    assert (got["scientific_name"] if got else None, got["taxon_rank"] if got else None) == (want, rank), why
    assert res.match_type == match_type, f"{why}: {res}"
    if res.taxon_id is None:
        assert res.reason, "an unresolved name always says why"


def test_rank_holes_stay_null_and_contradictions_are_flagged(index):
    goldfish = index.lineage[resolve_query(index, _query("Carassius auratus", {})).taxon_id]
    assert (goldfish["class"], goldfish["order"]) == (None, "Cypriniformes")
    turtle = index.lineage[resolve_query(index, _query("Chelonia mydas", {})).taxon_id]
    assert (turtle["class"], turtle["order"], turtle["family"]) == ("Testudines", None, "Cheloniidae")
    res = resolve_query(index, _query("Puma concolor", {"kingdom": "Plantae"}))
    assert "contradicts" in res.reason and res.confidence < 1.0


def test_common_names_english_first_then_shortest(index):
    def common(name):
        return index.lineage[resolve_query(index, _query(name, {})).taxon_id]["common_name"]

    assert common("Puma concolor") == "Puma"  # Cougar, Puma, Mountain lion (en) and León americano (es)
    assert common("Chelonia mydas") == "Green turtle"
    assert common("Salmo trutta") is None  # only a German name: none is invented


def test_common_name_fallback_is_optional_and_flagged(tmp_path):
    from warehouse.catalog import open_catalog

    cat = open_catalog(tmp_path / "home")
    version = load_backbone(cat, BACKBONE, common_name_fallback=True)
    assert version.endswith("-cnfallback")
    with cat.connect() as con:
        rows = {
            name: (common, rank, common_rank)
            for name, common, rank, common_rank in con.execute(
                """SELECT scientific_name, common_name, taxon_rank, common_name_rank FROM taxa
                   WHERE backbone_version = ?""",
                [version],
            ).fetchall()
        }
    assert rows["Puma concolor"] == ("Puma", "species", "species")  # its own name wins
    assert rows["Felis catus"] == ("Cats", "species", "family")  # borrowed from Felidae, flagged by the rank
    assert rows["Salmo trutta"][0] is None  # no English name anywhere above it


def test_backbones_in_priority_order(tmp_path):
    """A name the first backbone lacks comes from the second; one both hold comes from the first."""
    from taxonomy.resolve import resolve_names
    from warehouse.catalog import open_catalog

    second = tmp_path / "col"
    second.mkdir()
    header = (BACKBONE / "Taxon.tsv").read_text(encoding="utf-8").splitlines()[0]
    cols = header.split("\t")

    def row(**values) -> str:
        return "\t".join(values.get(c, "") for c in cols)

    lineage = {"kingdom": "Animalia", "phylum": "Chordata", "class": "Mammalia", "order": "Carnivora"}
    (second / "Taxon.tsv").write_text(
        "\n".join(
            [
                header,
                row(
                    taxonID="c1",
                    scientificName="Zzyzxia imaginaria Doe, 2001",
                    canonicalName="Zzyzxia imaginaria",
                    taxonRank="species",
                    taxonomicStatus="accepted",
                    family="Felidae",
                    genus="Zzyzxia",
                    **lineage,
                ),
                row(
                    taxonID="c2",
                    scientificName="Puma concolor",
                    canonicalName="Puma concolor",
                    taxonRank="species",
                    taxonomicStatus="accepted",
                    family="Felidae",
                    genus="Puma",
                    **lineage,
                ),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    cat = open_catalog(tmp_path / "home")
    first, col = load_backbone(cat, BACKBONE), load_backbone(cat, second)
    rows = [
        {"scientific_name": "Zzyzxia imaginaria", "family": "Felidae"},
        {"scientific_name": "Puma concolor"},
        {"scientific_name": "Nonesuch nowhere"},
    ]
    out = resolve_names(cat, rows, [first, col])
    assert (out[0]["match_type"], out[0]["backbone_version"]) == ("exact", col)
    assert "priority 2" in out[0]["reason"]
    assert (out[1]["match_type"], out[1]["backbone_version"]) == ("exact", first)
    assert (out[2]["match_type"], out[2]["backbone_version"]) == ("none", first)
    alone = resolve_names(cat, rows[:1], first)
    assert (alone[0]["match_type"], alone[0]["accepted_name"]) == ("higherrank", "Felidae")


def test_catalogue_of_life_style_checklist_loads(tmp_path):
    """CoL's DwC-A: `dwc:`-prefixed headers, no canonicalName, authorship in its own column."""
    from taxonomy.resolve import resolve_names
    from warehouse.catalog import open_catalog

    col = tmp_path / "col"
    col.mkdir()
    lines = [
        "dwc:taxonID\tdwc:scientificName\tdwc:scientificNameAuthorship\tdwc:taxonRank\tdwc:taxonomicStatus\t"
        "dwc:acceptedNameUsageID\tdwc:kingdom\tdwc:family\tdwc:genus",
        "1\tPuma\tJardine, 1834\tgenus\taccepted\t\tAnimalia\tFelidae\tPuma",
        "2\tPuma concolor (Linnaeus, 1771)\t(Linnaeus, 1771)\tspecies\taccepted\t\tAnimalia\tFelidae\tPuma",
        "3\tFelis concolor\tLinnaeus, 1771\tspecies\tsynonym\t2\tAnimalia\tFelidae\t",
        "4\tPuma yagouaroundi\t(É. Geoffroy, 1803)\tspecies\tprovisionally accepted\t\tAnimalia\tFelidae\tPuma",
    ]
    (col / "Taxon.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cat = open_catalog(tmp_path / "home")
    version = load_backbone(cat, col)
    out = resolve_names(
        cat,
        [{"scientific_name": n} for n in ("Puma concolor", "Felis concolor", "Puma yagouaroundi")],
        version,
    )
    assert [(r["match_type"], r["accepted_name"]) for r in out] == [
        ("exact", "Puma concolor"),
        ("synonym", "Puma concolor"),
        ("doubtful", "Puma yagouaroundi"),
    ]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "Taxon.tsv").write_text("id\tname\n1\tPuma\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        load_backbone(cat, tmp_path / "bad")
