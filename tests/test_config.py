"""Settings from the environment, and production's refusal of unsafe defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from petstore.app import create_app
from petstore.config import CORE_VARIABLES, DEFAULT_PLUGINS, Settings, misspelled
from petstore.errors import ConfigurationError, PluginError
from petstore.plugin import load_plugins
from plugins.auth.config import AuthSettings


def test_defaults_are_those_of_the_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "PLUGINS", "ALLOWED_ORIGINS", "RATE_LIMIT", "ENV"):
        monkeypatch.delenv(f"PETSTORE_{name}", raising=False)
    s = Settings()
    assert s.database_url == "sqlite+aiosqlite:///./petstore.db"
    assert s.redis_url is None
    assert s.plugins == DEFAULT_PLUGINS == ("plugins.auth", "plugins.ratelimit", "plugins.metrics")
    assert s.allowed_origins == ("http://127.0.0.1:8000", "http://localhost:8000")
    assert s.rate_limit == "100/minute"
    assert s.env == "development"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_PLUGINS", "plugins.auth, plugins.metrics")
    monkeypatch.setenv("PETSTORE_ALLOWED_ORIGINS", "https://a.example,https://b.example")
    monkeypatch.setenv("PETSTORE_REDIS_URL", "redis://127.0.0.1:6390/0")
    s = Settings()
    assert s.plugins == ("plugins.auth", "plugins.metrics")
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.redis_url == "redis://127.0.0.1:6390/0"


def test_an_empty_plugin_list_means_no_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_PLUGINS", "")
    assert Settings().plugins == ()


def test_production_refuses_every_unsafe_default_in_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's problems and the auth plugin's refusal, named together."""
    monkeypatch.delenv("PETSTORE_JWT_SECRET", raising=False)
    s = Settings(env="production", database_url="sqlite+aiosqlite:///./x.db", allowed_origins=("*",))
    with pytest.raises(ConfigurationError) as caught:
        create_app(s)
    message = str(caught.value)
    assert "PETSTORE_JWT_SECRET is not set" in message
    assert "plugins.auth" in message  # whose setting it is
    assert "SQLite" in message
    assert "wildcard" in message


def test_production_accepts_a_safe_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_JWT_SECRET", "x" * 40)
    s = Settings(
        env="production",
        database_url="postgresql+asyncpg://petstore@127.0.0.1/petstore",
        plugins=("plugins.auth",),
    )
    assert s.production_problems() == []
    assert create_app(s) is not None


def test_the_core_knows_no_jwt_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """PETSTORE_JWT_SECRET is the auth plugin's: without it loaded, production does not ask for it."""
    monkeypatch.delenv("PETSTORE_JWT_SECRET", raising=False)
    s = Settings(env="production", database_url="postgresql+asyncpg://h/db", plugins=())
    assert not any("jwt" in name for name in Settings.model_fields)
    assert create_app(s) is not None


def test_production_refuses_a_short_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETSTORE_JWT_SECRET", "short")
    s = Settings(env="production", database_url="postgresql+asyncpg://h/db", plugins=("plugins.auth",))
    with pytest.raises(PluginError, match="shorter than 32"):
        create_app(s)


def test_development_secret_is_generated_once_and_kept_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PETSTORE_JWT_SECRET", raising=False)
    s = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db/petstore.db")
    first = AuthSettings().resolved_secret(s)
    assert len(first) >= 48
    kept = tmp_path / "db" / ".petstore-jwt-secret"
    assert kept.read_text() == first
    assert kept.stat().st_mode & 0o777 == 0o600
    assert AuthSettings().resolved_secret(s) == first


def test_the_secret_never_appears_in_the_settings_repr() -> None:
    assert "s3cret-value" not in repr(AuthSettings(secret="s3cret-value"))


@pytest.mark.process
def test_workers_starting_together_agree_on_one_development_secret(tmp_path: Path) -> None:
    """`serve --workers N`: every process must end up with the same secret, or tokens fail between them."""
    import subprocess
    import sys

    code = (
        "from petstore.config import Settings; from plugins.auth.config import AuthSettings; "
        f"print(AuthSettings().resolved_secret(Settings(database_url='sqlite+aiosqlite:///{tmp_path}/petstore.db')))"
    )
    env = {name: value for name, value in os.environ.items() if name != "PETSTORE_JWT_SECRET"}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(8)
    ]
    secrets = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(secrets) == 1 and "" not in secrets
    kept = tmp_path / ".petstore-jwt-secret"
    assert kept.read_text() in secrets and kept.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ misspelled PETSTORE_* variables


def test_a_misspelled_variable_is_matched_to_the_closest_known_one() -> None:
    environ = {"PETSTORE_RATE_LIMT": "5/minute", "PETSTORE_DATABSE_URL": "sqlite://", "PETSTORE_RATE_LIMIT": "1/second"}
    assert misspelled(environ, CORE_VARIABLES) == [
        ("PETSTORE_DATABSE_URL", "PETSTORE_DATABASE_URL"),
        ("PETSTORE_RATE_LIMT", "PETSTORE_RATE_LIMIT"),
    ]


def test_known_unrelated_and_foreign_variables_are_left_alone() -> None:
    environ = {
        "PETSTORE_REDIS_URL": "redis://h",  # known
        "PETSTORE_LISTEN": ":8080",  # haproxy's (deploy/), close to nothing petstore reads
        "PETSTORE_FAST": "1",  # scripts/test's
        "RATE_LIMT": "x",  # not ours at all
    }
    assert misspelled(environ, CORE_VARIABLES) == []


def test_the_core_knows_its_own_settings_and_the_plugins_declare_theirs(tmp_path: Path) -> None:
    assert {"PETSTORE_DATABASE_URL", "PETSTORE_SHUTDOWN_TIMEOUT", "PETSTORE_DEMO_PASSWORD"} <= CORE_VARIABLES
    assert not any(name.startswith(("PETSTORE_JWT_", "PETSTORE_RATELIMIT_")) for name in CORE_VARIABLES)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"
    declared = load_plugins(Settings(database_url=database_url, plugins=DEFAULT_PLUGINS)).environment()
    assert {"PETSTORE_JWT_SECRET", "PETSTORE_RATELIMIT_TRUSTED_PROXIES", "PETSTORE_METRICS_WORKERS"} <= declared
    # Only what a plugin declares makes its misspellings known.
    typo = {"PETSTORE_JWT_SECRT": "s"}
    assert misspelled(typo, CORE_VARIABLES) == []
    assert misspelled(typo, CORE_VARIABLES | declared) == [("PETSTORE_JWT_SECRT", "PETSTORE_JWT_SECRET")]
