"""Write the sample world to disk: backbone DwC-A, source payloads, images, eval set, replay set.

Payload files hold `{{BASE_URL}}` where a host would be; the loopback server substitutes its own address,
so the same files work on any port. `world.json` lists what was planted, for tests and the demo summary.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from sample_world.render import (
    LIFE_STAGES,
    jpeg_bytes,
    render_drawer,
    render_empty_frame,
    render_label,
    render_organism,
    render_scene,
)
from sample_world.tree import Species, Tree, build_tree
from warehouse.contracts import EOL_MANIFEST_COLUMNS, HIGHER_RANKS

BASE = "{{BASE_URL}}"
TAXON_COLUMNS = [
    "taxonID",
    "datasetID",
    "parentNameUsageID",
    "acceptedNameUsageID",
    "originalNameUsageID",
    "scientificName",
    "scientificNameAuthorship",
    "canonicalName",
    "genericName",
    "specificEpithet",
    "infraspecificEpithet",
    "taxonRank",
    "nameAccordingTo",
    "namePublishedIn",
    "taxonomicStatus",
    "nomenclaturalStatus",
    "taxonRemarks",
    *HIGHER_RANKS,  # Darwin Core names its rank columns as we name the ranks
]
VERNACULAR_COLUMNS = [
    "taxonID",
    "vernacularName",
    "language",
    "country",
    "countryCode",
    "sex",
    "lifeStage",
    "source",
]
BIOSCAN_COLUMNS = [
    "processid",
    "sampleid",
    "taxon",
    "phylum",
    "class",
    "order",
    "family",
    "subfamily",
    "genus",
    "species",
    "dna_bin",
    "dna_barcode",
    "country",
    "province_state",
    "coord-lat",
    "coord-lon",
    "image_measurement_value",
    "area_fraction",
    "scale_factor",
    "inferred_ranks",
    "split",
    "index_bioscan_1M_insect",
    "chunk",
]
DH_COLUMNS = [
    "taxonID",
    "source",
    "furtherInformationURL",
    "acceptedNameUsageID",
    "parentNameUsageID",
    "scientificName",
    "taxonRank",
    "taxonomicStatus",
    "datasetID",
    "canonicalName",
    "authority",
    "eolID",
    "Landmark",
    "higherClassification",
]
GBIF_RECORD_LICENSES = [
    "http://creativecommons.org/licenses/by/4.0/legalcode",
    "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
    "http://creativecommons.org/publicdomain/zero/1.0/legalcode",
]
GBIF_MEDIA_LICENSES = [
    None,
    "http://creativecommons.org/licenses/by/4.0/",
    "Usage Conditions Apply",
    "CC BY-NC 4.0",
    None,
    "https://creativecommons.org/licenses/by-sa/4.0/",
]
EOL_LICENSES = ["cc-by", "cc-by-nc-sa-3.0", "public domain", "No known copyright restrictions", "cc-by-nc"]
PUBLISHERS = [
    ("iNaturalist.org", "50c9509d-22c7-4a22-a47d-8c48425ef4a7", "HUMAN_OBSERVATION"),
    ("Observation.org", "8a863029-f435-446a-821e-275f4f641165", "HUMAN_OBSERVATION"),
    ("Natural History Museum", "7e380070-f762-11e1-a439-00145eb45e9a", "PRESERVED_SPECIMEN"),
    ("Snapshot Wildlife", "3c5e4331-7f2f-4a8d-aa56-81c43f4d8f44", "MACHINE_OBSERVATION"),
]


@dataclass(frozen=True)
class SampleWorldConfig:
    seed: int = 0
    gbif_occurrences_per_species: int = 9
    eol_media_per_species: int = 3
    eval_images_per_species: int = 5
    bioscan_rows_per_species: int = 6
    fathomnet_frames_per_species: int = 5
    replay_train: int = 480
    replay_heldout: int = 120
    leaks: int = 10


@dataclass
class SampleWorld:
    root: Path
    config: SampleWorldConfig
    planted: dict = field(default_factory=dict)

    @property
    def routes(self) -> Path:
        return self.root / "routes"

    @property
    def api_data(self) -> Path:
        return self.root / "api_data"

    @property
    def backbone(self) -> Path:
        return self.root / "backbone"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def support(self) -> Path:
        """Support images for the museum_category scorer: one folder per category."""
        return self.root / "support"

    @property
    def replay_train(self) -> Path:
        return self.root / "replay" / "train"

    @property
    def replay_heldout(self) -> Path:
        return self.root / "replay" / "heldout"

    @classmethod
    def load(cls, root: str | Path) -> SampleWorld:
        root = Path(root)
        meta = json.loads((root / "world.json").read_text())
        return cls(root=root, config=SampleWorldConfig(**meta["config"]), planted=meta["planted"])


class _Writer:
    """Holds the RNG and the file tree while payloads are generated."""

    def __init__(self, world: SampleWorld, tree: Tree) -> None:
        self.world = world
        self.tree = tree
        self.rng = random.Random(world.config.seed + 1)
        self.planted: dict = {
            "too_small": [],
            "corrupt": [],
            "missing": [],
            "exact_duplicate_urls": [],
            "near_duplicate_urls": [],
            "leak_urls": [],
            "no_media_url": 0,
            "not_still_image": 0,
            "material_citation": 0,
            "iiif": 0,
        }
        self.by_url: dict[str, bytes] = {}
        self.photo_counter = 100000
        self.url_species: dict[str, Species] = {}

    def image_for(
        self, sp: Species, *, size: tuple[int, int] | None = None, stage: str | None = None
    ) -> bytes:
        seed = self.rng.getrandbits(32)
        rng = random.Random(seed)
        if size is None:
            size = (rng.randint(300, 520), rng.randint(260, 420))
        stage = stage or rng.choice(LIFE_STAGES)
        return jpeg_bytes(render_organism(sp.traits, rng, size, stage), quality=rng.randint(80, 92))

    def put(self, rel: str, data: bytes) -> str:
        path = self.world.routes / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        url = f"{BASE}/{rel}"
        self.by_url[url] = data
        return url

    def new_media(self, sp: Species, host: str) -> str:
        """A fresh image of `sp`, sometimes planted as too small, corrupt or missing; returns its URL."""
        self.photo_counter += 1
        rel = f"{host}/photos/{self.photo_counter}/original.jpg"
        roll = self.rng.random()
        if roll < 0.03:
            url = self.put(
                rel, self.image_for(sp, size=(self.rng.randint(120, 200), self.rng.randint(100, 180)))
            )
            self.planted["too_small"].append(url)
        elif roll < 0.045:
            data = self.image_for(sp)
            url = self.put(rel, data[: len(data) // 3])
            self.planted["corrupt"].append(url)
        elif roll < 0.055:
            url = f"{BASE}/{rel}"
            self.planted["missing"].append(url)
        else:
            url = self.put(rel, self.image_for(sp))
        self.url_species[url] = sp
        return url


def build_sample_world(root: str | Path, config: SampleWorldConfig | None = None) -> SampleWorld:
    """Generate the whole sample world under `root` (replacing it); deterministic from `config.seed`."""
    config = config or SampleWorldConfig()
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    world = SampleWorld(root=root, config=config)
    for d in (
        world.routes,
        world.api_data,
        world.backbone,
        world.eval_dir,
        world.replay_train,
        world.replay_heldout,
    ):
        d.mkdir(parents=True, exist_ok=True)
    tree = build_tree(config.seed)
    w = _Writer(world, tree)
    _write_backbone(world, tree)
    eval_images = _write_eval_set(world, tree, w)
    _write_gbif(world, tree, w, eval_images)
    _write_eol(world, tree, w)
    _write_bioscan(world, tree, w)
    _write_fathomnet(world, tree, w)
    _write_replay(world)
    world.planted = w.planted | {
        "n_species": len(tree.species),
        "homonym_genus": tree.homonym_genus,
        "kingdoms": sorted({sp.lineage["kingdom"] for sp in tree.species}),
    }
    (root / "world.json").write_text(
        json.dumps({"config": asdict(config), "planted": world.planted}, indent=1)
    )
    return world


def _write_backbone(world: SampleWorld, tree: Tree) -> None:
    rows = [
        dict.fromkeys(TAXON_COLUMNS, "")
        | {
            "taxonID": "0",
            "scientificName": "incertae sedis",
            "canonicalName": "incertae sedis",
            "taxonRank": "kingdom",
            "taxonomicStatus": "doubtful",
            "kingdom": "incertae sedis",
        }
    ]
    for n in tree.nodes:
        lin = n.lineage
        genus, _, epithet = n.name.partition(" ")
        rows.append(
            dict.fromkeys(TAXON_COLUMNS, "")
            | {
                "taxonID": str(n.taxon_id),
                "datasetID": "7ddf754f-d193-4cc9-b351-99906754a03b",
                "parentNameUsageID": "" if n.parent_id is None else str(n.parent_id),
                "acceptedNameUsageID": "" if n.accepted_id is None else str(n.accepted_id),
                "scientificName": f"{n.name} {n.authorship}".strip(),
                "scientificNameAuthorship": n.authorship,
                "canonicalName": n.name,
                "genericName": genus if n.rank in ("genus", "species") else "",
                "specificEpithet": epithet if n.rank == "species" else "",
                "taxonRank": n.rank,
                "taxonomicStatus": n.status,
                **{r: (lin.get(r) or "") for r in HIGHER_RANKS},
            }
        )
    # A doubtful duplicate usage of one species name, as the real backbone has.
    sp = tree.species[7]
    rows.append(
        dict.fromkeys(TAXON_COLUMNS, "")
        | {
            "taxonID": "990001",
            "scientificName": f"{sp.binomial} Auct., 1901",
            "canonicalName": sp.binomial,
            "taxonRank": "species",
            "taxonomicStatus": "doubtful",
            "kingdom": sp.lineage["kingdom"],
        }
    )
    with open(world.backbone / "Taxon.tsv", "w", newline="", encoding="utf-8") as fh:
        fh.write("\t".join(TAXON_COLUMNS) + "\n")
        for r in rows:
            fh.write("\t".join(r[c] for c in TAXON_COLUMNS) + "\n")
    with open(world.backbone / "VernacularName.tsv", "w", newline="", encoding="utf-8") as fh:
        fh.write("\t".join(VERNACULAR_COLUMNS) + "\n")
        for sp in tree.species:
            for name, lang in sp.vernaculars:
                fh.write("\t".join([str(sp.taxon_id), name, lang, "", "", "", "", "sample world"]) + "\n")


def _write_eval_set(world: SampleWorld, tree: Tree, w: _Writer) -> list[tuple[Species, bytes]]:
    rows, out = [], []
    img_dir = world.eval_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for sp in tree.species:
        for i in range(world.config.eval_images_per_species):
            stage = LIFE_STAGES[i % 2]
            data = w.image_for(sp, stage=stage)
            rel = f"images/{sp.taxon_id}_{i}.jpg"
            (world.eval_dir / rel).write_bytes(data)
            out.append((sp, data))
            rows.append(
                {
                    "filepath": rel,
                    **sp.lineage,
                    "scientific_name": sp.binomial,
                    "common_name": sp.english_name or "",
                    "life_stage": stage,
                }
            )
    with open(world.eval_dir / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def _reencode(data: bytes, scale: float, quality: int) -> bytes:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize(
        (max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.Resampling.BICUBIC
    )
    return jpeg_bytes(img, quality=quality)


def _gbif_lineage_fields(sp: Species, taxon_rank: str) -> dict:
    fields = {r: sp.lineage[r] for r in HIGHER_RANKS if sp.lineage.get(r)}
    if taxon_rank == "SPECIES":
        fields["species"] = sp.binomial
    else:
        fields.pop("species", None)
    return fields


def _write_gbif(world: SampleWorld, tree: Tree, w: _Writer, eval_images: list[tuple[Species, bytes]]) -> None:
    rng = w.rng
    occurrences: list[dict] = []
    key = 4_900_000_000
    leak_pool = list(eval_images)
    rng.shuffle(leak_pool)
    leaks = leak_pool[: world.config.leaks]
    previous_urls: list[tuple[Species, str]] = []
    for sp in tree.species:
        for occ_i in range(world.config.gbif_occurrences_per_species):
            key += 1
            publisher, dataset_key, basis = PUBLISHERS[(occ_i + sp.taxon_id) % len(PUBLISHERS)]
            taxon_rank = "GENUS" if occ_i == 5 and sp.taxon_id % 3 == 0 else "SPECIES"
            occ = {
                "key": key,
                "gbifID": str(key),
                "datasetKey": dataset_key,
                "publishingOrgKey": dataset_key,
                "basisOfRecord": basis,
                "occurrenceStatus": "PRESENT",
                "taxonKey": sp.taxon_id,
                "acceptedTaxonKey": sp.taxon_id,
                "scientificName": f"{sp.binomial} {sp.authorship}"
                if taxon_rank == "SPECIES"
                else f"{sp.lineage['genus']} Fr.",
                "taxonRank": taxon_rank,
                "taxonomicStatus": "ACCEPTED",
                "license": GBIF_RECORD_LICENSES[occ_i % len(GBIF_RECORD_LICENSES)],
                "eventDate": f"2024-0{1 + occ_i % 9}-1{occ_i % 10}",
                "publisher": publisher,
                **_gbif_lineage_fields(sp, taxon_rank),
            }
            if basis == "MACHINE_OBSERVATION":
                occ["eventRemarks"] = "camera trap; Trigger Sensitivity: high"
            if occ_i % 2 == 0:
                occ["rightsHolder"] = f"Observer {occ_i}"
            if occ_i == 7 and sp.taxon_id % 4 == 0:
                occ["basisOfRecord"] = "MATERIAL_CITATION"
                w.planted["material_citation"] += 1
            n_media = 2 if occ_i % 3 == 0 else 1
            media = []
            for m_i in range(n_media):
                host = "inaturalist-open-data" if publisher == "iNaturalist.org" else "media.gbif-sample.org"
                url = w.new_media(sp, host)
                m = {
                    "type": "StillImage",
                    "format": "image/jpeg",
                    "identifier": url,
                    "references": f"{BASE}/observations/{key}",
                    "creator": f"Observer {occ_i}",
                }
                lic = GBIF_MEDIA_LICENSES[(occ_i + m_i) % len(GBIF_MEDIA_LICENSES)]
                if lic:
                    m["license"] = lic
                if m_i == 0:
                    m["rightsHolder"] = f"Observer {occ_i}"
                media.append(m)
                previous_urls.append((sp, url))
            occ["media"] = media
            occurrences.append(occ)
        # Realistic mess, once per species in rotation.
        mess = sp.taxon_id % 5
        if mess == 0:
            occurrences[-1]["media"].append(
                {"type": "StillImage", "references": f"{BASE}/observations/{key}"}
            )
            w.planted["no_media_url"] += 1
        elif mess == 1:
            occurrences[-1]["media"].append(
                {"type": "Sound", "format": "audio/mpeg", "identifier": f"{BASE}/sounds/{key}.mp3"}
            )
            w.planted["not_still_image"] += 1
        elif mess == 2:
            occurrences[-1]["media"].append(
                {
                    "type": "StillImage",
                    "format": "application/ld+json",
                    "identifier": f"{BASE}/iiif/{key}/manifest.json",
                }
            )
            w.planted["iiif"] += 1
        elif mess == 3:
            occurrences[-2]["media"].append({"identifier": w.new_media(sp, "media.gbif-sample.org")})
    # Near duplicates: the same photo re-published resized and re-encoded by another occurrence.
    near_sources = [
        u
        for _, u in previous_urls
        if u in w.by_url and u not in w.planted["corrupt"] and u not in w.planted["too_small"]
    ]
    for url in rng.sample(near_sources, 12):
        sp = next(s for s, u in previous_urls if u == url)
        key += 1
        w.photo_counter += 1
        new_url = w.put(
            f"media.gbif-sample.org/photos/{w.photo_counter}/original.jpg",
            _reencode(w.by_url[url], rng.uniform(0.85, 0.95), rng.randint(70, 85)),
        )
        w.planted["near_duplicate_urls"].append([url, new_url])
        occurrences.append(_simple_occ(key, sp, new_url))
    # Leaks: evaluation images that found their way into the source (exact and re-encoded copies).
    for i, (sp, data) in enumerate(leaks):
        key += 1
        w.photo_counter += 1
        payload = data if i % 2 == 0 else _reencode(data, 0.92, 80)
        url = w.put(f"inaturalist-open-data/photos/{w.photo_counter}/original.jpg", payload)
        w.planted["leak_urls"].append(url)
        occurrences.append(_simple_occ(key, sp, url))
    # Incertae sedis record, as the real API returns for unplaceable names.
    key += 1
    occurrences.append(
        {
            "key": key,
            "gbifID": str(key),
            "basisOfRecord": "HUMAN_OBSERVATION",
            "scientificName": "incertae sedis",
            "kingdom": "incertae sedis",
            "kingdomKey": 0,
            "taxonRank": "KINGDOM",
            "license": GBIF_RECORD_LICENSES[0],
            "media": [
                {
                    "type": "StillImage",
                    "format": "image/jpeg",
                    "identifier": w.new_media(tree.species[0], "media.gbif-sample.org"),
                }
            ],
        }
    )
    key += 1
    occurrences.append(
        {
            "key": key,
            "gbifID": str(key),
            "basisOfRecord": "HUMAN_OBSERVATION",
            "scientificName": tree.species[1].binomial,
            "media": [],
        }
    )
    _plant_filter_cases(world, tree, w, occurrences, key)
    w.planted["gbif_occurrences"] = len(occurrences)
    (world.api_data / "gbif_occurrences.json").write_text(json.dumps(occurrences))


BURST_FRAMES = 18  # images of one planted camera-trap burst (the paper drops occurrences with more than 15)


def _face_photos() -> list[Image.Image]:
    """Real photographs of people, from scikit-image's bundled data (no download)."""
    import skimage.data

    return [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.camera()).convert("RGB")]


