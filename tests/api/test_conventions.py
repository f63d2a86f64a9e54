"""What every answer carries (SPEC §2): request ids, security headers, gzip, ETags, the access log."""

from __future__ import annotations

import gzip
import json
import logging
from typing import Any

import pytest

from petstore.conventions import DASHBOARD_CSP, DOCS_CSP
from petstore.logs import JsonFormatter, RequestContext
from tests.fakes import ApiHarness

API = "/api/v3"

SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


# ------------------------------------------------------------------------------- X-Request-ID


def test_a_request_id_is_generated_and_a_good_one_echoed(api: ApiHarness) -> None:
    generated = api.client.get(f"{API}/store/inventory").headers["x-request-id"]
    assert len(generated) == 32 and generated != api.client.get(f"{API}/store/inventory").headers["x-request-id"]
    mine = "trace-" + "x" * 100 + "~!"
    assert api.client.get(f"{API}/store/inventory", headers={"X-Request-ID": mine}).headers["x-request-id"] == mine


@pytest.mark.parametrize("bad", ["", "x" * 129, "has space", "tab\there", "é"])
def test_a_request_id_that_is_not_1_to_128_visible_ascii_characters_is_replaced(api: ApiHarness, bad: str) -> None:
    response = api.client.get(f"{API}/store/inventory", headers={"X-Request-ID": bad.encode("utf-8")})
    echoed = response.headers["x-request-id"]
    assert echoed != bad and len(echoed) == 32


def test_errors_and_unmatched_paths_carry_the_conventions_too(api: ApiHarness) -> None:
    for response in (
        api.client.get(f"{API}/pet/0"),
        api.client.get("/no/such/path"),
        api.client.post(f"{API}/pet", json={"name": "x", "photoUrls": []}),  # 401 from the check
    ):
        assert response.status_code >= 400
        assert {name: response.headers.get(name) for name in SECURITY} == SECURITY
        assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert response.headers["x-request-id"]


def test_every_log_line_of_a_request_names_it(api: ApiHarness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestContext())
    with caplog.at_level(logging.INFO):
        created = api.client.post(
            f"{API}/pet",
            json={"name": "Logged", "photoUrls": []},
            headers={**api.staff.headers, "X-Request-ID": "req-1"},
        )
    mine = [record for record in caplog.records if record.name.startswith("petstore")]
    assert {record.name for record in mine} == {"petstore.audit", "petstore.access"}
    assert all(getattr(record, "request_id", None) == "req-1" for record in mine)
    (access,) = (record for record in mine if record.name == "petstore.access")
    assert (access.method, access.route, access.status, access.user) == ("POST", "/api/v3/pet", 200, "the-staff")  # type: ignore[attr-defined]
    (audit,) = (record for record in mine if record.name == "petstore.audit")
    fields = ("actor", "operation", "target", "status", "result")
    assert tuple(getattr(audit, name) for name in fields) == (
        "the-staff",
        "addPet",
        f"id={created.json()['id']}",
        200,
        "ok",
    )


def test_every_write_is_audited_with_its_result(api: ApiHarness, caplog: pytest.LogCaptureFixture) -> None:
    pet = api.new_pet("Audited")
    with caplog.at_level(logging.INFO, logger="petstore.audit"):
        api.client.delete(f"{API}/pet/{pet['id']}", headers=api.customer.headers)  # 403
        api.client.delete(f"{API}/pet/{pet['id']}", headers=api.staff.headers)
        api.client.delete(f"{API}/pet/{pet['id']}", headers=api.staff.headers)  # 404 now
        api.client.get(f"{API}/pet/{pet['id']}")  # a read: not audited
    lines = [
        (r.actor, r.operation, r.target, r.status, r.result)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "petstore.audit"
    ]
    target = f"petId={pet['id']}"
    assert lines == [
        ("the-customer", "deletePet", target, 403, "forbidden"),
        ("the-staff", "deletePet", target, 200, "ok"),
        ("the-staff", "deletePet", target, 404, "not_found"),
    ]


# ---------------------------------------------------------------------------- security headers


def test_the_dashboard_and_swagger_ui_have_a_csp_with_no_inline_script(api: ApiHarness) -> None:
    for path, csp in (("/", DASHBOARD_CSP), ("/docs", DOCS_CSP)):
        response = api.client.get(path)
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == csp
        script = next(part for part in csp.split(";") if part.strip().startswith("script-src"))
        assert script.split() == ["script-src", "'self'"]
        assert "frame-ancestors 'none'" in csp
        assert "<script>" not in response.text  # every script is a file


def test_an_upload_keeps_its_own_stricter_policy(api: ApiHarness) -> None:
    pet = api.new_pet("Pic")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    uploaded = api.client.post(
        f"{API}/pet/{pet['id']}/uploadImage",
        content=png,
        headers={**api.staff.headers, "Content-Type": "application/octet-stream"},
    )
    assert uploaded.status_code == 200, uploaded.text
    url = api.client.get(f"{API}/pet/{pet['id']}").json()["photoUrls"][-1]
    media = api.client.get(url.removeprefix("http://testserver"))
    assert media.status_code == 200
    assert media.headers.get_list("content-security-policy") == ["default-src 'none'; img-src 'self'; sandbox"]
    assert media.headers.get_list("x-content-type-options") == ["nosniff"]


# ------------------------------------------------------------------------------------- gzip


