"""Fetch honours the hosts' opt-out signals: robots.txt, TDMRep (file and header) and X-Robots-Tag noai; each
reserved image ends with its own drop reason, and `honour` chooses the signals."""

import io
import json

import pytest
from PIL import Image

from etl.fetch import stage as fetch_stage
from etl.fetch.optout import noai
from etl.fetch.stage import FetchConfig, fetch_one
from tests.httpd import ScriptedServer
from warehouse.contracts import DROP_REASONS, OPT_OUT_DROP_REASONS


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 260), (20, 120, 40)).save(buf, "JPEG")
    return buf.getvalue()


# One origin per signal, as hosts publish them (each server is its own origin: its own port).
SITES = {
    "robots": {
        "/robots.txt": (200, b"User-agent: *\nDisallow: /private/\nAllow: /private/shared/\n", {}),
    },
    "tdmrep": {
        "/.well-known/tdmrep.json": (
            200,
            json.dumps(
                [
                    {"location": "/reserved/*", "tdm-reservation": 1, "tdm-policy": "https://x/policy.json"},
                    {"location": "/*", "tdm-reservation": 0},
                ]
            ).encode(),
            {},
        ),
        "/header.jpg": (200, None, {"tdm-reservation": "1"}),
    },
    "noai": {"/tagged.jpg": (200, None, {"X-Robots-Tag": "googlebot: noindex, noimageai"})},
    "broken_robots": {"/robots.txt": (503, b"down", {})},
}


def _site(routes) -> ScriptedServer:
    """A host whose policy files and images are `routes`; any other .jpg is an image, anything else 404."""

    def answer(path: str):
        status, body, headers = routes.get(path, (None, None, {}))
        if status is None:
            status, body = (200, None) if path.endswith(".jpg") else (404, b"")
        return status, _jpeg() if body is None else body, headers

    return ScriptedServer(answer)


@pytest.fixture(scope="module")
def sites():
    servers = {name: _site(routes) for name, routes in SITES.items()}
    yield {name: (srv.base, srv.seen) for name, srv in servers.items()}
    for srv in servers.values():
        srv.close()


@pytest.fixture(autouse=True)
def _fresh_policies():
    fetch_stage._policies.clear()
    yield
    fetch_stage._policies.clear()


def _status(url: str, **cfg) -> str:
    out = fetch_one({"record_id": "r", "media_url": url}, FetchConfig(allow_private_hosts=True, **cfg))
    return out["status"]


def test_each_signal_reserves_its_images_with_its_own_reason(sites):
    robots, tdm, tag, broken = (sites[k][0] for k in ("robots", "tdmrep", "noai", "broken_robots"))
    assert _status(f"{robots}/private/a.jpg") == "robots_disallowed"
    assert _status(f"{robots}/private/shared/b.jpg") == "ok"  # the longer Allow wins (RFC 9309)
    assert _status(f"{robots}/public/c.jpg") == "ok"
    assert _status(f"{tdm}/reserved/d.jpg") == "tdm_reserved"
    assert _status(f"{tdm}/open/e.jpg") == "ok"
    assert _status(f"{tdm}/header.jpg") == "tdm_reserved"
    assert _status(f"{tag}/tagged.jpg") == "noai"
    assert _status(f"{tag}/plain.jpg") == "ok"
    assert _status(f"{broken}/any.jpg") == "robots_disallowed"  # an unreadable robots.txt disallows all
    assert noai({"X-Robots-Tag": "noai"}) and not noai({"X-Robots-Tag": "noindex, nofollow"})
    for reason in OPT_OUT_DROP_REASONS.values():
        assert DROP_REASONS[reason].stage == "fetch"


def test_policy_files_are_read_once_per_origin(sites):
    base, seen = sites["robots"]
    seen.clear()
    for i in range(5):
        _status(f"{base}/public/{i}.jpg")
    assert seen.count("/robots.txt") == 1 and seen.count("/.well-known/tdmrep.json") == 1


def test_honour_chooses_the_signals(sites):
    robots, tdm, tag = (sites[k][0] for k in ("robots", "tdmrep", "noai"))
    assert _status(f"{robots}/private/a.jpg", honour=("tdmrep", "noai")) == "ok"
    assert _status(f"{tag}/tagged.jpg", honour=("robots",)) == "ok"
    assert _status(f"{tdm}/header.jpg", honour=("none",)) == "ok"
    base, seen = sites["noai"]
    seen.clear()
    _status(f"{base}/x.jpg", honour=("none",))
    assert seen == ["/x.jpg"]  # honouring nothing reads no policy file
    with pytest.raises(ValueError, match="unknown opt-out"):
        FetchConfig(honour=("robots", "ads"))
    with pytest.raises(ValueError, match="`none` cannot"):
        FetchConfig(honour=("none", "robots"))


def test_the_fetch_command_honours_opt_outs_and_counts_them(sites, tmp_path):
    """`tol ingest gbif --path` of a DwC-A whose images sit on the opt-out hosts, then `tol fetch`: each
    reserved image ends with its reason; `tol fetch --retry-failed` leaves them (they are not transient)."""
    from tests.test_gbif_dwca import write_dwca
    from tests.tolcli import tol

    robots, tdm, tag = (sites[k][0] for k in ("robots", "tdmrep", "noai"))
    urls = [f"{robots}/private/a.jpg", f"{tdm}/reserved/b.jpg", f"{tag}/tagged.jpg", f"{robots}/public/c.jpg"]
    cases = [
        ({"basisOfRecord": "HUMAN_OBSERVATION"}, [{"type": "StillImage", "identifier": u}]) for u in urls
    ]
    write_dwca(tmp_path / "dwca.zip", cases)
    home = tmp_path / "home"
    tol(home, "ingest", "gbif", "--path", str(tmp_path / "dwca.zip"))
    tol(home, "fetch", "--workers", "1", "--allow-private-hosts")
    query = "SELECT status, count(*) AS n FROM images GROUP BY 1 ORDER BY 1"
    got = tol(home, "sql", query, "--format", "json").stdout
    counts = {r["status"]: r["n"] for r in json.loads(got)}
    assert counts == {"noai": 1, "ok": 1, "robots_disallowed": 1, "tdm_reserved": 1}, counts


def test_a_recipe_chooses_the_signals(tmp_path):
    from flows.recipe import load_recipe

    for honour, expected in (("[robots]", ("robots",)), ("[]", ())):
        (tmp_path / "r.yaml").write_text(f"name: t\ncurate:\n  fetch:\n    honour: {honour}\n")
        assert load_recipe(tmp_path / "r.yaml").spec.curate.fetch.honour == expected
    (tmp_path / "r.yaml").write_text("name: t\ncurate:\n  fetch:\n    honour: [robots, ads]\n")
    with pytest.raises(Exception, match="unknown opt-out"):
        load_recipe(tmp_path / "r.yaml")