def _plant_filter_cases(
    world: SampleWorld, tree: Tree, w: _Writer, occurrences: list[dict], key: int
) -> None:
    """What the content filters must catch, on GBIF occurrences of real sample species: camera-trap bursts,
    empty camera-trap frames, museum records whose extra images are a label or a drawer, photos of people.
    Drawn from their own RNG, after everything else, so the rest of the world is the same with or without
    them. Also writes the support folders (organism, label, drawer) for `tol filter build-support`."""
    rng = random.Random(world.config.seed + 101)
    camera = next(p for p in PUBLISHERS if p[2] == "MACHINE_OBSERVATION")
    museum = next(p for p in PUBLISHERS if p[2] == "PRESERVED_SPECIMEN")
    citizen = PUBLISHERS[0]
    planted = {
        "burst_occurrences": [],
        "empty_frame_urls": [],
        "label_urls": [],
        "drawer_urls": [],
        "face_urls": [],
    }

    def occ(sp: Species, publisher: tuple[str, str, str], urls: list[str], **extra) -> dict:
        nonlocal key
        key += 1
        o = _simple_occ(key, sp, urls[0])
        o.update(publisher=publisher[0], datasetKey=publisher[1], basisOfRecord=publisher[2], **extra)
        o["media"] = [{"type": "StillImage", "format": "image/jpeg", "identifier": u} for u in urls]
        occurrences.append(o)
        return o

    def put(img: Image.Image, host: str = "media.gbif-sample.org") -> str:
        w.photo_counter += 1
        return w.put(f"{host}/photos/{w.photo_counter}/original.jpg", jpeg_bytes(img, quality=88))

    remarks = {"eventRemarks": "camera trap; Trigger Sensitivity: high"}
    for sp in rng.sample(tree.species, 2):
        size = (rng.randint(400, 480), rng.randint(300, 360))
        frames = [
            put(render_organism(sp.traits, random.Random(rng.getrandbits(32)), size))
            for _ in range(BURST_FRAMES)
        ]
        planted["burst_occurrences"].append(str(occ(sp, camera, frames, **remarks)["gbifID"]))
    for sp in rng.sample(tree.species, 6):
        url = put(render_empty_frame(rng, (rng.randint(400, 480), rng.randint(300, 360))))
        occ(sp, camera, [url], **remarks)
        planted["empty_frame_urls"].append(url)
    for i, sp in enumerate(rng.sample(tree.species, 8)):
        specimen = put(render_organism(sp.traits, random.Random(rng.getrandbits(32)), (420, 340)))
        label = put(render_label(rng, (rng.randint(380, 460), rng.randint(260, 320))))
        urls = [specimen, label]
        planted["label_urls"].append(label)
        if i % 3 == 0:
            urls.append(put(render_drawer(rng, (rng.randint(420, 480), rng.randint(300, 360)))))
            planted["drawer_urls"].append(urls[-1])
        occ(sp, museum, urls)
    for photo, sp in zip(_face_photos(), rng.sample(tree.species, 2), strict=True):
        url = put(photo.resize((400, 400)), host="inaturalist-open-data")
        occ(sp, citizen, [url])
        planted["face_urls"].append(url)
    w.planted.update(planted)
    # Organisms vary the most (every species looks different): one support image per species, so no species
    # lies far from every organism centroid; labels and drawers look alike, a dozen each.
    support = {
        "organism": [lambda r, sp=sp: render_organism(sp.traits, r, (320, 280)) for sp in tree.species],
        "label": [lambda r: render_label(r, (360, 280))] * 12,
        "drawer": [lambda r: render_drawer(r, (360, 280))] * 12,
    }
    for category, renders in support.items():
        folder = world.support / category
        folder.mkdir(parents=True, exist_ok=True)
        for i, render in enumerate(renders):
            (folder / f"{category}-{i:02d}.jpg").write_bytes(
                jpeg_bytes(render(random.Random(rng.getrandbits(32))))
            )


