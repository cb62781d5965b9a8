"""Name normalising for matching: canonical form without authorship, markup, subgenus or qualifiers.

Deliberately small: it covers the shapes the sources send (authorship and years, HTML from EOL, subgenus in
brackets, `cf.`/`aff.`/`sp.`, hybrids, infraspecific ranks, placeholders). A full parser (gnparser) is the
planned replacement for the long tail.
"""

from __future__ import annotations

import re
import unicodedata

NULL_TOKENS = {"", "unknown", "null", "none", "n/a", "na", "nan", "incertae sedis", "not_classified"}
KINGDOM_SYNONYMS = {
    "metazoa": "Animalia",
    "viridiplantae": "Plantae",
    "archaeplastida": "Plantae",
    "animalia": "Animalia",
    "plantae": "Plantae",
    "fungi": "Fungi",
}
_TAGS = re.compile(r"<[^>]+>")
_SUBGENUS = re.compile(r"\(\s*[A-Z][a-z]+\s*\)")
_QUALIFIERS = {
    "cf.",
    "cf",
    "aff.",
    "aff",
    "sp.",
    "sp",
    "spp.",
    "spp",
    "ssp.",
    "subsp.",
    "var.",
    "f.",
    "nr.",
    "?",
}
_EPITHET = re.compile(r"^[a-z][a-z\-]+$")
_GENUS = re.compile(r"^[A-Z][a-z]+$")


def normalize_kingdom(value: str | None) -> str | None:
    if not value:
        return None
    return KINGDOM_SYNONYMS.get(value.strip().lower(), value.strip().capitalize())


def canonical_name(raw: str | None) -> tuple[str | None, str | None]:
    """(canonical name, qualifier note). Returns (None, reason) for names that must not be matched."""
    if raw is None:
        return None, "empty_name"
    text = unicodedata.normalize("NFC", _TAGS.sub(" ", str(raw)))
    text = text.replace("×", " ").replace(" x ", " ")
    text = _SUBGENUS.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    if text.lower() in NULL_TOKENS:
        return None, "empty_name"
    tokens = text.split(" ")
    genus = tokens[0]
    if genus.isupper() and len(genus) > 1:
        genus = genus.capitalize()
        tokens = [genus] + [t.lower() for t in tokens[1:]]
    if not _GENUS.match(genus):
        return None, "not_a_name"
    note = None
    epithet = None
    for tok in tokens[1:]:
        if tok.lower() in _QUALIFIERS:
            note = f"qualifier {tok.lower()}"
            break  # "Genus cf. species" is only certain to genus
        if _EPITHET.match(tok):
            epithet = tok
            break
        break  # authorship or year follows the genus: a genus-level name
    return (f"{genus} {epithet}" if epithet else genus), note
