"""CORS (``petstore.cors``): Starlette's middleware, with a refused preflight in the JSON error shape."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from tests.fakes import make_app

ALLOWED = "http://127.0.0.1:8000"  # in the default PETSTORE_ALLOWED_ORIGINS
PETS = "/api/v3/pet/findByStatus"


def test_a_preflight_from_a_refused_origin_gets_the_json_error_shape(tmp_path: Path) -> None:
    with TestClient(make_app(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", media_dir=tmp_path / "m")) as client:
        refused = client.options(
            PETS, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/json"
        assert refused.json() == {
            "code": 403,
            "type": "forbidden",
            "message": "Disallowed CORS origin: this origin may not call this API",
        }
        assert "access-control-allow-origin" not in refused.headers
        # An allowed origin asking for a method or header that is not allowed: 400, JSON too.
        method = client.options(PETS, headers={"Origin": ALLOWED, "Access-Control-Request-Method": "TRACE"})
        assert method.status_code == 400 and method.json()["type"] == "bad_request"
        assert method.json()["message"] == "Disallowed CORS method"
        assert method.headers["access-control-allow-origin"] == ALLOWED
        # And what is allowed is Starlette's answer, unchanged.
        ok = client.options(
            PETS,
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ALLOWED
