"""Bad input by hand (SPEC §6): each gets the JSON error, never a 500, and changes nothing.

Every test takes a snapshot of every table (and the media folder) before, sends something
malformed to the endpoints that write, and checks the snapshot after is the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes import ApiHarness, assert_error

API = "/api/v3"

# (method, path, who) of every operation that reads a body; paths use the pet/order/user the fixture makes.
BODY_ENDPOINTS = [
    ("POST", "/pet", "staff"),
    ("PUT", "/pet", "staff"),
    ("POST", "/store/order", "customer"),
    ("PATCH", "/store/order/{order}", "staff"),
    ("POST", "/user", None),
    ("POST", "/user/createWithList", "admin"),
    ("PUT", "/user/the-customer", "customer"),
]


@pytest.fixture
def world(api: ApiHarness) -> Iterator[dict[str, Any]]:
    """A pet, an order for another pet, and the snapshot of it all; after the test, nothing has changed."""
    pet = api.new_pet("Rex", tags=[{"name": "t"}], category={"name": "c"})
    ordered = api.new_pet("Taken")
    order = api.client.post(f"{API}/store/order", json={"petId": ordered["id"]}, headers=api.customer.headers).json()
    inventory = api.inventory()
    before = api.snapshot()
    yield {"pet": pet["id"], "order": order["id"], "inventory": inventory}
    assert api.snapshot() == before
    assert api.inventory() == inventory


def send(api: ApiHarness, world: dict[str, Any], method: str, path: str, who: str | None, **kwargs: Any) -> Any:
    headers = {**kwargs.pop("headers", {}), **(getattr(api, who).headers if who else {})}
    url = f"{API}{path.format(pet=world['pet'], order=world['order'])}"
    return api.client.request(method, url, headers=headers, **kwargs)


def raw_json(body: bytes) -> dict[str, Any]:
    return {"content": body, "headers": {"Content-Type": "application/json"}}


MALFORMED = [
    b"",
    b"{",
    b'{"name": "Rex",}',
    b"{'name': 'Rex'}",
    b'{"name": "Rex"} trailing',
    b"\xff\xfe\x00garbage",
    b'{"name": "\xc3\x28"}',
    b'{"name": NaN, "photoUrls": []}',
    b'{"quantity": Infinity, "petId": 1}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"id": 1' + b"1" * 5000 + b', "name": "x", "photoUrls": []}',
    b'{"\\ud800": 1, "name": "x", "photoUrls": []}',
    b'{"name": "\\udfff", "username": "\\ud800x", "petId": 1, "photoUrls": ["\\ud800"]}',
]


@pytest.mark.parametrize(("method", "path", "who"), BODY_ENDPOINTS)
@pytest.mark.parametrize("body", MALFORMED, ids=lambda b: repr(b[:24]))
def test_malformed_json_is_400(
    api: ApiHarness, world: dict[str, Any], method: str, path: str, who: str | None, body: bytes
) -> None:
    assert_error(send(api, world, method, path, who, **raw_json(body)), 400, "bad_request")


WRONG_SHAPES: list[Any] = [None, 42, "a string", True, [], [1, 2], {"id": {"nested": []}}]


@pytest.mark.parametrize(("method", "path", "who"), [e for e in BODY_ENDPOINTS if "createWithList" not in e[1]])
@pytest.mark.parametrize("body", WRONG_SHAPES, ids=repr)
def test_json_of_the_wrong_shape_is_422(
    api: ApiHarness, world: dict[str, Any], method: str, path: str, who: str | None, body: Any
) -> None:
    assert_error(send(api, world, method, path, who, **raw_json(json.dumps(body).encode())), 422, "validation_error")


@pytest.mark.parametrize("body", [None, 42, "users", {"username": "x"}, [None], [42], [[]]], ids=repr)
def test_create_with_list_of_the_wrong_shape_is_400_or_422(api: ApiHarness, world: dict[str, Any], body: Any) -> None:
    response = send(api, world, "POST", "/user/createWithList", "admin", **raw_json(json.dumps(body).encode()))
    assert_error(response, response.status_code)
    assert response.status_code in (400, 422)


WRONG_TYPES = [
    ("POST", "/pet", "staff", {"name": 5, "photoUrls": []}),
    ("POST", "/pet", "staff", {"name": "x", "photoUrls": [1, 2]}),
    ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "tags": "t"}),
    ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "category": "dogs"}),
    ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "id": "seven"}),
    ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "id": 1.5}),
    ("POST", "/pet", "staff", {"name": ["x"], "photoUrls": []}),
    ("PUT", "/pet", "staff", {"id": "{pet}x", "name": "x", "photoUrls": []}),
    ("POST", "/store/order", "customer", {"petId": "one"}),
    ("POST", "/store/order", "customer", {"petId": 1, "quantity": 1.5}),
    ("POST", "/store/order", "customer", {"petId": 1, "shipDate": 17}),
    ("POST", "/store/order", "customer", {"petId": 1, "shipDate": "17"}),
    ("POST", "/store/order", "customer", {"petId": 1, "shipDate": True}),
    ("POST", "/store/order", "customer", {"petId": 1, "shipDate": "0001-01-01T00:00:00+05:00"}),
    ("PATCH", "/store/order/{order}", "staff", {"status": 3}),
    ("PATCH", "/store/order/{order}", "staff", {"complete": []}),
    ("POST", "/user", None, {"username": "u", "password": 12345}),
    ("POST", "/user", None, {"username": "u", "password": "long-Enough-pw", "userStatus": 2**40}),
    ("PUT", "/user/the-customer", "customer", {"username": None}),
]


@pytest.mark.parametrize(("method", "path", "who", "body"), WRONG_TYPES)
def test_wrong_types_are_422(
    api: ApiHarness, world: dict[str, Any], method: str, path: str, who: str | None, body: dict[str, Any]
) -> None:
    assert_error(send(api, world, method, path, who, json=body), 422, "validation_error")


UNKNOWN_FIELDS = [
    ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "owner": "me"}),
    ("PUT", "/pet", "staff", {"id": 1, "name": "x", "photoUrls": [], "status": "sold", "price": 3}),
    ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "category": {"name": "c", "parent": 1}}),
    ("POST", "/store/order", "customer", {"petId": 1, "userId": 1}),
    ("PATCH", "/store/order/{order}", "staff", {"petId": 1}),
    ("POST", "/user", None, {"username": "u", "password": "long-Enough-pw", "role": "admin"}),
    ("PUT", "/user/the-customer", "customer", {"username": "the-customer", "passwordHash": "x"}),
]


@pytest.mark.parametrize(("method", "path", "who", "body"), UNKNOWN_FIELDS)
def test_unknown_fields_are_422(
    api: ApiHarness, world: dict[str, Any], method: str, path: str, who: str | None, body: dict[str, Any]
) -> None:
    response = send(api, world, method, path, who, json=body)
    assert_error(response, 422, "validation_error")
    assert "extra" in response.json()["message"].lower() or "not permitted" in response.json()["message"].lower()


@pytest.mark.parametrize(("method", "path", "who"), BODY_ENDPOINTS)
def test_a_body_beyond_the_limit_is_413(
    api: ApiHarness, world: dict[str, Any], method: str, path: str, who: str | None
) -> None:
    limit = api.state.settings.max_body_bytes
    huge = b'{"name": "' + b"x" * limit + b'", "photoUrls": []}'
    assert_error(send(api, world, method, path, who, **raw_json(huge)), 413, "payload_too_large")


def test_a_declared_length_beyond_the_limit_is_413_before_reading(api: ApiHarness, world: dict[str, Any]) -> None:
    limit = api.state.settings.max_body_bytes
    response = send(api, world, "POST", "/pet", "staff", content=b"{}", headers={"Content-Length": str(limit + 1)})
    assert response.status_code in (400, 413)  # the transport may refuse a lying Content-Length first
    assert_error(response, response.status_code)


@pytest.mark.parametrize(
    ("method", "path", "who"),
    [e for e in BODY_ENDPOINTS if e[1] not in ("/user/createWithList", "/store/order/{order}")],
)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "multipart/form-data; boundary=x", "image/png", "nonsense"]
)
def test_a_wrong_content_type_is_415(
    api: ApiHarness, world: dict[str, Any], method: str, path: str, who: str | None, content_type: str
) -> None:
    response = send(
        api, world, method, path, who, content=b'{"name": "x", "photoUrls": []}', headers={"Content-Type": content_type}
    )
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ["/user/createWithList", "/store/order/{order}"])
def test_json_only_endpoints_refuse_form_bodies_with_415(api: ApiHarness, world: dict[str, Any], path: str) -> None:
    method, who = ("POST", "admin") if "createWithList" in path else ("PATCH", "staff")
    response = send(
        api,
        world,
        method,
        path,
        who,
        content=b"username=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 415, "unsupported_media_type")


# ---------------------------------------------------------------------------- ids and limits


BIG = [str(2**63), str(2**64), "9" * 30, "9" * 5000, "-1", "-9223372036854775809", "1e3", "0x10", "1_0", "+1"]


@pytest.mark.parametrize("raw", [*BIG, " 1", "%D9%A3", "1.0", "NaN", "%00"])
@pytest.mark.parametrize(
    ("method", "template", "who"),
    [
        ("GET", "/pet/{}", None),
        ("POST", "/pet/{}?name=x", "staff"),
        ("DELETE", "/pet/{}", "staff"),
        ("POST", "/pet/{}/uploadImage", "staff"),
        ("GET", "/store/order/{}", "staff"),
        ("PATCH", "/store/order/{}", "staff"),
        ("DELETE", "/store/order/{}", "staff"),
    ],
)
def test_ids_that_are_not_int64_are_400(
    api: ApiHarness, world: dict[str, Any], raw: str, method: str, template: str, who: str | None
) -> None:
    kwargs: dict[str, Any] = {}
    if method == "PATCH":
        kwargs["json"] = {"status": "delivered"}
    if "uploadImage" in template:
        kwargs.update(content=b"\x89PNG\r\n\x1a\n....", headers={"Content-Type": "application/octet-stream"})
    assert_error(send(api, world, method, template.format(raw), who, **kwargs), 400, "bad_request")


@pytest.mark.parametrize("body_id", [2**63, 2**64, -1, -(2**63) - 1, 10**30])
def test_body_ids_beyond_int64_are_422(api: ApiHarness, world: dict[str, Any], body_id: int) -> None:
    for method, path, who, body in [
        ("POST", "/pet", "staff", {"id": body_id, "name": "x", "photoUrls": []}),
        ("PUT", "/pet", "staff", {"id": body_id, "name": "x", "photoUrls": []}),
        ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "tags": [{"id": body_id}]}),
        ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "category": {"id": body_id}}),
        ("POST", "/store/order", "customer", {"petId": body_id}),
        ("POST", "/store/order", "customer", {"petId": world["pet"], "id": body_id}),
        ("POST", "/user", None, {"id": body_id, "username": "u", "password": "long-Enough-pw"}),
    ]:
        assert_error(send(api, world, method, path, who, json=body), 422, "validation_error")


@pytest.mark.parametrize(
    "query",
    ["limit=-1", "offset=-1", "limit=-0x1", "limit=1001", "limit=%00", "offset=99999999999999999999", "limit=1e2"],
)
@pytest.mark.parametrize("path", ["/pet/findByStatus?status=available&", "/pet/findByTags?tags=t&", "/store/orders?"])
def test_bad_limits_and_offsets_are_400(api: ApiHarness, world: dict[str, Any], query: str, path: str) -> None:
    assert_error(send(api, world, "GET", path + query, "staff"), 400, "bad_request")


@pytest.mark.parametrize("query", ["status=%00", "status=available%00", "status=" + "x" * 10_000, "status=%ED%A0%80"])
def test_odd_status_values_are_400(api: ApiHarness, world: dict[str, Any], query: str) -> None:
    assert_error(send(api, world, "GET", f"/pet/findByStatus?{query}", None), 400, "bad_request")


@pytest.mark.parametrize("tag", ["%00", "a%00b", "%ED%A0%80", "\u202eevil", "🐶", "x" * 255])
def test_odd_tags_find_nothing_and_never_fail(api: ApiHarness, world: dict[str, Any], tag: str) -> None:
    response = send(api, world, "GET", f"/pet/findByTags?tags={tag}", None)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert response.json() == []
    else:
        assert_error(response, 400, "bad_request")


# --------------------------------------------------------------------------------- Unicode


NASTY_STRINGS = ["nul\x00inside", "\x00", "x" * 10_000, "a" * 256]


@pytest.mark.parametrize("value", NASTY_STRINGS, ids=["nul", "only-nul", "10k", "256"])
@pytest.mark.parametrize(
    "make",
    [
        lambda v: ("POST", "/pet", "staff", {"name": v, "photoUrls": []}),
        lambda v: ("POST", "/pet", "staff", {"name": "x", "photoUrls": [v * 9 if len(v) > 255 else v]}),
        lambda v: ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "tags": [{"name": v}]}),
        lambda v: ("POST", "/pet", "staff", {"name": "x", "photoUrls": [], "category": {"name": v}}),
        lambda v: ("POST", "/user", None, {"username": "u", "password": "long-Enough-pw", "firstName": v}),
        lambda v: ("POST", "/user", None, {"username": v, "password": "long-Enough-pw"}),
        lambda v: ("POST", "/user", None, {"username": "u", "password": v if "\x00" in v else "p" * 1025}),
    ],
    ids=["pet-name", "photo-url", "tag", "category", "first-name", "username", "password"],
)
def test_strings_the_database_cannot_or_must_not_hold_are_422(
    api: ApiHarness, world: dict[str, Any], value: str, make: Any
) -> None:
    method, path, who, body = make(value)
    assert_error(send(api, world, method, path, who, json=body), 422, "validation_error")


def test_nul_in_a_form_body_is_422(api: ApiHarness, world: dict[str, Any]) -> None:
    response = send(
        api,
        world,
        "POST",
        "/pet",
        "staff",
        content=b"name=a%00b&photoUrls=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 422, "validation_error")
    response = send(api, world, "POST", f"/pet/{world['pet']}?name=a%00b", "staff")
    assert_error(response, 422, "validation_error")


def test_a_form_body_that_is_not_utf8_is_400(api: ApiHarness, world: dict[str, Any]) -> None:
    response = send(
        api,
        world,
        "POST",
        "/pet",
        "staff",
        content=b"name=\xff\xfe",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 400, "bad_request")


@pytest.mark.parametrize(
    "name",
    [
        "\u202eRTL override\u202c",
        "مرحبا",
        "🐶🐱 emoji ZWJ 👩‍👩‍👧",
        "e\u0301 combining",
        "\ufeffBOM",
        "\U0001d518\U0001d52b\U0001d526",
    ],
)
def test_odd_but_valid_unicode_round_trips_exactly(api: ApiHarness, name: str) -> None:
    pet = api.new_pet(name, tags=[{"name": name}], category={"name": name}, photoUrls=[name])
    again = api.client.get(f"{API}/pet/{pet['id']}").json()
    assert again["name"] == again["tags"][0]["name"] == again["category"]["name"] == again["photoUrls"][0] == name
    found = api.client.get(f"{API}/pet/findByTags", params={"tags": name}).json()
    assert [p["id"] for p in found] == [pet["id"]]