def _simple_occ(key: int, sp: Species, url: str) -> dict:
    return {
        "key": key,
        "gbifID": str(key),
        "datasetKey": PUBLISHERS[0][1],
        "basisOfRecord": "HUMAN_OBSERVATION",
        "occurrenceStatus": "PRESENT",
        "taxonKey": sp.taxon_id,
        "scientificName": sp.binomial,
        "taxonRank": "SPECIES",
        "taxonomicStatus": "ACCEPTED",
        "license": GBIF_RECORD_LICENSES[0],
        "publisher": PUBLISHERS[0][0],
        **_gbif_lineage_fields(sp, "SPECIES"),
        "media": [{"type": "StillImage", "format": "image/jpeg", "identifier": url}],
    }


def _write_eol(world: SampleWorld, tree: Tree, w: _Writer) -> None:
    rng = w.rng
    manifest, dh = [], []
    content_id = 29_000_000
    gbif_urls = [
        u
        for u in w.by_url
        if "inaturalist-open-data" in u
        and u not in w.planted["leak_urls"]
        and u not in w.planted["corrupt"]
        and u not in w.planted["too_small"]
    ]
    exact_sources = rng.sample(gbif_urls, 10)
    for i, sp in enumerate(tree.species):
        page_id = 45_000_000 + sp.taxon_id
        # EOL's names: synonyms where the backbone knows one, HTML markup sometimes.
        name = sp.synonyms[0][1] if sp.synonyms and i % 4 != 0 else sp.binomial
        canonical = f"<i>{name}</i>" if i % 6 == 0 else name
        higher = "|".join(
            [
                "Life",
                "Cellular Organisms",
                "Eukaryota",
                sp.lineage["kingdom"],
                *[v for r, v in sp.lineage.items() if r not in ("kingdom", "species") and v],
            ]
        )
        dh.append(
            {
                "taxonID": f"EOL-{page_id}",
                "source": "sample",
                "furtherInformationURL": "",
                "acceptedNameUsageID": "",
                "parentNameUsageID": "",
                "scientificName": f"{name} {sp.authorship}",
                "taxonRank": "" if i % 8 == 0 else "species",
                "taxonomicStatus": "accepted",
                "datasetID": "sample",
                "canonicalName": canonical,
                "authority": sp.authorship,
                "eolID": str(page_id),
                "Landmark": "",
                "higherClassification": higher,
            }
        )
        if i % 2 == 1:
            continue  # EOL has media for about half the species
        for _ in range(world.config.eol_media_per_species):
            content_id += 1
            url = w.new_media(sp, "content.eol.org/data/media")
            manifest.append(
                [
                    str(content_id),
                    str(page_id),
                    f"{BASE}/provider/{content_id}.jpg",
                    url,
                    rng.choice(EOL_LICENSES),
                    "" if content_id % 4 == 0 else f"Photographer {content_id % 7}",
                ]
            )
    # Exact duplicates: GBIF photos also harvested by EOL, same bytes under a new URL.
    for url in exact_sources:
        content_id += 1
        page_id = 45_000_000 + w.url_species[url].taxon_id
        w.photo_counter += 1
        new_url = w.put(f"content.eol.org/data/media/dup/{w.photo_counter}.jpg", w.by_url[url])
        w.planted["exact_duplicate_urls"].append([url, new_url])
        manifest.append([str(content_id), str(page_id), url, new_url, "cc-by", "iNaturalist user"])
    half = (len(manifest) + 1) // 2
    d = world.routes / "data" / "media_manifest.tgz"
    d.mkdir(parents=True, exist_ok=True)
    for idx, chunk in enumerate([manifest[:half], manifest[half:]], start=1):
        with open(d / f"media_manifest_{idx}.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            if idx == 1:
                writer.writerow(EOL_MANIFEST_COLUMNS)  # header in the first file only, as EOL ships it
            writer.writerows(chunk)
    with open(world.routes / "data" / "taxon.tab", "w", newline="", encoding="utf-8") as fh:
        fh.write("\t".join(DH_COLUMNS) + "\n")
        for r in dh:
            fh.write("\t".join(r[c] for c in DH_COLUMNS) + "\n")
    w.planted["eol_media"] = len(manifest)


def _write_bioscan(world: SampleWorld, tree: Tree, w: _Writer) -> None:
    rng = w.rng
    insects = [sp for sp in tree.species if sp.lineage["class"] == "Insecta"]
    rows = []
    splits = ["pretrain", "train", "test", "other_heldout"]
    n = 0
    for sp in insects:
        for i in range(world.config.bioscan_rows_per_species):
            n += 1
            pid = f"BIOUG{70000 + n:05d}-A{n % 10}"
            split = splits[n % len(splits)]
            chunk = {
                "pretrain": hashlib.md5(pid.encode()).hexdigest()[:2],
                "train": hashlib.md5(pid.encode()).hexdigest()[:1],
            }.get(split, "")
            species = sp.binomial
            if i == 4:
                species = ""  # genus-only label, as most BIOSCAN rows are
            elif i == 5:
                species = f"Malaise{4000 + n}"  # placeholder, never a name
            elif i == 3 and sp.synonyms:
                species = sp.synonyms[0][1]
            rel_dir = "/".join(p for p in ("bioscan5m/images/cropped_256", split, chunk) if p)
            data = jpeg_bytes(
                render_organism(
                    sp.traits, random.Random(rng.getrandbits(32)), (341, 256), rng.choice(LIFE_STAGES)
                )
            )
            w.put(f"{rel_dir}/{pid}.jpg", data)
            rows.append(
                {
                    "processid": pid,
                    "sampleid": f"S{n:06d}",
                    "taxon": species or sp.lineage["genus"],
                    "phylum": "Arthropoda",
                    "class": "Insecta",
                    "order": sp.lineage["order"],
                    "family": "" if i == 2 else sp.lineage["family"],
                    "subfamily": "",
                    "genus": sp.lineage["genus"],
                    "species": species,
                    "dna_bin": f"BOLD:AA{sp.taxon_id:04d}",
                    "dna_barcode": "".join(rng.choice("ACGT") for _ in range(40)),
                    "country": "Canada",
                    "province_state": "Ontario",
                    "coord-lat": f"{43 + rng.random():.4f}",
                    "coord-lon": "" if n % 7 == 0 else f"{-80 + rng.random():.4f}",
                    "image_measurement_value": f"{rng.uniform(1, 5):.2f}",
                    "area_fraction": f"{rng.random():.3f}",
                    "scale_factor": "1.0",
                    "inferred_ranks": "0",
                    "split": split,
                    "index_bioscan_1M_insect": "" if n % 3 else str(n),
                    "chunk": chunk,
                }
            )
    path = world.routes / "bioscan5m" / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=BIOSCAN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    w.planted["bioscan_rows"] = len(rows)


def _write_fathomnet(world: SampleWorld, tree: Tree, w: _Writer) -> None:
    rng = w.rng
    fishes = [sp for sp in tree.species if sp.lineage["class"] is None]
    images = []
    n_boxes = 0
    for sp_i, sp in enumerate(fishes):
        for f in range(world.config.fathomnet_frames_per_species):
            frame_w, frame_h = 960, 540
            frame = Image.new("RGB", (frame_w, frame_h), (10, 30, 60 + rng.randint(0, 40)))
            boxes = []
            n_org = 1 + (f % 2)
            for b in range(n_org):
                bw, bh = rng.randint(250, 330), rng.randint(240, 300)
                x = 20 + b * 470 + rng.randint(0, 60)
                y = rng.randint(10, frame_h - bh - 10)
                crop = render_organism(
                    sp.traits, random.Random(rng.getrandbits(32)), (bw, bh), rng.choice(LIFE_STAGES)
                )
                frame.paste(crop, (x, y))
                concept = sp.binomial
                if sp_i == 0 and b == 1:
                    concept = f"{sp.lineage['genus']} ({sp.lineage['genus'][:4]}ella) {sp.lineage['species']}"
                if f == 3 and b == 0:
                    bw += 80  # a box overflowing the frame edge is clipped by the fetch stage
                    x = frame_w - bw + 60
                boxes.append(
                    {
                        "uuid": f"bb-{sp.taxon_id}-{f}-{b}",
                        "concept": concept,
                        "x": x,
                        "y": y,
                        "width": bw,
                        "height": bh,
                        "observer": "yolov5" if b else "annotator",
                        "reviewState": "UNVERIFIED" if b else "VERIFIED",
                        "groupOf": False,
                    }
                )
            if f == 2:
                boxes.append(
                    {
                        "uuid": f"bb-{sp.taxon_id}-{f}-drum",
                        "concept": "55-gallon drum",
                        "x": 700,
                        "y": 300,
                        "width": 230,
                        "height": 230,
                        "observer": "annotator",
                        "reviewState": "VERIFIED",
                        "groupOf": False,
                    }
                )
            n_boxes += len(boxes)
            uuid = f"fn-{sp.taxon_id:06d}-{f:03d}"
            url = w.put(f"fathomnet/static/m3/framegrabs/Doc%20Ricketts/images/{uuid}.png", _png(frame))
            images.append(
                {
                    "id": len(images) + 1,
                    "uuid": uuid,
                    "url": url,
                    "valid": True,
                    "imagingType": "ROV",
                    "width": frame_w,
                    "height": frame_h,
                    "depthMeters": rng.randint(200, 3000),
                    "boundingBoxes": boxes,
                    **({} if f % 3 == 0 else {"latitude": 36.7, "longitude": -122.0}),
                }
            )
    (world.api_data / "fathomnet_images.json").write_text(json.dumps(images))
    w.planted["fathomnet_boxes"] = n_boxes


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_replay(world: SampleWorld) -> None:
    rng = random.Random(world.config.seed + 7)
    for folder, count in (
        (world.replay_train, world.config.replay_train),
        (world.replay_heldout, world.config.replay_heldout),
    ):
        with tarfile.open(folder / "replay-000000.tar", "w") as tar:
            for i in range(count):
                img, caption = render_scene(rng, (128, 128))
                for ext, data in (("jpg", jpeg_bytes(img)), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    info.mtime = 0
                    tar.addfile(info, io.BytesIO(data))
