"""Progress of a long command: rich's bar when rich is installed (the ``petstore[cli]`` extra),
plain lines on stderr otherwise, so the default install needs no terminal library.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: The plain fallback writes a line each time another tenth of the work is done, not per batch.
PLAIN_STEPS = 10


@contextmanager
def progress(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``, to call as each ``n`` of ``total`` items are done."""
    if not enabled:
        yield lambda n: None
        return
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    except ImportError:
        yield _plain(label, total)
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _plain(label: str, total: int) -> Callable[[int], None]:
    done = 0
    shown = 0  # tenths written so far

    def advance(n: int) -> None:
        nonlocal done, shown
        done += n
        tenths = PLAIN_STEPS if done >= total else done * PLAIN_STEPS // max(total, 1)
        if tenths > shown:
            shown = tenths
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return advance
