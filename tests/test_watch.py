"""``petstore watch ROOM``: prints the snapshot and each event once, across reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from petstore.cli import build_parser
from petstore.watch import Watcher, command, ws_endpoint
from tests.realtime.support import AppServer, add_pet, serve, settings_for, until


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[AppServer]:
    async with serve(settings_for(f"sqlite+aiosqlite:///{tmp_path}/w.db", media_dir=tmp_path / "media")) as server:
        yield server


def test_urls_become_the_ws_endpoint() -> None:
    assert ws_endpoint("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_endpoint("https://shop.example/") == "wss://shop.example/ws"
    assert ws_endpoint("ws://h:1/ws") == "ws://h:1/ws"


def test_the_cli_has_a_watch_subcommand() -> None:
    args = build_parser().parse_args(["watch", "pet:3", "--url", "http://h:1", "--token", "t", "--count", "2"])
    assert (args.func, args.room, args.url, args.token, args.count) == (command, "pet:3", "http://h:1", "t", 2)


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
