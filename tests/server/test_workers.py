"""petstore.server.workers: the guard on what its supervisor extends of uvicorn's (the supervisor
itself runs in the ``serve --workers`` tests of tests/server/test_shutdown.py and tests/test_cli.py)."""

from __future__ import annotations

import pytest

from petstore.internals import InternalsChanged
from petstore.server.workers import USES
from tests.releases import check_all, simulate


def test_a_uvicorn_whose_supervisor_renamed_its_processes_is_refused_naming_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Else the exited workers would go unnoticed, and their metrics unremoved."""
    simulate(monkeypatch, "uvicorn", "uvicorn.supervisors.multiprocess", "self.processes", "self.workers", "0.99.0")
    with pytest.raises(InternalsChanged) as refused:
        check_all(USES)
    message = str(refused.value)
    assert message.startswith("petstore.server.workers cannot run on uvicorn 0.99.0")
    assert "Multiprocess has no attribute 'processes'" in message
