"""Simulated releases of petstore's dependencies, for the guards of :mod:`petstore.internals`.

A release is the installed source of one module with one change (``old`` becomes ``new``) under
another version number: what a guard reads of the dependency, nothing imported or run. In this
process through ``monkeypatch`` (:func:`simulate`), in a child Python through :data:`CHILD`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from typing import Any

import pytest

from petstore import internals


def release(distribution: str, module: str, old: str, new: str, version: str) -> dict[str, Any]:
    """What :mod:`petstore.internals` reads, replaced as if ``distribution`` ``version`` had ``new``
    in ``module`` where the installed one has ``old``; and no guard passed yet."""
    source = inspect.getsource(importlib.import_module(module))
    assert old in source, f"{old!r} is no longer in {module}: the simulation needs updating"
    tree = ast.parse(source.replace(old, new))
    classes = {node.name: internals._summary(node) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    real_classes, real_version = internals._classes, internals._version

    def changed_classes(name: str) -> dict[str, Any]:
        return classes if name == module else real_classes(name)

    def changed_version(name: str) -> str:
        return version if name == distribution else real_version(name)

    return {
        "_classes": changed_classes,
        "_version": changed_version,
        "_PASSED": set(),
    }


def simulate(monkeypatch: pytest.MonkeyPatch, distribution: str, module: str, old: str, new: str, version: str) -> None:
    for name, value in release(distribution, module, old, new, version).items():
        monkeypatch.setattr(internals, name, value)


#: The start of a ``python -c`` program that runs on with the release ``{args}`` (a repr of
#: :func:`release`'s arguments) in place.
CHILD = (
    "from petstore import internals\n"
    "from tests.releases import release\n"
    "for name, value in release(*{args!r}).items():\n"
    "    setattr(internals, name, value)\n"
)


def check_all(uses: tuple[internals.Uses, ...]) -> None:
    """What a guarded module does when it is imported (or, for SQLite, first connects)."""
    for guard in uses:
        guard.check()
