"""``petstore serve --workers N``: uvicorn's supervisor, telling plugins about every worker that exits.

uvicorn replaces a dead or hung worker in ``keep_subprocess_alive``, swaps all of them on SIGHUP
and adds or drops one on SIGTTIN / SIGTTOU; after each of these, and at shutdown, every pid no
longer running is passed to the plugins' ``workers()`` callbacks (a metrics plugin removes what
the dead worker held: its live gauges). The core knows no metrics library; what a plugin needs
around a several-worker run (an environment for the workers, a directory) is its own.

uvicorn's supervisor is its implementation, not its API: the methods :class:`Supervisor` extends
and what it reads are in :data:`USES`, checked when this module is imported, before any worker
starts (:mod:`petstore.internals`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from uvicorn.supervisors.multiprocess import Multiprocess, Process

from petstore import internals

#: What :class:`Supervisor` relies on of uvicorn's supervisor: checked at import.
USES = (
    internals.Uses(
        __name__,
        "uvicorn",
        Multiprocess,
        (
            "processes",
            "sockets",
            "init_processes",
            "keep_subprocess_alive",
            "handle_hup",
            "handle_ttin",
            "handle_ttou",
            "join_all",
            "terminate_all",
        ),
    ),
    internals.Uses(__name__, "uvicorn", Process, ("pid", "process")),
)
for _uses in USES:
    _uses.check()

#: Told the pid of a worker that is gone.
WorkerExited = Callable[[int], None]


class Supervisor(Multiprocess):
    def __init__(self, *args: Any, on_exit: Sequence[WorkerExited] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_exit = tuple(on_exit)
        self.known: set[int] = set()

    def mark_exited(self) -> None:
        running = {p.pid for p in self.processes if p.pid is not None and p.process.is_alive()}
        for pid in sorted(self.known - running):
            for callback in self.on_exit:
                callback(pid)
        self.known = running

    def init_processes(self) -> None:
        super().init_processes()
        self.mark_exited()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self.mark_exited()

    def handle_hup(self) -> None:
        super().handle_hup()
        self.mark_exited()

    def handle_ttin(self) -> None:
        super().handle_ttin()
        self.mark_exited()

    def handle_ttou(self) -> None:
        super().handle_ttou()
        self.mark_exited()

    def join_all(self) -> None:
        super().join_all()
        self.mark_exited()

    def terminate_all(self) -> None:
        # Workers close their copies of the listening socket when they begin to stop; this one
        # too, or the kernel would go on accepting connections nobody will ever serve.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()
