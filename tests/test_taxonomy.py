"""Resolver behaviour on the sample world's backbone; each case says why the answer is right."""

import pytest

from taxonomy.backbone import load_backbone
from taxonomy.captions import captions, scientific_name, taxonomic_name
from taxonomy.names import canonical_name
from taxonomy.resolve import Query, load_index, resolve_query


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Puma concolor (Linnaeus, 1771)", "Puma concolor"),
        ("PUMA CONCOLOR", "Puma concolor"),
        ("<i>Puma concolor</i>", "Puma concolor"),
        ("Abraliopsis (Boreabraliopsis) felis", "Abraliopsis felis"),
        ("Puma cf. concolor", "Puma"),
        ("Puma sp.", "Puma"),
        ("Favolus Fr.", "Favolus"),
        ("Mentha × piperita", "Mentha piperita"),
        ("Puma concolor couguar", "Puma concolor"),
        ("  ", None),
        ("unknown", None),
        ("55-gallon drum", None),
        ("Ωmega beta", None),
    ],
)
def test_canonical_name(raw, canonical):
    assert canonical_name(raw)[0] == canonical


@pytest.fixture(scope="module")
def index(world, tmp_path_factory):
    from warehouse.catalog import open_catalog

    cat = open_catalog(tmp_path_factory.mktemp("tax") / "home")
    version = load_backbone(cat, world.backbone)
    assert load_backbone(cat, world.backbone) == version  # same files, same version, no reload
    return load_index(cat, version)


def _q(name=None, kingdom=None, species=None, **ranks):
    return Query(
        species,
        name,
        kingdom,
        ranks.get("phylum"),
        ranks.get("class_"),
        ranks.get("order"),
        ranks.get("family"),
        ranks.get("genus"),
    )


def _species(index):
    return [t for t in index.lineage.values() if t["taxon_rank"] == "species"]


def test_exact_species_with_authorship(index):
    sp = _species(index)[0]
    res = resolve_query(index, _q(f"{sp['scientific_name']} (Linnaeus, 1758)"))
    assert (res.taxon_id, res.match_type) == (sp["taxon_id"], "exact")


def test_synonym_resolves_to_accepted(index):
    syn = next(u for us in index.usages.values() for u in us if u.status == "synonym")
    res = resolve_query(index, _q(syn.canonical))
    assert res.match_type == "synonym" and res.taxon_id == syn.accepted_id


def test_homonym_genus_needs_higher_ranks(index, world):
    genus = world.planted["homonym_genus"]
    ids = {
        t["kingdom"]: t["taxon_id"]
        for t in index.lineage.values()
        if t["taxon_rank"] == "genus" and t["genus"] == genus
    }
    assert set(ids) == {"Animalia", "Plantae"}
    # Without higher ranks the resolver must not guess.
    blind = resolve_query(index, _q(genus))
    assert blind.taxon_id is None and "homonym" in blind.reason
    # Kingdom synonyms count: Metazoa is Animalia, Viridiplantae is Plantae.
    assert resolve_query(index, _q(genus, kingdom="Metazoa")).taxon_id == ids["Animalia"]
    assert resolve_query(index, _q(genus, kingdom="Viridiplantae")).taxon_id == ids["Plantae"]


def test_missing_interior_rank_stays_null(index):
    fish = [t for t in _species(index) if t["class"] is None]
    assert fish, "the sample world plants a lineage with no class"
    caps = captions(fish[0], None)
    assert fish[0]["phylum"] in caps["taxon"] and fish[0]["order"] in caps["taxon"]
    assert "None" not in caps["taxonTag"] and " class " not in caps["taxonTag"]


def test_unknown_species_falls_back_to_genus(index):
    sp = _species(index)[0]
    res = resolve_query(index, _q(f"{sp['genus']} inexistens", kingdom=sp["kingdom"]))
    assert res.match_type == "higherrank" and index.lineage[res.taxon_id]["taxon_rank"] == "genus"


def test_unknown_name_without_ranks_is_none(index):
    res = resolve_query(index, _q("Nonexistus imaginarius"))
    assert res.match_type == "none" and res.taxon_id is None


def test_contradicting_kingdom_is_flagged(index):
    sp = next(t for t in _species(index) if t["kingdom"] == "Fungi")
    res = resolve_query(index, _q(f"{sp['genus']} {sp['species']}", kingdom="Animalia"))
    # Never the fungus's lineage for a record that says it is an animal: a higher rank in Animalia.
    assert res.taxon_id != sp["taxon_id"] and "contradicts" in res.reason and res.confidence < 1
    assert res.match_type == "higherrank" and index.lineage[res.taxon_id]["kingdom"] == "Animalia"


def test_common_name_is_english_or_null(index, world):
    english = [t["common_name"] for t in _species(index) if t["common_name"]]
    assert len(english) >= len(_species(index)) // 2
    only_foreign = [t for t in _species(index) if not t["common_name"]]
    assert only_foreign, "some species carry only non-English names: no English name is invented"


def test_caption_fallbacks():
    lineage = {
        "kingdom": "Plantae",
        "phylum": "Tracheophyta",
        "class": "Liliopsida",
        "order": "Poales",
        "family": "Poaceae",
        "genus": "Poa",
        "species": "angustifolia",
    }
    caps = captions(lineage, "Narrow-leaved meadow-grass")
    assert caps["taxon"] == "a photo of Plantae Tracheophyta Liliopsida Poales Poaceae Poa angustifolia."
    assert caps["sci_com"] == "a photo of Poa angustifolia with common name Narrow-leaved meadow-grass."
    assert caps["taxonTag"].startswith("a photo of kingdom Plantae phylum Tracheophyta")
    no_common = captions(lineage, None)
    assert no_common["com"] == "a photo of Poa angustifolia." and no_common["sci_com"] == no_common["sci"]
    genus_only = {**lineage, "species": None}
    assert scientific_name(genus_only) == "Poa" and taxonomic_name(genus_only).endswith("Poaceae Poa")


PARSER_PARITY = [
    "Puma concolor (Linnaeus, 1771)",
    "Testudo hermanni Gmelin, 1789",
    "Zea mays L.",
    "Helianthus canus (Britton) Wooton & Standl.",
    "Aus bus O'Brien, 1900",
    "Abies alba Mill.",
    "Parus major Linnaeus, 1758",
    "Quercus robur",
    "Bufo bufo",
    "Carex flava L.",
]


@pytest.mark.parametrize("raw", PARSER_PARITY)
def test_direct_path_agrees_with_gnparser(raw):
    """Clean names skip the parser call; they must come out exactly as gnparser's canonical form."""
    from taxonomy.names import gnparse, parse_name

    parsed = parse_name(raw)
    assert parsed.parser == "direct"
    assert parsed.canonical == gnparse(raw)["canonical"]["simple"]


@pytest.mark.parametrize(
    ("raw", "canonical", "note"),
    [
        (
            "Aus bus Smith var. cus Jones",
            "Aus bus",
            "authorship removed; infraspecific 'cus' matched at species",
        ),
        ("Carex flava × Carex viridula", "Carex", "hybrid formula: only the genus is certain"),
        ("Aus bus sp. Smith", "Aus", "approximation: only the genus is certain"),
        ("Puma aff. concolor", "Puma", "approximation: only the genus is certain"),
        ("BOLD:AAA1234", None, "not_a_name"),
        ("", None, "empty_name"),
        (None, None, "empty_name"),
    ],
)
def test_parser_path_reasons(raw, canonical, note):
    from taxonomy.names import parse_name

    parsed = parse_name(raw)
    assert (parsed.canonical, parsed.note) == (canonical, note)