def test_large_bodies_are_gzipped_when_the_client_accepts_it(api: ApiHarness) -> None:
    for n in range(60):
        api.new_pet(f"pet number {n} with a name long enough to pass a kilobyte")
    plain = api.client.get(f"{API}/pet/findByStatus", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    zipped = api.client.get(f"{API}/pet/findByStatus", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in zipped.headers["vary"].lower()
    with api.client.stream("GET", f"{API}/pet/findByStatus", headers={"Accept-Encoding": "gzip"}) as stream:
        raw = b"".join(stream.iter_raw())
    assert len(raw) < len(plain.content) / 3
    assert json.loads(gzip.decompress(raw)) == plain.json() == zipped.json()


def test_small_bodies_are_not_gzipped(api: ApiHarness) -> None:
    response = api.client.get(f"{API}/store/inventory", headers={"Accept-Encoding": "gzip"})
    assert len(response.content) < 1024
    assert "content-encoding" not in response.headers


def test_the_swagger_bundle_is_gzipped(api: ApiHarness) -> None:
    with api.client.stream("GET", "/docs/assets/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"}) as stream:
        assert stream.headers["content-encoding"] == "gzip"
        raw = b"".join(stream.iter_raw())
    assert len(raw) < 600_000 and len(gzip.decompress(raw)) > 1_000_000


# ------------------------------------------------------------------------------------- ETags


def _etag_round(api: ApiHarness, path: str, headers: dict[str, str] | None = None) -> str:
    first = api.client.get(path, headers=headers)
    assert first.status_code == 200, first.text
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    again = api.client.get(path, headers={**(headers or {}), "If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    stale = api.client.get(path, headers={**(headers or {}), "If-None-Match": 'W/"stale", "other"'})
    assert stale.status_code == 200 and stale.json() == first.json()
    star = api.client.get(path, headers={**(headers or {}), "If-None-Match": "*"})
    assert star.status_code == 304
    return etag


def test_a_pets_etag_changes_exactly_when_its_json_does(api: ApiHarness) -> None:
    pet = api.new_pet("Etag")
    path = f"{API}/pet/{pet['id']}"
    before = _etag_round(api, path)
    same = api.client.put(f"{API}/pet", json={**pet}, headers=api.staff.headers)
    assert same.status_code == 200 and same.json() == pet
    assert _etag_round(api, path) == before  # a write that left the JSON as it was
    renamed = api.client.put(f"{API}/pet", json={**pet, "name": "Renamed"}, headers=api.staff.headers)
    assert renamed.status_code == 200
    after = _etag_round(api, path)
    assert after != before
    old = api.client.get(path, headers={"If-None-Match": before})
    assert old.status_code == 200 and old.json()["name"] == "Renamed"


def test_the_inventory_etag_follows_the_counts(api: ApiHarness) -> None:
    before = _etag_round(api, f"{API}/store/inventory")
    api.new_pet("Counted")
    assert _etag_round(api, f"{API}/store/inventory") != before


def test_an_orders_etag_is_private_and_follows_its_status(api: ApiHarness) -> None:
    pet = api.new_pet("Ordered")
    order = api.client.post(f"{API}/store/order", json={"petId": pet["id"]}, headers=api.customer.headers).json()
    path = f"{API}/store/order/{order['id']}"
    response = api.client.get(path, headers=api.customer.headers)
    assert response.headers["cache-control"] == "private, no-cache"
    before = _etag_round(api, path, api.customer.headers)
    changed = api.client.patch(path, json={"status": "approved"}, headers=api.staff.headers)
    assert changed.status_code == 200, changed.text
    assert _etag_round(api, path, api.customer.headers) != before


def test_a_users_etag_is_private_and_follows_the_account(api: ApiHarness) -> None:
    me = api.user("etagged")
    path = f"{API}/user/{me.username}"
    assert api.client.get(path, headers=me.headers).headers["cache-control"] == "private, no-cache"
    before = _etag_round(api, path, me.headers)
    changed = api.client.put(path, json={"username": me.username, "email": "new@example.org"}, headers=me.headers)
    assert changed.status_code == 200, changed.text
    assert _etag_round(api, path, me.headers) != before


def test_a_conditional_read_still_checks_who_is_asking(api: ApiHarness) -> None:
    pet = api.new_pet("Mine")
    order = api.client.post(f"{API}/store/order", json={"petId": pet["id"]}, headers=api.customer.headers).json()
    path = f"{API}/store/order/{order['id']}"
    etag = api.client.get(path, headers=api.customer.headers).headers["etag"]
    stranger = api.user("stranger")
    assert api.client.get(path, headers={**stranger.headers, "If-None-Match": etag}).status_code == 404
    assert api.client.get(path, headers={"If-None-Match": etag}).status_code == 401


def test_the_document_declares_the_etag_and_the_304(api: ApiHarness) -> None:
    document = api.client.get(f"{API}/openapi.json").json()
    for path, method in (
        ("/pet/{petId}", "get"),
        ("/store/order/{orderId}", "get"),
        ("/user/{username}", "get"),
        ("/store/inventory", "get"),
    ):
        operation = document["paths"][path][method]
        assert "ETag" in operation["responses"]["200"]["headers"]
        assert "304" in operation["responses"]
        assert "content" not in operation["responses"]["304"]
        assert any(param["name"] == "If-None-Match" for param in operation["parameters"])


# ---------------------------------------------------------------------------------- JSON logs


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("petstore.access", logging.INFO, "", 0, "%s done", ("GET",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_a_json_line_has_the_contract_keys() -> None:
    line = json.loads(JsonFormatter().format(_record(request_id="r1", method="GET", status=200, duration_ms=1.5)))
    assert line["level"] == "INFO" and line["logger"] == "petstore.access" and line["message"] == "GET done"
    assert line["request_id"] == "r1" and line["method"] == "GET" and line["status"] == 200
    assert line["ts"].endswith("Z") and "T" in line["ts"]
