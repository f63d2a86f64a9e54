"""plugins.ratelimit and the plugins around it: login budgets through the ``login_routes`` hook for
any plugin's login route, not only auth's; bad rate settings refused by the rate limiter, naming the
variable; and neither plugin importing the other."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import petstore.plugin as plugin_module
from petstore.app import create_app
from petstore.config import Settings
from petstore.errors import PluginError
from petstore.plugin import LoginRoute, PluginBase, Plugins
from tests.plugins.harness import PASSWORD, assert_error, make_settings, running_app
from tests.plugins.test_ratelimit import API, READ, assert_limited

PLUGINS_DIR = Path(__file__).parents[2] / "plugins"
PIN_LOGIN = "/test/pin-login"
RIGHT_PIN = "1234"


class PinLogin(PluginBase):
    """A login that is not auth's: ``POST /test/pin-login`` with ``{"user", "pin"}``, made known to
    the rate limiter only through the hook. Its endpoint echoes the user it read from the body."""

    name = "pin-login"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def routes(self) -> Sequence[BaseRoute]:
        async def login(request: Request) -> Response:
            body = await request.json()
            right = body.get("pin") == RIGHT_PIN
            return JSONResponse({"user": body.get("user")}, status_code=200 if right else 401)

        return [Route(PIN_LOGIN, login, methods=["POST"])]

    def login_routes(self) -> Sequence[LoginRoute]:
        async def username(request: Request) -> str | None:
            body = await request.json()
            user = body.get("user") if isinstance(body, dict) else None
            return user if isinstance(user, str) else None

        return [LoginRoute("post", PIN_LOGIN, username)]


PIN_PLUGINS = ("plugins.ratelimit", f"{__name__}:PinLogin", "tests.plugins.harness:Recorder")


def test_a_plugins_own_login_route_gets_the_login_budgets_through_the_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PETSTORE_RATELIMIT_LOGIN_PER_USER", "2/hour")
    monkeypatch.setenv("PETSTORE_RATELIMIT_LOGIN_PER_IP", "3/hour")
    with running_app(tmp_path, plugins=PIN_PLUGINS, rate_limit="100/hour") as app:
        for pin, status in (("0000", 401), (RIGHT_PIN, 200)):
            response = app.client.post(PIN_LOGIN, json={"user": "ann", "pin": pin})
            assert response.status_code == status
            assert response.json() == {"user": "ann"}  # the body the hook read reached the endpoint whole
            assert response.headers["ratelimit-policy"] == '"login-user";q=2;w=3600, "login-ip";q=3;w=3600'
        # ann's budget is spent, even with the right pin; ben has his own, within the address's.
        assert_limited(app.client.post(PIN_LOGIN, json={"user": "ann", "pin": RIGHT_PIN}), "login-user")
        assert app.client.post(PIN_LOGIN, json={"user": "ben", "pin": RIGHT_PIN}).status_code == 200
        assert_limited(app.client.post(PIN_LOGIN, json={"user": "cat", "pin": RIGHT_PIN}), "login-ip")
        assert app.recorder.count("ratelimit.rejected", scope="login") == 2
        # Every other request is ordinary traffic, on a budget the logins did not touch.
        assert app.client.get(READ).headers["ratelimit"].startswith('"default";r=99;')


def test_the_first_plugin_to_name_a_login_route_owns_it() -> None:
    async def first(request: Request) -> str | None:
        return "first"

    async def second(request: Request) -> str | None:
        return "second"

    class Names(PluginBase):
        def __init__(self, *routes: LoginRoute) -> None:
            self.routes_ = routes

        def login_routes(self) -> Sequence[LoginRoute]:
            return self.routes_

    class Plain:  # a plugin written without PluginBase, and without the optional hook
        name = "plain"

    bare: Any = Plain()
    assert Plugins([bare, PluginBase()]).login_routes() == {}
    one, two = LoginRoute("post", "/login", first), LoginRoute("POST", "/login", second)
    other = LoginRoute("GET", "/login", second)
    found = Plugins([bare, Names(one), Names(two, other)]).login_routes()
    assert found == {("POST", "/login"): one, ("GET", "/login"): other}


def test_the_hook_is_documented_and_has_a_default() -> None:
    assert "``login_routes()``" in (plugin_module.__doc__ or "")
    assert "login_routes" in vars(PluginBase)


# ------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PETSTORE_RATE_LIMIT", "lots"),
        ("PETSTORE_RATELIMIT_LOGIN_PER_USER", "5/fortnight"),
        ("PETSTORE_RATELIMIT_LOGIN_FALLBACK_PER_IP", "0/minute"),
        ("PETSTORE_RATELIMIT_WS_MESSAGES", "many"),
        ("PETSTORE_RATELIMIT_ROUTES", "GET=5/minute"),
        ("PETSTORE_RATELIMIT_TRUSTED_PROXIES", "10.0.0.0/33"),
    ],
)
def test_a_bad_rate_setting_is_the_rate_limiters_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(PluginError) as refused:
        create_app(make_settings(tmp_path))  # plugins.auth is loaded first, and does not refuse it
    message = str(refused.value)
    assert message.startswith(f"plugin 'plugins.ratelimit' failed to load: ConfigurationError: {variable}: "), message
    assert "plugins.auth" not in message


def test_without_the_rate_limiter_a_bad_rate_limit_stops_nothing(tmp_path: Path) -> None:
    """Nobody enforces PETSTORE_RATE_LIMIT then; /user/login just announces no X-Rate-Limit."""
    with running_app(tmp_path, rate_limit="lots", plugins=("plugins.auth",)) as app:
        app.add_user("alice")
        login = app.client.get(f"{API}/user/login", params={"username": "alice", "password": PASSWORD})
        assert login.status_code == 200, login.text
        assert "x-rate-limit" not in login.headers
        assert_error(app.client.get(f"{API}/user/login", params={"username": "alice", "password": "no"}), 400)


# ------------------------------------------------------------------------------------ imports


def imported_modules(package: Path) -> set[str]:
    found: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.add(node.module or "")
    return found


@pytest.mark.parametrize(("package", "other"), [("auth", "plugins.ratelimit"), ("ratelimit", "plugins.auth")])
def test_the_auth_and_rate_limit_plugins_do_not_import_each_other(package: str, other: str) -> None:
    imported = imported_modules(PLUGINS_DIR / package)
    assert not [name for name in imported if name == other or name.startswith(f"{other}.")]
