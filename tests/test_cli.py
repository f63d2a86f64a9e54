"""The `petstore` command: arguments, errors as one line, migrate, users create, seed, serve."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import io
import json
import os
import re
import socket
import subprocess
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from websockets.sync.client import connect

from petstore import db
from petstore.cli import allow_own_origins, build_parser, main, migration_report, schema_revisions
from petstore.config import Settings
from petstore.migrations import migrate
from petstore.models import OutboxEvent, Pet, PetPublic, User
from petstore.passwords import verify_password
from petstore.plugin import PluginBase
from tests.services import HOST, UvicornServer

PETSTORE = Path(sys.executable).with_name("petstore")


@pytest.fixture
def database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite URL in PETSTORE_DATABASE_URL, run from an empty directory (no developer's .env)."""
    monkeypatch.chdir(tmp_path)
    for name in ("PETSTORE_PLUGINS", "PETSTORE_ENV", "PETSTORE_DEMO_PASSWORD", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("PETSTORE_DATABASE_URL", url)
    return url


@pytest.fixture
def migrated(database_url: str) -> str:
    assert main(["migrate"]) == 0
    return database_url


def rows(url: str) -> dict[str, list[Any]]:
    async def read() -> dict[str, list[Any]]:
        engine = db.create_engine(Settings(database_url=url))
        try:
            async with db.create_sessionmaker(engine)() as session:
                pets = (
                    (await session.execute(select(Pet).options(selectinload(Pet.category), selectinload(Pet.tags))))  # type: ignore[arg-type]
                    .scalars()
                    .all()
                )
                return {
                    "pets": [
                        PetPublic.model_validate(pet, from_attributes=True).model_dump(mode="json", by_alias=True)
                        for pet in pets
                    ],
                    "users": list((await session.execute(select(User))).scalars().all()),
                    "events": list((await session.execute(select(OutboxEvent))).scalars().all()),
                }
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _tags_sorted(pet: dict[str, Any]) -> dict[str, Any]:
    return {**pet, "tags": sorted(pet["tags"], key=lambda tag: tag["id"])}


def exit_status(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert isinstance(raised.value.code, int)
    return raised.value.code


# ----------------------------------------------------------------------------- arguments


def test_every_command_and_option_is_documented() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    assert sub.description, f"{path} {name} has no description"
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{path} {action.dest} has no help"

    walk(build_parser(), "petstore")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["--version"]) == 0
    assert capsys.readouterr().out == f"petstore {importlib.metadata.version('petstore')}\n"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found.extend(_commands(sub, (*path, name)))
    return found


def test_every_commands_help_is_plain_text_without_markup(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _commands(build_parser())
    assert ("serve",) in commands and ("users", "set-role") in commands
    for command in commands:
        assert exit_status([*command, "--help"]) == 0
        shown = capsys.readouterr().out
        assert "usage: petstore" in shown
        assert "``" not in shown and not re.search(r":\w+:`", shown), (command, shown)
    assert exit_status(["serve", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--workers" in shown and "--log-level" in shown and "--root-path" in shown


def test_serve_defaults_to_loopback_port_8000_one_worker() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8000, 1)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["serve", "--workers", "0"],
        ["serve", "--workers", "many"],
        ["serve", "--port", "70000"],
        ["users", "create", "alice"],  # no password
        ["users", "create", "alice", "--password", "x", "--password-stdin"],
        ["users", "create", "alice", "--password", "x", "--role", "root"],
        ["seed", "--pets", "-1"],
    ],
)
def test_bad_arguments_exit_with_status_2_and_a_usage_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert "usage: petstore" in err
    assert "Traceback" not in err


def test_an_unacceptable_username_is_a_usage_error(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["users", "create", "no spaces please", "--password", "long-enough-pw"]) == 2
    assert "username" in capsys.readouterr().err
    assert rows(migrated)["users"] == []


def test_a_bad_setting_is_one_line_not_a_traceback(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PETSTORE_ENV", "staging")
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("petstore: error: invalid configuration: PETSTORE_ENV")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_HEADER_BYTES", "12"),
        ("MAX_HEADER_BYTES", "lots"),
        ("HEADER_TIMEOUT_SECONDS", "0"),
        ("BODY_TIMEOUT_SECONDS", "nan"),
        ("BODY_TIMEOUT_SECONDS", "inf"),
        ("KEEP_ALIVE_SECONDS", "0"),
        ("LIMIT_CONCURRENCY", "-1"),
    ],
)
def test_a_bad_bound_on_the_http_layer_is_one_line_before_serve_binds(
    name: str, value: str, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"PETSTORE_{name}", value)
    assert main(["serve", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"petstore: error: invalid configuration: PETSTORE_{name}:"), err


def test_serve_hands_uvicorn_the_bounds_of_what_clients_make_it_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from petstore.cli import _protocols, default_concurrency

    monkeypatch.delenv("PETSTORE_LIMIT_CONCURRENCY", raising=False)
    options = _protocols(Settings(keep_alive_seconds=7, ws_max_message_bytes=4096))
    assert (options["timeout_keep_alive"], options["ws_max_size"]) == (7, 4096)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Under the limit on open files, with room for the database, Redis and the listener.
    assert options["limit_concurrency"] == default_concurrency() < soft
    assert _protocols(Settings(limit_concurrency=50))["limit_concurrency"] == 50
    monkeypatch.setenv("PETSTORE_LIMIT_CONCURRENCY", "")  # as compose's `${VAR:-}` leaves it
    assert Settings().limit_concurrency is None


def test_a_plugin_that_fails_to_load_stops_serve_with_one_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PETSTORE_PLUGINS", "plugins.no_such_plugin")
    assert main(["serve", "--port", "1"]) == 1  # fails before binding anything
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "plugins.no_such_plugin" in err


def test_production_refusals_stop_serve_with_one_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PETSTORE_ENV", "production")
    assert main(["serve", "--workers", "2", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "PETSTORE_JWT_SECRET" in err


def test_serve_on_a_taken_port_says_so_in_one_line_before_the_app_starts(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    media = tmp_path / "media-of-the-app"  # create_app makes it first thing: it shows whether the app ran
    monkeypatch.setenv("PETSTORE_MEDIA_DIR", str(media))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            assert main(["serve", "--port", str(port), "--workers", workers]) == 1
            err = capsys.readouterr().err
            assert (
                err
                == f"petstore: error: cannot listen on 127.0.0.1:{port}: the port is already in use (another server?)\n"
            )
    assert not media.exists()


def test_serve_check_binds_and_exits_without_starting_the_app(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    media = tmp_path / "media-of-the-app"
    monkeypatch.setenv("PETSTORE_MEDIA_DIR", str(media))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--port", str(port), "--check"]) == 0
    assert not media.exists()
    with socket.socket() as again:  # and the port is free again
        again.bind(("127.0.0.1", port))


@pytest.mark.parametrize("prefix", ["shop", "/a b", "/x?y"])
def test_a_root_path_must_be_a_path_prefix(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(["serve", "--root-path", prefix]) == 2
    assert "not a path prefix" in capsys.readouterr().err


def test_serve_hands_uvicorn_the_log_level_and_root_path() -> None:
    from petstore.cli import _uvicorn_options

    args = build_parser().parse_args(["serve", "--log-level", "warning", "--root-path", "/shop/"])
    options = _uvicorn_options(args, Settings())
    assert (options["log_level"], options["root_path"]) == ("warning", "/shop")
    assert options["proxy_headers"] is False  # whom to believe is PETSTORE_RATELIMIT_TRUSTED_PROXIES, not a flag
    assert build_parser().parse_args(["serve"]).root_path == ""


# ------------------------------------------------------------------ misspelled variables


def test_a_misspelled_variable_gets_a_warning_naming_the_closest_known_one(
    migrated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PETSTORE_RATE_LIMT", "5/minute")
    assert main(["users", "list"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "petstore: warning: PETSTORE_RATE_LIMT is not a setting petstore knows (did you mean PETSTORE_RATE_LIMIT?)\n"
    )
    monkeypatch.delenv("PETSTORE_RATE_LIMT")
    monkeypatch.setenv("PETSTORE_RATE_LIMIT", "5/minute")
    assert main(["users", "list"]) == 0
    assert capsys.readouterr().err == ""


def test_a_misspelling_in_dotenv_is_named_too(
    migrated: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".env").write_text("PETSTORE_ALLOWED_ORIGIN=http://shop.example\n")  # the cwd of `migrated`
    assert main(["users", "list"]) == 0
    assert "did you mean PETSTORE_ALLOWED_ORIGINS?" in capsys.readouterr().err


class WidgetPlugin(PluginBase):
    name = "widget"

    def environment(self) -> Sequence[str]:
        return ("PETSTORE_WIDGET_COLOUR",)


def test_what_a_plugin_declares_is_known_and_its_misspellings_named(
    migrated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = types.ModuleType("widget_plugin_for_cli_test")
    module.plugin = lambda settings: WidgetPlugin()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setenv("PETSTORE_PLUGINS", module.__name__)
    monkeypatch.setenv("PETSTORE_WIDGET_COLOUR", "red")
    assert main(["users", "list"]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("PETSTORE_WIDGET_COLOR", "red")
    assert main(["users", "list"]) == 0
    assert "PETSTORE_WIDGET_COLOR is not a setting petstore knows (did you mean PETSTORE_WIDGET_COLOUR?)" in (
        capsys.readouterr().err
    )


def test_commands_before_migrate_say_so(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "create", "alice", "--password", "long-enough-pw"]) == 1
    err = capsys.readouterr().err
    assert "no such table" in err
    assert "petstore migrate" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- migrate


def test_migrate_says_it_created_the_schema_then_that_there_is_nothing_to_do(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate"]) == 0
    created = capsys.readouterr().out
    heads = schema_revisions(database_url)
    assert heads and f"created the schema at revision {', '.join(heads)}" in created
    assert "up to date" not in created and "nothing to do" not in created
    assert main(["migrate"]) == 0
    again = capsys.readouterr().out
    assert f"already at revision {', '.join(heads)}: nothing to do" in again
    assert rows(database_url) == {"pets": [], "users": [], "events": []}


def test_migrate_says_from_which_revision_to_which_it_upgraded(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(database_url, revision="0001")  # the core's first revision only: an old database
    assert schema_revisions(database_url) == ("0001",)
    assert main(["migrate"]) == 0
    heads = schema_revisions(database_url)
    assert heads != ("0001",)
    assert f"upgraded the schema from revision 0001 to {', '.join(heads)}" in capsys.readouterr().out


def test_the_migration_report_in_words() -> None:
    assert migration_report((), ("0002", "auth_0001")) == "created the schema at revision 0002, auth_0001"
    assert migration_report(("0001",), ("0002",)) == "upgraded the schema from revision 0001 to 0002"
    assert migration_report(("0002",), ("0002",)) == "already at revision 0002: nothing to do"


def test_migrate_never_prints_the_database_password(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with_password = pg_url.replace("postgres@", "postgres:hunter2-secret@", 1)  # trust auth ignores it
    assert with_password != pg_url
    monkeypatch.setenv("PETSTORE_DATABASE_URL", with_password)
    assert main(["migrate"]) == 0
    assert "hunter2-secret" not in capsys.readouterr().out


# --------------------------------------------------------------------------------- users


def test_users_create_stores_a_hash_with_the_role_and_never_prints_the_password(
    migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["users", "create", "stella", "--password", "s3cret-Pa55", "--role", "staff"]) == 0
    out = capsys.readouterr().out
    assert "stella" in out and "staff" in out
    assert "s3cret-Pa55" not in out
    (user,) = rows(migrated)["users"]
    assert (user.username, user.role) == ("stella", "staff")
    assert user.password_hash.startswith("$argon2id$")
    assert asyncio.run(verify_password(user.password_hash, "s3cret-Pa55"))


@pytest.mark.parametrize(("password", "reason"), [("short", "at least 8 characters"), ("Password1", "common")])
def test_users_create_refuses_a_weak_password_and_creates_nothing(
    migrated: str, password: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status(["users", "create", "weak", "--password", password]) == 2
    err = capsys.readouterr().err
    assert reason in err and password not in err
    assert rows(migrated)["users"] == []


def test_users_create_reads_the_password_from_stdin(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from-stdin\n"))
    assert main(["users", "create", "carl", "--password-stdin"]) == 0
    (user,) = rows(migrated)["users"]
    assert user.role == "customer"
    assert asyncio.run(verify_password(user.password_hash, "from-stdin"))


def test_a_taken_username_is_one_line_and_changes_nothing(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "create", "dup", "--password", "first-dup-password", "--role", "admin"]) == 0
    capsys.readouterr()
    assert main(["users", "create", "dup", "--password", "second-dup-password"]) == 1
    assert capsys.readouterr().err == "petstore: error: username 'dup' is taken\n"
    (user,) = rows(migrated)["users"]
    assert user.role == "admin"


# ---------------------------------------------------------------------------------- seed


def test_seed_adds_pets_with_their_events_and_the_demo_accounts_once(
    migrated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["seed", "--pets", "30"]) == 0
    out = capsys.readouterr().out
    data = rows(migrated)

    assert len(data["pets"]) == 30
    assert all(pet["category"]["name"] and pet["tags"] for pet in data["pets"])
    assert {user.username: user.role for user in data["users"]} == {
        "admin": "admin",
        "staff": "staff",
        "customer": "customer",
    }
    # The same events as POST /pet: a pet.created with the pet as REST shows it, and the inventory.
    # (Tags compared as sets: the event lists them in the order given, a read orders them by id.)
    created = {event.data["id"]: event.data for event in data["events"] if event.event == "pet.created"}
    assert {pet_id: _tags_sorted(pet) for pet_id, pet in created.items()} == {
        pet["id"]: _tags_sorted(pet) for pet in data["pets"]
    }
    assert all(event.rooms == ["pets", f"pet:{event.data['id']}"] for event in data["events"] if event.data.get("id"))
    (inventory,) = [event for event in data["events"] if event.event == "inventory.changed"]
    assert inventory.data == {}  # one for the batch; the relay counts when it publishes

    # The generated password is shown once, and it is the accounts' password.
    (line,) = [line for line in out.splitlines() if "password:" in line]
    password = line.rsplit("password: ", 1)[1].strip()
    assert all(asyncio.run(verify_password(user.password_hash, password)) for user in data["users"])

    assert main(["seed", "--pets", "5"]) == 0  # again: more pets, the accounts are left alone
    out = capsys.readouterr().out
    assert "password" not in out
    assert len(rows(migrated)["pets"]) == 35


def test_seed_if_empty_does_nothing_the_second_time(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seed", "--pets", "3", "--if-empty"]) == 0
    first = rows(migrated)
    capsys.readouterr()
    assert main(["seed", "--pets", "3", "--if-empty"]) == 0
    assert "nothing seeded" in capsys.readouterr().out
    second = rows(migrated)
    assert len(second["pets"]) == len(first["pets"]) == 3
    assert len(second["events"]) == len(first["events"])


def test_seed_uses_the_demo_password_from_the_environment_without_printing_it(
    migrated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PETSTORE_DEMO_PASSWORD", "chosen-demo-password")
    assert main(["seed", "--pets", "1"]) == 0
    assert "chosen-demo-password" not in capsys.readouterr().out
    (admin,) = [user for user in rows(migrated)["users"] if user.username == "admin"]
    assert asyncio.run(verify_password(admin.password_hash, "chosen-demo-password"))


def test_seed_shows_progress_for_many_pets_in_batches(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seed", "--pets", "250"]) == 0
    assert "250/250" in capsys.readouterr().out  # the bar's last state
    data = rows(migrated)
    assert len(data["pets"]) == 250
    assert sum(event.event == "inventory.changed" for event in data["events"]) == 3  # one per batch of 100


def test_seed_refuses_production(
    migrated: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PETSTORE_ENV", "production")
    assert main(["seed"]) == 1
    assert "PETSTORE_ENV=production" in capsys.readouterr().err
    assert rows(migrated)["pets"] == []


@pytest.mark.postgres
def test_migrate_and_seed_against_postgresql(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETSTORE_DATABASE_URL", pg_url)
    assert main(["migrate"]) == 0
    assert main(["seed", "--pets", "120"]) == 0
    assert main(["users", "create", "pg-user", "--password", "pg-user-password"]) == 0
    data = rows(pg_url)
    assert len(data["pets"]) == 120
    assert len(data["users"]) == 4
    assert sum(event.event == "pet.created" for event in data["events"]) == 120


# --------------------------------------------------------------------------------- serve


@pytest.mark.process
def test_serve_runs_the_app_factory(migrated: str, tmp_path: Path) -> None:
    server = UvicornServer(
        command=[str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}"],
        env={"PETSTORE_DATABASE_URL": migrated, "PETSTORE_PLUGINS": "", "PETSTORE_MEDIA_DIR": str(tmp_path / "m")},
        cwd=tmp_path,
    )
    with server:
        assert httpx.get(f"{server.url}/api/v3/store/inventory").json() == {"available": 0, "pending": 0, "sold": 0}


def test_serve_allows_its_own_origin_on_any_port_unless_the_origins_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first: monkeypatch then restores the variable's absence after allow_own_origins wrote it.
    monkeypatch.setenv("PETSTORE_ALLOWED_ORIGINS", "")
    monkeypatch.delenv("PETSTORE_ALLOWED_ORIGINS")
    allow_own_origins(Settings(_env_file=None), 9123)
    assert Settings(_env_file=None).allowed_origins == ("http://127.0.0.1:9123", "http://localhost:9123")
    monkeypatch.setenv("PETSTORE_ALLOWED_ORIGINS", "https://shop.example")
    allow_own_origins(Settings(_env_file=None), 9123)
    assert Settings(_env_file=None).allowed_origins == ("https://shop.example",)


@pytest.mark.process
def test_serve_on_another_port_lets_the_page_it_serves_connect(migrated: str, tmp_path: Path) -> None:
    """No PETSTORE_ALLOWED_ORIGINS: a server on port N allows http://127.0.0.1:N and http://localhost:N."""
    server = UvicornServer(
        command=[str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}"],
        env={"PETSTORE_DATABASE_URL": migrated, "PETSTORE_PLUGINS": "", "PETSTORE_MEDIA_DIR": str(tmp_path / "m")},
        cwd=tmp_path,
    )
    with server:
        for host in ("127.0.0.1", "localhost"):
            answer = httpx.get(f"{server.url}/origin", params={"origin": f"http://{host}:{server.port}"})
            assert answer.json() == {"origin": f"http://{host}:{server.port}", "allowed": True}
        if server.port != 8000:
            assert (
                httpx.get(f"{server.url}/origin", params={"origin": "http://127.0.0.1:8000"}).json()["allowed"] is False
            )
        with connect(f"ws://{HOST}:{server.port}/ws", origin=f"http://localhost:{server.port}") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"


# --------------------------------------------------------------------------- scripts/serve


SCRIPTS_SERVE = Path(__file__).resolve().parents[1] / "scripts" / "serve"


def scripts_serve_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PETSTORE_VENV": str(Path(sys.executable).parents[1]),  # this environment: no install needed
        "PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}",
        "PETSTORE_PLUGINS": "plugins.metrics",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
    }


@pytest.mark.process
def test_scripts_serve_help_prints_help_and_changes_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPTS_SERVE), "--help"],
        env=scripts_serve_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "scripts/serve" in done.stdout and "usage: petstore serve" in done.stdout
    assert "Migrating" not in done.stdout and "Seeding" not in done.stdout
    assert not (tmp_path / "serve.db").exists()


@pytest.mark.process
def test_scripts_serve_on_a_taken_port_says_so_before_migrating(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            ["bash", str(SCRIPTS_SERVE), "--port", str(port)],
            env=scripts_serve_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"petstore: error: cannot listen on 127.0.0.1:{port}: the port is already in use (another server?)"
    ]
    assert "Migrating" not in done.stdout
    assert not (tmp_path / "serve.db").exists()


PREFIX_AND_LEVEL = ("--root-path", "/shop", "--log-level", "warning")


@pytest.mark.process
def test_serve_behind_a_path_prefix_at_a_chosen_log_level(migrated: str, tmp_path: Path) -> None:
    server = UvicornServer(
        command=[str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}", *PREFIX_AND_LEVEL],
        env={"PETSTORE_DATABASE_URL": migrated, "PETSTORE_PLUGINS": "", "PETSTORE_MEDIA_DIR": str(tmp_path / "m")},
        cwd=tmp_path,
    )
    with server:
        document = httpx.get(f"{server.url}/api/v3/openapi.json").json()
        assert document["servers"] == [{"url": "/shop/api/v3"}]  # where a client behind the proxy finds the API
        assert httpx.get(f"{server.url}/api/v3/store/inventory").status_code == 200
        log = server.log_path.read_text()
    assert "INFO" not in log  # not even uvicorn's access log or its start-up lines


@pytest.mark.process
def test_scripts_serve_migrates_seeds_once_and_serves(tmp_path: Path) -> None:
    """Run twice on one database: the first run seeds and shows the demo password once, the second neither."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "serve"
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"
    env = {
        "PETSTORE_VENV": str(Path(sys.executable).parents[1]),  # this environment: no install needed
        "PETSTORE_DATABASE_URL": database_url,
        "PETSTORE_PLUGINS": "plugins.metrics",
        "PETSTORE_MEDIA_DIR": str(tmp_path / "media"),
        "PETSTORE_DEMO_PETS": "12",
    }
    # Four commands run before the server answers (serve --check, migrate, seed, serve): a longer bound.
    server = UvicornServer(
        command=["bash", str(script), "--host", "{host}", "--port", "{port}"], env=env, start_timeout=90
    )
    with server:
        pets = httpx.get(f"{server.url}/api/v3/pet/findByStatus?status=available,pending,sold").json()
        assert len(pets) == 12
        assert httpx.get(f"{server.url}/").status_code == 200  # the dashboard
        server.restart()  # the same script again, on the same database
        log = server.log_path.read_text()
    assert log.count("Migrating the database") == 2
    assert log.count("seeded 12 pets") == 1
    assert log.count("password: ") == 1  # shown once, on the first run only
    assert log.count("nothing seeded") == 1
    assert len(rows(database_url)["pets"]) == 12
