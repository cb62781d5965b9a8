"""Scientific-name parsing for matching: the canonical form without authorship, markup, subgenus or qualifiers.

Clean binomials and uninomials (the bulk of every source) are split directly; everything else goes through
gnparser, the Global Names parser behind GNverifier, once per distinct string. What gnparser cannot parse
(codes, placeholders, non-Latin script) comes back with a reason instead of a name, and is never matched.
"""

from __future__ import annotations

import ctypes
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import gnparser

NULL_TOKENS = {"", "unknown", "null", "none", "n/a", "na", "nan", "incertae sedis", "not_classified"}
KINGDOM_SYNONYMS = {
    "metazoa": "Animalia",
    "viridiplantae": "Plantae",
    "archaeplastida": "Plantae",
    "animalia": "Animalia",
    "plantae": "Plantae",
    "fungi": "Fungi",
}
INCERTAE_SEDIS = "incertae sedis"
_TAGS = re.compile(r"<[^>]+>")
_CLEAN = re.compile(r"^[A-Z][a-z]+(?: [a-z]+(?:-[a-z]+)?){0,2}$")  # "Genus", "Genus epithet", + infra
# "Genus epithet" + one plain authorship: "(Linnaeus, 1758)", "Gmelin, 1789", "L.", "(Britton) Wooton & Standl.".
# The commonest shape by far; gnparser gives the same canonical (a test checks), 30x faster without a call.
_AUTHOR = r"[A-Z][A-Za-z'\-]*\.?(?: (?:&|et|ex) [A-Z][A-Za-z'\-]*\.?)*(?:,? \d{4})?"
_WITH_AUTHOR = re.compile(rf"^([A-Z][a-z]+ [a-z]+(?:-[a-z]+)?) (?:\({_AUTHOR}\)(?: {_AUTHOR})?|{_AUTHOR})$")
# Words that make a clean-looking name uncertain or not a name at all; such names go to the parser.
_MARKERS = {"cf", "aff", "sp", "spp", "ssp", "subsp", "var", "f", "nr", "x", "forma", "morph", "indet", "gen"}

# gnparser's own wrapper never frees the C string it gets back (its FreeMemory call is commented out), which
# leaks about 1 kB per name; these private function objects return the raw pointer so it can be freed.
_parse_c = gnparser.lib["ParseToString"]
_parse_c.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
_parse_c.restype = ctypes.c_void_p
_free_c = gnparser.lib["FreeMemory"]
_free_c.argtypes = [ctypes.c_void_p]
_free_c.restype = None


@dataclass(frozen=True)
class ParsedName:
    """`canonical` is what is matched ("Genus" or "Genus epithet"); None when the input is not a usable name,
    with the reason in `note`. `note` otherwise says what was removed or why the name was cut to its genus."""

    canonical: str | None
    note: str | None = None
    infraspecific: str | None = None
    parser: str = "direct"
    partial: bool = False  # an epithet was there but could not be read: a genus match is a higher rank

    @property
    def genus(self) -> str | None:
        return self.canonical.split(" ")[0] if self.canonical else None

    @property
    def epithet(self) -> str | None:
        parts = (self.canonical or "").split(" ")
        return parts[1] if len(parts) > 1 else None


def gnparse(name: str) -> dict:
    """gnparser's compact JSON for one name (no details: surrogate, hybrid and authorship are still there)."""
    ptr = _parse_c(name.encode("utf-8"), b"compact", None, 0, 1)
    try:
        return json.loads(ctypes.string_at(ptr).decode("utf-8"))
    finally:
        _free_c(ptr)


def normalize_kingdom(value: str | None) -> str | None:
    if not value or value.strip().lower() == INCERTAE_SEDIS:
        return None
    return KINGDOM_SYNONYMS.get(value.strip().lower(), value.strip().capitalize())


def _tidy(raw: str) -> str:
    text = unicodedata.normalize("NFC", _TAGS.sub(" ", str(raw)))
    text = re.sub(r"\s+", " ", text).strip()
    letters = [c for c in text if c.isalpha()]
    if letters and all(c.isupper() for c in letters) and len(letters) > 1:
        # ALL-CAPS names (label transcriptions): genus capitalised, the rest lower case.
        first, *rest = text.split(" ")
        text = " ".join([first.capitalize(), *(t.lower() for t in rest)])
    return text


