"""A deterministic synthetic tree of life with real higher ranks and generated lower ranks.

Planted on purpose: a cross-kingdom homonym genus, a lineage with no class (as ray-finned fishes in the GBIF
backbone), synonyms, doubtful names, English and non-English vernacular names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from warehouse.contracts import RANKS

# (kingdom, phylum, class or None, orders, families per order, genera per family, species per genus,
#  order suffix, family suffix)
LINEAGE_PLAN: list[tuple[str, str, str | None, int, int, int, int, str, str]] = [
    ("Animalia", "Chordata", "Aves", 2, 2, 2, 2, "iformes", "idae"),
    ("Animalia", "Chordata", None, 1, 2, 1, 2, "iformes", "idae"),  # no class, like Actinopterygii
    ("Animalia", "Arthropoda", "Insecta", 2, 2, 1, 2, "optera", "idae"),
    ("Animalia", "Chordata", "Mammalia", 1, 2, 1, 2, "ia", "idae"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", 2, 2, 2, 2, "ales", "aceae"),
    ("Plantae", "Tracheophyta", "Liliopsida", 1, 2, 2, 2, "ales", "aceae"),
    ("Fungi", "Basidiomycota", "Agaricomycetes", 1, 2, 2, 2, "ales", "aceae"),
]

SYLLABLES = [
    "ca",
    "lo",
    "ter",
    "vi",
    "na",
    "pho",
    "ra",
    "den",
    "mi",
    "su",
    "tro",
    "gal",
    "ne",
    "ox",
    "pel",
    "ri",
    "ba",
    "chi",
    "dro",
    "fa",
    "gy",
    "hel",
    "ia",
    "ko",
    "lu",
    "ma",
    "no",
    "pa",
    "qui",
    "sta",
    "ty",
    "ul",
    "ver",
    "xe",
    "zo",
    "cor",
    "lep",
    "mon",
    "sar",
    "thu",
]
GENUS_ENDINGS = ["us", "a", "ia", "is", "ella", "opsis", "ium", "on"]
EPITHET_ENDINGS = ["us", "a", "is", "ensis", "ii", "ata", "oides", "um"]
ENGLISH_NOUNS = {
    "Aves": "finch",
    "Mammalia": "vole",
    "Insecta": "beetle",
    None: "minnow",
    "Magnoliopsida": "campion",
    "Liliopsida": "sedge",
    "Agaricomycetes": "bracket",
}
ADJECTIVES = [
    "Crested",
    "Pale",
    "Northern",
    "Lesser",
    "Golden",
    "Spotted",
    "Banded",
    "Dusky",
    "Tawny",
    "Ruddy",
    "Silver",
    "Hooded",
    "Marsh",
    "Mountain",
    "Painted",
    "Striped",
]
AUTHORS = ["L.", "Linnaeus, 1758", "Fabricius, 1775", "(Pallas, 1771)", "Fr.", "DC.", "Gmelin, 1789"]


@dataclass
class TaxonNode:
    taxon_id: int
    name: str
    rank: str
    parent_id: int | None
    lineage: dict[str, str | None]
    authorship: str = ""
    status: str = "accepted"
    accepted_id: int | None = None


@dataclass
class Species:
    """A species with its lineage (species = epithet), names and the trait indices that drive its images."""

    taxon_id: int
    lineage: dict[str, str | None]
    authorship: str
    traits: dict[str, int]
    vernaculars: list[tuple[str, str]] = field(default_factory=list)
    synonyms: list[tuple[int, str]] = field(default_factory=list)

    @property
    def binomial(self) -> str:
        return f"{self.lineage['genus']} {self.lineage['species']}"

    @property
    def english_name(self) -> str | None:
        return next((n for n, lang in self.vernaculars if lang == "en"), None)


@dataclass
class Tree:
    nodes: list[TaxonNode]
    species: list[Species]
    homonym_genus: str


class _Names:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def stem(self, n: int) -> str:
        return "".join(self.rng.choice(SYLLABLES) for _ in range(n))

    def unique(self, make) -> str:
        for _ in range(1000):
            name = make()
            if name not in self.used:
                self.used.add(name)
                return name
        raise RuntimeError("name space exhausted")


def build_tree(seed: int = 0) -> Tree:
    rng = random.Random(seed)
    names = _Names(rng)
    nodes: list[TaxonNode] = []
    species: list[Species] = []
    next_id = [1000]
    by_name: dict[tuple[str, str], TaxonNode] = {}

    def node(name: str, rank: str, parent: TaxonNode | None, lineage: dict[str, str | None]) -> TaxonNode:
        key = (rank, name)
        if rank in ("kingdom", "phylum", "class") and key in by_name:
            return by_name[key]
        next_id[0] += 1
        n = TaxonNode(next_id[0], name, rank, parent.taxon_id if parent else None, dict(lineage))
        nodes.append(n)
        if rank in ("kingdom", "phylum", "class"):
            by_name[key] = n
        return n

    kingdom_index: dict[str, int] = {}
    phylum_index: dict[str, int] = {}
    genus_counter = 0
    for c_idx, (kingdom, phylum, klass, n_orders, n_fam, n_gen, n_sp, order_sfx, fam_sfx) in enumerate(
        LINEAGE_PLAN
    ):
        k_idx = kingdom_index.setdefault(kingdom, len(kingdom_index))
        p_idx = phylum_index.setdefault(phylum, len(phylum_index))
        lin: dict[str, str | None] = dict.fromkeys(RANKS)
        lin["kingdom"] = kingdom
        k_node = node(kingdom, "kingdom", None, lin)
        lin["phylum"] = phylum
        parent = node(phylum, "phylum", k_node, lin)
        if klass:
            lin["class"] = klass
            parent = node(klass, "class", parent, lin)
        for o in range(n_orders):
            order_name = names.unique(lambda sfx=order_sfx: names.stem(2).capitalize() + sfx)
            o_lin = {**lin, "order": order_name}
            o_node = node(order_name, "order", parent, o_lin)
            for f in range(n_fam):
                fam_name = names.unique(lambda sfx=fam_sfx: names.stem(2).capitalize() + sfx)
                f_lin = {**o_lin, "family": fam_name}
                f_node = node(fam_name, "family", o_node, f_lin)
                for _g in range(n_gen):
                    genus_name = names.unique(lambda: names.stem(2).capitalize() + rng.choice(GENUS_ENDINGS))
                    g_lin = {**f_lin, "genus": genus_name}
                    g_node = node(genus_name, "genus", f_node, g_lin)
                    g_node.authorship = rng.choice(AUTHORS)
                    for s in range(n_sp):
                        epithet = names.unique(lambda: names.stem(2) + rng.choice(EPITHET_ENDINGS))
                        s_lin = {**g_lin, "species": epithet}
                        s_node = node(f"{genus_name} {epithet}", "species", g_node, s_lin)
                        s_node.authorship = rng.choice(AUTHORS)
                        traits = {
                            "kingdom": k_idx,
                            "phylum": p_idx,
                            "class": c_idx,
                            "order": o,
                            "family": f,
                            "genus": genus_counter,
                            "species": s,
                        }
                        species.append(Species(s_node.taxon_id, s_lin, s_node.authorship, traits))
                    genus_counter += 1

    # Cross-kingdom homonym: the first plant genus takes the name of the first animal genus.
    animal_genus = next(n for n in nodes if n.rank == "genus" and n.lineage["kingdom"] == "Animalia")
    plant_genus = next(n for n in nodes if n.rank == "genus" and n.lineage["kingdom"] == "Plantae")
    old = plant_genus.name
    plant_genus.name = animal_genus.name
    for n in nodes:
        if n.lineage.get("genus") == old:
            n.lineage["genus"] = animal_genus.name
            if n.rank == "species":
                n.name = f"{animal_genus.name} {n.lineage['species']}"
    for sp in species:
        if sp.lineage["genus"] == old:
            sp.lineage["genus"] = animal_genus.name

    _add_vernaculars(species, rng)
    _add_synonyms(nodes, species, names, next_id, rng)
    return Tree(nodes=nodes, species=species, homonym_genus=animal_genus.name)


def _add_vernaculars(species: list[Species], rng: random.Random) -> None:
    used: set[str] = set()
    for i, sp in enumerate(species):
        noun = ENGLISH_NOUNS[sp.lineage["class"]]
        english = None
        for _ in range(100):
            cand = f"{rng.choice(ADJECTIVES)} {sp.lineage['genus'].lower()[:4]}{noun}"
            if cand not in used:
                used.add(cand)
                english = cand
                break
        if i % 9 == 4:
            # Only non-English names: the common-name rule must fall back deterministically.
            sp.vernaculars = [
                (f"{sp.lineage['species'].capitalize()}-{noun}e", "fr"),
                (f"Grosse {noun}", "de"),
            ]
        elif i % 7 == 3:
            # Two English names plus others: the rule must pick one deterministically.
            sp.vernaculars = [(english, "en"), (f"Common {noun} {i}", "en"), (f"{noun}o {i}", "es")]
        else:
            sp.vernaculars = [(english, "en"), (f"{noun.capitalize()}-{sp.lineage['species']}", "de")]


def _add_synonyms(nodes, species, names, next_id, rng) -> None:
    for i, sp in enumerate(species):
        if i % 5 != 1:
            continue
        other_genus = names.unique(lambda: names.stem(2).capitalize() + rng.choice(GENUS_ENDINGS))
        syn_name = f"{other_genus} {sp.lineage['species']}"
        next_id[0] += 1
        syn = TaxonNode(
            next_id[0],
            syn_name,
            "species",
            None,
            dict(sp.lineage),
            authorship=rng.choice(AUTHORS),
            status="synonym",
            accepted_id=sp.taxon_id,
        )
        nodes.append(syn)
        sp.synonyms.append((syn.taxon_id, syn_name))
