"""The `petstore` command: arguments, errors as one line, migrate, users create, seed, serve."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from petstore import db
from petstore.cli import build_parser, main
from petstore.config import Settings
from petstore.models import OutboxEvent, Pet, PetPublic, User
from petstore.passwords import verify_password
from tests.services import UvicornServer

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
    assert exit_status(["users", "create", "no spaces please", "--password", "pw"]) == 2
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


def test_commands_before_migrate_say_so(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "create", "alice", "--password", "pw"]) == 1
    err = capsys.readouterr().err
    assert "no such table" in err
    assert "petstore migrate" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------- migrate


def test_migrate_creates_the_schema_and_can_run_again(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert rows(database_url) == {"pets": [], "users": [], "events": []}


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


def test_users_create_reads_the_password_from_stdin(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from-stdin\n"))
    assert main(["users", "create", "carl", "--password-stdin"]) == 0
    (user,) = rows(migrated)["users"]
    assert user.role == "customer"
    assert asyncio.run(verify_password(user.password_hash, "from-stdin"))


def test_a_taken_username_is_one_line_and_changes_nothing(migrated: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["users", "create", "dup", "--password", "one", "--role", "admin"]) == 0
    capsys.readouterr()
    assert main(["users", "create", "dup", "--password", "two"]) == 1
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
    assert main(["users", "create", "pg-user", "--password", "pw"]) == 0
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


# --------------------------------------------------------------------------- scripts/serve


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
    server = UvicornServer(command=["bash", str(script), "--host", "{host}", "--port", "{port}"], env=env)
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