_QUOTES = "'\"`´‘’‚“”„"


def _repair(text: str) -> tuple[str, list[str]]:
    """Remove what no name contains and say so: invisible format characters (zero-width space, joiners,
    BOM) anywhere, and quotes inside the genus or epithet (authorship such as O'Brien keeps its own)."""
    notes = []
    invisible = sorted({c for c in text if unicodedata.category(c) == "Cf"})
    if invisible:
        text = "".join(c for c in text if unicodedata.category(c) != "Cf")
        notes.append("removed invisible " + ", ".join(f"U+{ord(c):04X}" for c in invisible))
    tokens = text.split(" ")
    head = [t.translate({ord(q): None for q in _QUOTES}) if i < 2 else t for i, t in enumerate(tokens)]
    if head != tokens:
        notes.append("removed stray quotes")
        text = " ".join(t for t in head if t)
    return text, notes


def _foreign_letter(word: str) -> str | None:
    """The first letter of `word` that is not of the Latin script (a Cyrillic 'о' looks like an 'o')."""
    return next((c for c in word if c.isalpha() and not unicodedata.name(c, "").startswith("LATIN")), None)


@lru_cache(maxsize=1_000_000)
def parse_name(raw: str | None) -> ParsedName:
    """Parse one verbatim name (cached per distinct string)."""
    if raw is None:
        return ParsedName(None, "empty_name")
    text, fixes = _repair(_tidy(raw))
    parsed = _parse(text)
    if fixes and parsed.canonical:
        note = "; ".join(filter(None, [*fixes, parsed.note]))
        return ParsedName(parsed.canonical, note, parsed.infraspecific, parsed.parser, parsed.partial)
    return parsed


def _parse(text: str) -> ParsedName:
    if text.lower() in NULL_TOKENS:
        return ParsedName(None, "empty_name")
    tokens = text.split(" ")
    epithet_like = len(tokens) > 1 and tokens[1][:1].islower() and not _foreign_letter(tokens[0])
    if epithet_like and (bad := _foreign_letter(tokens[1])):
        genus = _parse(tokens[0])
        if genus.canonical:
            why = f"epithet {tokens[1]!r} has a non-Latin letter {bad!r} ({unicodedata.name(bad, '?')})"
            return ParsedName(genus.canonical, f"{why}: genus only", parser=genus.parser, partial=True)
    if not _MARKERS.intersection(t.lower().rstrip(".") for t in tokens[1:]):
        if _CLEAN.match(text):
            if len(tokens) == 3:
                note = f"infraspecific '{tokens[2]}' matched at species"
                return ParsedName(" ".join(tokens[:2]), note, tokens[2])
            return ParsedName(text)
        if m := _WITH_AUTHOR.match(text):
            return ParsedName(m.group(1), "authorship removed")
    return _from_gnparser(text)


def _from_gnparser(text: str) -> ParsedName:
    parsed = gnparse(text)
    canonical = (parsed.get("canonical") or {}).get("simple")
    if not parsed.get("parsed") or not canonical:
        return ParsedName(None, "not_a_name", parser="gnparser")
    words = canonical.split(" ")
    notes = []
    if parsed.get("surrogate"):
        # cf., aff., sp., BOLD placeholders: only the genus is certain.
        return ParsedName(
            words[0], f"{parsed['surrogate'].lower()}: only the genus is certain", parser="gnparser"
        )
    hybrid = parsed.get("hybrid")
    if hybrid == "HYBRID_FORMULA":
        return ParsedName(words[0], "hybrid formula: only the genus is certain", parser="gnparser")
    if hybrid:
        notes.append("named hybrid")
    if parsed.get("authorship"):
        notes.append("authorship removed")
    infra = None
    if len(words) > 2:
        infra = words[2]
        notes.append(f"infraspecific '{words[2]}' matched at species")
        words = words[:2]
    if len(words) == 2 and not words[1].islower():
        return ParsedName(words[0], f"'{words[1]}' is not an epithet: genus only", parser="gnparser")
    return ParsedName(" ".join(words), "; ".join(notes) or None, infra, parser="gnparser")


def canonical_name(raw: str | None) -> tuple[str | None, str | None]:
    """(canonical name, note): `parse_name` as a pair, for callers that only need the string."""
    parsed = parse_name(raw)
    return parsed.canonical, parsed.note
