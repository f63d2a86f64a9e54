"""``petstore users list | set-role | delete``: clear errors that change nothing, and a change made
without the server that reaches a running one: its next request uses the new role (or refuses a
deleted account's token), and the account's live WebSocket session ends (1008)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from petstore.cli import main
from tests.realtime.support import serve, settings_for, ws_client
from tests.test_cli import exit_status, rows

SECRET = "cli-users-test-secret-" + "x" * 40
PASSWORD = "stella-password-1"
NEW_PET = {"name": "Rex", "photoUrls": []}


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated SQLite database with an admin and a staff member, the auth plugin as the only
    plugin (for the CLI and the server alike), run from an empty directory."""
    monkeypatch.chdir(tmp_path)
    for name in ("PETSTORE_ENV", "PETSTORE_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
    monkeypatch.setenv("PETSTORE_DATABASE_URL", url)
    monkeypatch.setenv("PETSTORE_PLUGINS", "plugins.auth")
    monkeypatch.setenv("PETSTORE_JWT_SECRET", SECRET)
    # How soon a running instance reads a revocation another process wrote (there is no Redis here).
    monkeypatch.setenv("PETSTORE_JWT_REVOCATION_POLL_SECONDS", "0.2")
    assert main(["migrate"]) == 0
    assert main(["users", "create", "root", "--password", "root-password-1", "--role", "admin"]) == 0
    assert main(["users", "create", "stella", "--password", PASSWORD, "--role", "staff"]) == 0
    yield url


def roles(url: str) -> dict[str, str]:
    return {user.username: user.role for user in rows(url)["users"]}


# ------------------------------------------------------------------------ without a server


def test_users_list_shows_every_account_by_id_without_a_password(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["users", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "USERNAME", "ROLE", "EMAIL"]
    assert [line.split() for line in lines[1:]] == [["1", "root", "admin"], ["2", "stella", "staff"]]
    assert main(["users", "list", "--role", "staff"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]] == ["stella"]
    assert main(["users", "list", "--role", "customer"]) == 0
    assert capsys.readouterr().out == "no users with the role customer\n"


def test_set_role_changes_the_role(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["users", "set-role", "stella", "customer"]) == 0
    assert capsys.readouterr().out == "user 'stella' now has the role customer\n"
    assert roles(database_url) == {"root": "admin", "stella": "customer"}
    assert main(["users", "set-role", "stella", "customer"]) == 0
    assert "already has the role customer: nothing changed" in capsys.readouterr().out


def test_set_role_of_an_unknown_user_is_one_line_and_changes_nothing(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["users", "set-role", "nobody", "staff"]) == 1
    assert capsys.readouterr().err == "petstore: error: user 'nobody' not found\n"
    assert roles(database_url) == {"root": "admin", "stella": "staff"}


def test_an_unknown_role_is_a_usage_error(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["users", "set-role", "stella", "root"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'root'" in err and "admin" in err
    assert roles(database_url) == {"root": "admin", "stella": "staff"}


def test_the_only_admin_keeps_the_role(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["users", "set-role", "root", "staff"]) == 1
    assert "only admin" in capsys.readouterr().err
    assert roles(database_url)["root"] == "admin"


def test_delete_removes_the_account_and_an_unknown_one_is_one_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["users", "delete", "stella"]) == 0
    assert capsys.readouterr().out == "deleted user 'stella'\n"
    assert roles(database_url) == {"root": "admin"}
    assert main(["users", "delete", "stella"]) == 1
    assert capsys.readouterr().err == "petstore: error: user 'stella' not found\n"
    assert roles(database_url) == {"root": "admin"}


# -------------------------------------------------------------------- reaching a running server


async def _login(url: str) -> str:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/api/v3/auth/token", data={"username": "stella", "password": PASSWORD})
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


async def _create_pet(url: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=url) as http:
        response = await http.post("/api/v3/pet", json=NEW_PET, headers={"Authorization": f"Bearer {token}"})
        return response.status_code


async def test_a_role_change_from_the_cli_holds_on_a_running_servers_next_request(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, plugins=("plugins.auth", "tests.realtime.support:probe"), media_dir=tmp_path)
    async with serve(settings) as app:
        token = await _login(app.url)
        async with ws_client(app.ws_url, headers={"Authorization": f"Bearer {token}"}) as live:
            await live.request({"type": "subscribe", "room": "orders", "id": 1}, "subscribed")  # staff only
            assert await _create_pet(app.url, token) == 200
            assert await asyncio.to_thread(main, ["users", "set-role", "stella", "customer"]) == 0
            # The same token, on its next request: a customer's rights at once.
            assert await _create_pet(app.url, token) == 403
            # The session that joined `orders` as staff ends; a new one would have a customer's rights.
            assert await live.closed() == 1008
        async with ws_client(app.ws_url, headers={"Authorization": f"Bearer {token}"}) as again:
            refusal = await again.request({"type": "subscribe", "room": "orders", "id": 2}, "error")
            assert refusal["code"] == "forbidden"


async def test_a_delete_from_the_cli_ends_the_users_tokens_and_sessions_on_a_running_server(
    database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(database_url, plugins=("plugins.auth", "tests.realtime.support:probe"), media_dir=tmp_path)
    async with serve(settings) as app:
        token = await _login(app.url)
        async with ws_client(app.ws_url, headers={"Authorization": f"Bearer {token}"}) as live:
            await live.request({"type": "subscribe", "room": "orders", "id": 1}, "subscribed")
            assert await asyncio.to_thread(main, ["users", "delete", "stella"]) == 0
            assert await _create_pet(app.url, token) == 401
            assert await live.closed() == 1008
