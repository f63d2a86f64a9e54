"""Drain benchmark: N WebSocket subscribers, then SIGTERM; how long until the last 1012, and exit.

Run by hand, not by the tests::

    .venv/bin/python bench/drain.py                      # 1,000 clients, 3 runs, `petstore serve`
    .venv/bin/python bench/drain.py --clients 200 --runs 5 --server uvicorn

Each run starts a fresh server subprocess on SQLite (``petstore serve``, the production entry,
or the tests' uvicorn command, ``tests.services.DEFAULT_APP_COMMAND``), opens ``--clients``
WebSocket connections from this one asyncio process, each subscribed to ``inventory``, sends
SIGTERM and measures, from the signal:

- when each client saw its close frame (the first, median and last 1012) and what codes came;
- when the server process exited.

This is the figure a Kubernetes ``terminationGracePeriodSeconds`` (and any ``preStop`` sleep
before it) must cover. The clients share the machine's CPU with the server, so on a small
machine a client notices its close later than the server sent it: the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fakes import REPO_ROOT as REPO
from tests.fakes import prepare_database, uvicorn_env
from tests.services import DEFAULT_APP_COMMAND, UvicornServer

PETSTORE = Path(sys.executable).with_name("petstore")
CONNECT_AT_ONCE = 100


@dataclass
class Run:
    clients: int
    closes: list[float]  # seconds after SIGTERM each client saw its close, sorted
    codes: Counter[int | None]
    exit_seconds: float


def start_server(workdir: Path, kind: str, shutdown_timeout: float) -> UvicornServer:
    database_url = f"sqlite+aiosqlite:///{workdir / 'drain.db'}"
    prepare_database(database_url)
    env = uvicorn_env(database_url, workdir / "media")
    env.update({"PETSTORE_SHUTDOWN_TIMEOUT": str(shutdown_timeout), "PYTHONPATH": str(REPO)})
    if kind == "serve":
        command = [str(PETSTORE), "serve", "--host", "{host}", "--port", "{port}"]
    else:
        command = [*DEFAULT_APP_COMMAND, "--no-access-log"]
    return UvicornServer(env=env, command=command, cwd=REPO).start()


class Subscribed:
    """Counts subscribed clients; ``all`` is set once every one of them is."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all = asyncio.Event()

    def one_more(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.all.set()


async def subscriber(
    url: str, gate: asyncio.Semaphore, subscribed: Subscribed, sigterm: asyncio.Future[float]
) -> tuple[float, int | None]:
    async with gate:
        ws: ClientConnection = await connect(url, compression=None, open_timeout=60, close_timeout=30)
        await ws.recv()  # welcome
        await ws.send('{"type":"subscribe","room":"inventory"}')
        while '"subscribed"' not in str(await ws.recv()):
            pass
    subscribed.one_more()
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.recv()
    seen = time.monotonic()
    received = ws.protocol.close_rcvd
    return seen - await sigterm, received.code if received is not None else None


async def one_run(server: UvicornServer, clients: int) -> Run:
    loop = asyncio.get_running_loop()
    sigterm: asyncio.Future[float] = loop.create_future()
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)
    subscribed = Subscribed(clients)
    url = server.ws_url + "/ws"
    tasks = [asyncio.create_task(subscriber(url, gate, subscribed, sigterm)) for _ in range(clients)]
    everyone = asyncio.create_task(subscribed.all.wait())
    done, _ = await asyncio.wait([everyone, *tasks], timeout=120, return_when=asyncio.FIRST_COMPLETED)
    if everyone not in done:
        for task in done:
            task.result()  # a client that failed before SIGTERM: say why
        raise TimeoutError(f"only {subscribed.count} of {clients} clients subscribed in 120 s")
    proc = server._child.proc
    assert proc is not None
    started = time.monotonic()
    sigterm.set_result(started)
    os.kill(proc.pid, signal.SIGTERM)

    def wait_for_exit() -> float:
        proc.wait(120)
        return time.monotonic()

    exited = asyncio.create_task(asyncio.to_thread(wait_for_exit))
    results = await asyncio.gather(*tasks)
    exit_seconds = await exited - started
    return Run(clients, sorted(r[0] for r in results), Counter(r[1] for r in results), exit_seconds)


def report(runs: list[Run], kind: str, shutdown_timeout: float) -> None:
    print(f"\nserver: {kind}; PETSTORE_SHUTDOWN_TIMEOUT={shutdown_timeout:g}; {os.cpu_count()} CPUs\n")
    print("| run | clients | first 1012 | median | last 1012 | process exit | close codes |")
    print("|---|---|---|---|---|---|---|")
    for number, run in enumerate(runs, 1):
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(run.codes.items(), key=str))
        print(
            f"| {number} | {run.clients} | {run.closes[0] * 1000:.0f} ms | "
            f"{statistics.median(run.closes) * 1000:.0f} ms | {run.closes[-1] * 1000:.0f} ms | "
            f"{run.exit_seconds * 1000:.0f} ms | {codes} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server", choices=("serve", "uvicorn"), default="serve")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="petstore-drain-") as tmp:
            server = start_server(Path(tmp), args.server, args.shutdown_timeout)
            try:
                runs.append(asyncio.run(one_run(server, args.clients)))
            finally:
                server.close()
    report(runs, args.server, args.shutdown_timeout)


if __name__ == "__main__":
    main()
