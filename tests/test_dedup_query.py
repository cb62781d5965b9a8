"""`tol dedup query IMAGE...` and `tol versions which RECORD_ID`: one image, or one record, against the catalog."""

from __future__ import annotations

import json

import numpy as np

from flows.cli import main
from warehouse.lake import read_image_blobs


def _run(capsys, *argv) -> object:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_a_planted_near_duplicate_is_found_with_its_decision_and_versions(curated, tmp_path, capsys):
    pair = curated.query_arrow(
        """SELECT d.record_id AS dup, d.duplicate_of AS orig, l.blob, l.blob_offset, l.bytes
           FROM dedup_decisions d JOIN image_locations l ON l.record_id = d.duplicate_of
           WHERE d.reason = 'near_duplicate' ORDER BY d.record_id LIMIT 1"""
    ).to_pylist()[0]
    image = tmp_path / "mine.jpg"
    image.write_bytes(read_image_blobs(curated.home, [(pair["blob"], pair["blob_offset"], pair["bytes"])])[0])
    (out,) = _run(capsys, "--home", str(curated.home), "dedup", "query", str(image), "--k", "8")
    hits = {h["record_id"]: h for h in out["hits"]}
    assert pair["orig"] in hits and pair["dup"] in hits
    orig, dup = hits[pair["orig"]], hits[pair["dup"]]
    assert orig["dedup_kept"] and orig["source"] and orig["license"]
    assert (
        not dup["dedup_kept"]
        and dup["dedup_reason"] == "near_duplicate"
        and dup["duplicate_of"] == pair["orig"]
    )
    assert [h["distance"] for h in out["hits"]] == sorted(h["distance"] for h in out["hits"])
    # The answer equals a brute-force scan of the catalog's hashes.
    rows = curated.query_arrow("SELECT record_id, phash FROM images WHERE status = 'ok'").to_pylist()
    q = np.uint64(out["phash"] & (2**64 - 1))
    near = {
        r["record_id"] for r in rows if int(np.bitwise_count(np.uint64(r["phash"] & (2**64 - 1)) ^ q)) <= 8
    }
    assert near == set(hits)
    # Which versions hold the original: t1 (built from the kept images).
    assert "t1" in orig["versions"]
    where = _run(capsys, "--home", str(curated.home), "versions", "which", pair["orig"])
    assert {w["version"] for w in where} >= {"t1"} and all(w["shard"] for w in where)
    assert _run(capsys, "--home", str(curated.home), "versions", "which", pair["dup"]) == []


def test_an_evaluation_image_finds_its_leak(curated, world, capsys):
    leak = curated.query_arrow(
        "SELECT count(*) AS n FROM dedup_decisions WHERE reason LIKE 'eval_leak:%'"
    ).to_pylist()[0]["n"]
    assert leak > 0
    images = sorted(p for p in world.eval_dir.rglob("*.jpg"))
    found = _run(capsys, "--home", str(curated.home), "dedup", "query", *map(str, images), "--k", "8")
    leaks = [h for q in found for h in q["hits"] if h["eval_leak"]]
    assert leaks and all(h["dedup_reason"].startswith("eval_leak:") and not h["versions"] for h in leaks)


def test_pdq_hits_where_images_were_fetched_with_pdq(tmp_path, capsys):
    """Images fetched with --pdq are also found by their 256-bit PDQ hash (`--pdq-k`), as a brute-force
    popcount over the stored hashes says; without --pdq-k the answer is the pHash one."""
    import io
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    from tests.test_gbif_dwca import write_dwca
    from tests.tolcli import tol

    def jpeg(seed: int, size=(320, 256)) -> bytes:
        rgb = np.random.default_rng(seed).integers(0, 255, (size[1] // 32, size[0] // 32, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).resize(size, Image.NEAREST).save(buf, "JPEG", quality=90)
        return buf.getvalue()

    images = {f"/{i}.jpg": jpeg(i) for i in range(4)}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = images.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        cases = [
            ({"basisOfRecord": "HUMAN_OBSERVATION"}, [{"type": "StillImage", "identifier": base + p}])
            for p in images
        ]
        write_dwca(tmp_path / "dwca.zip", cases)
        home = tmp_path / "home"
        tol(home, "ingest", "gbif", "--path", str(tmp_path / "dwca.zip"))
        tol(home, "fetch", "--workers", "1", "--allow-private-hosts", "--pdq")
    finally:
        srv.shutdown()
    query = tmp_path / "q.jpg"
    query.write_bytes(images["/2.jpg"])
    (out,) = _run(capsys, "--home", str(home), "dedup", "query", str(query), "--k", "0", "--pdq-k", "256")
    assert out["pdq"] and len(out["pdq"]) == 64
    stored = json.loads(tol(home, "sql", "SELECT record_id, pdq_hex FROM images", "--format", "json").stdout)
    brute = {r["record_id"]: bin(int(r["pdq_hex"], 16) ^ int(out["pdq"], 16)).count("1") for r in stored}
    assert {h["record_id"]: h["pdq_distance"] for h in out["hits"]} == brute  # k=256: every image
    assert sorted(brute.values())[0] == 0
    (tight,) = _run(capsys, "--home", str(home), "dedup", "query", str(query), "--k", "0", "--pdq-k", "10")
    assert {h["record_id"] for h in tight["hits"]} == {r for r, d in brute.items() if d <= 10}
    (plain,) = _run(capsys, "--home", str(home), "dedup", "query", str(query), "--k", "0")
    assert plain["pdq"] is None and all(h["pdq_distance"] is None for h in plain["hits"])
