"""Caption texts exactly as the paper's WebDataset members, with their documented fallbacks."""

from __future__ import annotations

from collections.abc import Mapping

from warehouse.contracts import HIGHER_RANKS, RANKS


def scientific_name(lineage: Mapping[str, str | None]) -> str:
    """`Genus epithet`, or the lowest named rank when the lineage stops above species."""
    genus, epithet = lineage.get("genus"), lineage.get("species")
    if genus and epithet:
        return f"{genus} {epithet}"
    for rank in reversed(HIGHER_RANKS):
        if lineage.get(rank):
            return str(lineage[rank])
    return ""


def taxonomic_name(lineage: Mapping[str, str | None]) -> str:
    """The 7 rank values joined by spaces; empty ranks are skipped, never shifted."""
    return " ".join(str(lineage[r]) for r in RANKS if lineage.get(r))


def taxon_tag(lineage: Mapping[str, str | None]) -> str:
    return " ".join(f"{r} {lineage[r]}" for r in RANKS if lineage.get(r))


def captions(lineage: Mapping[str, str | None], common: str | None) -> dict[str, str]:
    """All caption members for one sample. `com` falls back to sci, then taxonomic."""
    sci, taxon = scientific_name(lineage), taxonomic_name(lineage)
    common = (common or "").strip() or None
    out = {
        "sci": f"a photo of {sci}.",
        "taxon": f"a photo of {taxon}.",
        "com": f"a photo of {common or sci or taxon}.",
        "sci_com": f"a photo of {sci} with common name {common}." if common else f"a photo of {sci}.",
        "taxon_com": f"a photo of {taxon} with common name {common}." if common else f"a photo of {taxon}.",
        "taxonTag": f"a photo of {taxon_tag(lineage)}.",
    }
    out["taxonTag_com"] = out["taxonTag"][:-1] + f" with common name {common}." if common else out["taxonTag"]
    out["scientific_name"] = sci
    out["taxonomic_name"] = taxon
    out["common_name"] = common or ""
    return out
