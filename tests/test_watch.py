"""``petstore watch ROOM``: prints the snapshot and each event once, across reconnects."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from petstore.cli import build_parser
from petstore.watch import (
    MAX_BACKOFF,
    MAX_RETRY_AFTER,
    TOKEN_ENV,
    Watcher,
    command,
    read_token,
    retry_delay,
    ws_endpoint,
)
from tests.realtime.support import AppServer, add_pet, serve, settings_for, until


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[AppServer]:
    async with serve(settings_for(f"sqlite+aiosqlite:///{tmp_path}/w.db", media_dir=tmp_path / "media")) as server:
        yield server


def test_urls_become_the_ws_endpoint() -> None:
    assert ws_endpoint("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_endpoint("https://shop.example/") == "wss://shop.example/ws"
    assert ws_endpoint("ws://h:1/ws") == "ws://h:1/ws"


def test_the_cli_has_a_watch_subcommand_for_several_rooms() -> None:
    args = build_parser().parse_args(["watch", "pet:3", "pets", "--url", "http://h:1", "--count", "2"])
    assert (args.func, args.rooms, args.url, args.count) == (command, ["pet:3", "pets"], "http://h:1", 2)
    assert build_parser().parse_args(["watch", "inventory"]).rooms == ["inventory"]


def _token_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["watch", "orders", *argv])


def test_the_token_comes_from_the_environment_or_a_file_so_it_stays_out_of_ps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warnings: list[str] = []
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token(_token_args(), warnings.append) is None
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    assert read_token(_token_args(), warnings.append) == "from-the-environment"
    path = tmp_path / "token"
    path.write_text("from-the-file\nignored second line\n")
    assert read_token(_token_args("--token-file", str(path)), warnings.append) == "from-the-file"
    assert warnings == []


def test_a_token_on_the_command_line_still_works_with_a_warning_that_ps_shows_it() -> None:
    warnings: list[str] = []
    assert read_token(_token_args("--token", "on-the-line"), warnings.append) == "on-the-line"
    (warning,) = warnings
    assert "ps" in warning and TOKEN_ENV in warning and "--token-file" in warning
    assert "on-the-line" not in warning


@pytest.mark.parametrize("content", [None, "", "\n  \n"])
def test_a_missing_or_empty_token_file_is_status_2_and_one_line(
    content: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    assert command(_token_args("--token-file", str(path))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


async def test_watch_follows_several_rooms_on_one_connection_and_names_each(app: AppServer) -> None:
    out: list[str] = []
    err: list[str] = []
    watcher = Watcher(app.url, ["inventory", "pets"], out=out.append, err=err.append)
    task = asyncio.create_task(watcher.run(count=2))
    await until(lambda: out, "the inventory snapshot")
    assert out[0] == 'snapshot  inventory  {"available":0,"pending":0,"sold":0}'
    await until(lambda: watcher.connections == 1 and all(p.epoch for p in watcher.rooms.values()), "both rooms")
    await add_pet(app.url, "one")
    assert await asyncio.wait_for(task, 30) == 0
    shown = sorted(line.split("  ")[1:3] for line in out[1:])
    assert shown == [["inventory", "#1"], ["pets", "#1"]], out
    assert watcher.connections == 1


async def test_watch_prints_the_snapshot_then_each_event_and_recovers_after_a_restart(app: AppServer) -> None:
    out: list[str] = []
    err: list[str] = []
    watcher = Watcher(app.url, "inventory", out=out.append, err=err.append)
    task = asyncio.create_task(watcher.run(count=4))
    await until(lambda: out, "the snapshot")
    assert out[0] == 'snapshot  {"available":0,"pending":0,"sold":0}'
    await add_pet(app.url, "one")
    await until(lambda: len(out) == 2, "the first event")
    # The server closes every connection (1012, as on a restart) while changes keep coming.
    await app.state.realtime.hub.close_all(1012, 5.0)
    for name in ("two", "three", "four"):
        await add_pet(app.url, name)
    assert await asyncio.wait_for(task, 30) == 0
    expected = [[f"#{n}", "inventory.changed", f'{{"available":{n},"pending":0,"sold":0}}'] for n in range(1, 5)]
    assert [line.split("  ")[1:] for line in out[1:]] == expected  # each once, none missing
    assert any("reconnect" in line for line in err), err
    assert watcher.connections >= 2


async def test_watch_stops_with_status_1_when_the_room_is_refused(app: AppServer) -> None:
    err: list[str] = []
    status = await asyncio.wait_for(Watcher(app.url, "orders", out=print, err=err.append).run(), 30)
    assert status == 1 and "unauthorized" in err[0]


@pytest.mark.parametrize(("status", "retry_after", "at_least"), [(429, "7", 7.0), (503, "3", 3.0), (429, "x", 0.0)])
def test_a_refused_upgrade_waits_out_its_retry_after(status: int, retry_after: str, at_least: float) -> None:
    refusal = InvalidStatus(Response(status, "refused", Headers({"Retry-After": retry_after}), b"{}"))
    delays = [retry_delay(refusal, attempt=1) for _ in range(20)]
    assert all(at_least <= delay for delay in delays)
    assert all(delay <= max(at_least, MAX_BACKOFF) for delay in delays)


def test_a_retry_after_is_waited_out_up_to_a_bound() -> None:
    refusal = InvalidStatus(Response(429, "refused", Headers({"Retry-After": "86400"}), b"{}"))
    assert retry_delay(refusal, attempt=1) == MAX_RETRY_AFTER
