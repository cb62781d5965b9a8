import pytest

from etl.ingest.records import normalize_license, record_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://creativecommons.org/licenses/by-nc/4.0/legalcode", "CC-BY-NC-4.0"),
        ("http://creativecommons.org/licenses/by/4.0/", "CC-BY-4.0"),
        ("https://creativecommons.org/licenses/by-sa/4.0/", "CC-BY-SA-4.0"),
        ("http://creativecommons.org/publicdomain/zero/1.0/legalcode", "CC0-1.0"),
        ("CC_BY_NC_4_0", "CC-BY-NC-4.0"),
        ("CC0_1_0", "CC0-1.0"),
        ("CC BY-NC 4.0", "CC-BY-NC-4.0"),
        ("cc-by", "CC-BY"),
        ("cc-by-nc-sa-3.0", "CC-BY-NC-SA-3.0"),
        ("public domain", "public-domain"),
        ("No known copyright restrictions", "public-domain"),
        ("Usage Conditions Apply", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_license_forms(raw, expected):
    assert normalize_license(raw) == expected


def test_record_id_is_deterministic_and_distinct():
    a = record_id("gbif", "1", "http://x/1.jpg")
    assert a == record_id("gbif", "1", "http://x/1.jpg")
    assert a != record_id("gbif", "1", "http://x/2.jpg")
    assert a != record_id("eol", "1", "http://x/1.jpg")
