"""``petstore serve``'s log lines (PETSTORE_LOG_FORMAT): one JSON object per line, every line of a
request naming it, and never a token or a password, through the logins that carry them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.realtime.support import until
from tests.services import UvicornServer

pytestmark = pytest.mark.process

PETSTORE = Path(sys.executable).with_name("petstore")
PASSWORD = "log-test-password-9"
SECRET = "logging-test-secret-0123456789abcdefghij"
KEYS = {"ts", "level", "logger", "message", "request_id"}
ACCESS_KEYS = KEYS | {"method", "route", "status", "duration_ms", "user"}


def environment(tmp_path: Path, log_format: str) -> dict[str, str]:
    return {
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}",
        "PETSTORE_JWT_SECRET": SECRET,
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
        "PETSTORE_LOG_FORMAT": log_format,
    }


@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[UvicornServer]:
    env = environment(tmp_path, "json")
    for args in (["migrate"], ["users", "create", "logger", "--password", PASSWORD, "--role", "staff"]):
        subprocess.run([str(PETSTORE), *args], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    command = [str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}"]
    with UvicornServer(env=env, command=command, cwd=tmp_path) as server:
        yield server


def lines(server: UvicornServer) -> list[dict[str, Any]]:
    text = server.log_path.read_text()
    parsed = []
    for line in text.splitlines():
        if line.strip():
            parsed.append(json.loads(line))  # every line is one JSON object, or this raises
    return parsed


def test_json_lines_carry_the_request_and_never_a_secret(json_server: UvicornServer) -> None:
    api = f"{json_server.url}/api/v3"
    with httpx.Client(timeout=10) as http:
        token = http.post(
            f"{api}/auth/token", data={"username": "logger", "password": PASSWORD}, headers={"X-Request-ID": "login-1"}
        ).json()
        access, refresh = token["access_token"], token["refresh_token"]
        refreshed = http.post(f"{api}/auth/refresh", json={"refresh_token": refresh}, headers={"X-Request-ID": "re-1"})
        assert refreshed.status_code == 200, refreshed.text
        legacy = http.get(
            f"{api}/user/login", params={"username": "logger", "password": PASSWORD}, headers={"X-Request-ID": "get-1"}
        )
        assert legacy.status_code == 200, legacy.text
        created = http.post(
            f"{api}/pet",
            json={"name": "Logged", "photoUrls": []},
            headers={"Authorization": f"Bearer {access}", "X-Request-ID": "pet-1"},
        )
        assert created.status_code == 200, created.text
        assert http.get(f"{api}/pet/999999", headers={"X-Request-ID": "miss-1"}).status_code == 404

    def written() -> list[dict[str, Any]]:
        return [line for line in lines(json_server) if line.get("request_id") == "miss-1"]

    # The access line of the last request is written when its answer is: wait for it.
    asyncio.run(until(written, "the last access line"))
    logged = lines(json_server)
    assert all(line.keys() >= KEYS for line in logged), [line for line in logged if not line.keys() >= KEYS]
    by_request = {rid: [line for line in logged if line["request_id"] == rid] for rid in ("login-1", "re-1", "pet-1")}
    for rid, mine in by_request.items():
        access_lines = [line for line in mine if line["logger"] == "petstore.access"]
        assert len(access_lines) == 1, (rid, mine)
        assert access_lines[0].keys() >= ACCESS_KEYS
    (pet,) = (line for line in by_request["pet-1"] if line["logger"] == "petstore.access")
    assert (pet["method"], pet["route"], pet["status"], pet["user"]) == ("POST", "/api/v3/pet", 200, "logger")
    assert isinstance(pet["duration_ms"], float)
    assert any(line["logger"] == "petstore.audit" and line["operation"] == "addPet" for line in by_request["pet-1"])
    (miss,) = written()
    assert miss["route"] == "/api/v3/pet/{petId}" and miss["status"] == 404
    assert any(line["logger"] == "petstore" and "ready" in line["message"] for line in logged)
    text = json_server.log_path.read_text()
    for secret in (PASSWORD, access, refresh, refreshed.json()["access_token"], SECRET):
        assert secret not in text


def test_text_lines_name_the_request_too(tmp_path: Path) -> None:
    env = environment(tmp_path, "text")
    subprocess.run([str(PETSTORE), "migrate"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    command = [str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}"]
    with UvicornServer(env=env, command=command, cwd=tmp_path) as server:
        assert httpx.get(f"{server.url}/api/v3/pet/5", headers={"X-Request-ID": "text-1"}).status_code == 404
        asyncio.run(until(lambda: "text-1" in server.log_path.read_text(), "the access line"))
        text = server.log_path.read_text()
    (line,) = (line for line in text.splitlines() if "text-1" in line)
    assert line.startswith("INFO:") and '"GET /api/v3/pet/5" 404' in line and "[request text-1]" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
