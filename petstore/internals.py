"""The internals of other projects that petstore relies on, and the one guard on each.

A few modules use what a dependency does not promise, for the speed and the bounds the README
describes; each is the only module that touches its dependency's internals, and names them at its
top in one :class:`Uses`:

- :mod:`petstore.server.uvicorn_ws` and :mod:`petstore.server.uvicorn_http` subclass uvicorn's
  protocol classes (its implementation, not its API) and read their attributes, and the first
  reads websockets' sans-I/O protocol inside uvicorn's; :mod:`petstore.server.workers` extends
  uvicorn's multiprocess supervisor;
- :mod:`petstore.db.sqlite` stands in for an ``aiosqlite.Connection``, so it provides the private
  attributes that SQLAlchemy's ``sqlite+aiosqlite`` adapter reads of one (``reader=``).

Each guard is checked once, where its module starts to matter: the uvicorn modules when they are
imported, which uvicorn does before it binds a socket (so ``petstore serve``, and plain ``uvicorn
--ws petstore.server.uvicorn_ws:WebSocketProtocol`` too, refuse to start), the SQLite driver at its
first connection. A release that renamed or dropped one of those internals fails the check with
:class:`InternalsChanged`, naming the dependency, its installed version, the range petstore was
tested with (``pyproject.toml``) and what is missing. Never a quiet fall back: a slower path, or a
server without its read bounds, would look as if it worked. ``tests/test_internals.py`` checks every
guard against the installed versions; each guarded module's tests simulate a release without one
of its internals.

Where a name is looked for: on the class (methods, properties, class attributes), then among the
``self.<name>`` assignments in the source of the class and of its bases from the same project
(most of these are instance attributes, set in ``__init__`` or later, which no class shows).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import inspect
import logging
import re
import sys
from dataclasses import dataclass

from petstore.errors import ConfigurationError

logger = logging.getLogger("petstore.internals")


class InternalsChanged(ConfigurationError):
    """An installed dependency lacks an internal petstore relies on: a release it was not tested with."""


@dataclass(frozen=True)
class Uses:
    """What the petstore module ``user`` relies on of ``owner``, a class of ``distribution``, past its API.

    ``names`` are attributes of ``owner`` that ``user`` reads, calls or overrides. With ``reader``
    the direction turns: ``owner`` is petstore's stand-in for one of the distribution's classes,
    and ``names`` are the private attributes that ``reader`` (another project's class) reads of
    that class through ``self.<via>``; then every private attribute ``reader`` reads there must be
    among them, and ``owner`` must have each.
    """

    user: str
    distribution: str
    owner: type
    names: tuple[str, ...]
    reader: type | None = None
    via: str = ""

    def problems(self) -> list[str]:
        """What the installed versions lack, one phrase each: empty when all is there (or when a
        source cannot be read, which is logged: then only the version range vouches)."""
        problems = []
        if self.reader is not None:
            read = reads(self.reader, self.via) or set()
            problems += [
                f"{_name(self.reader)} reads self.{self.via}.{name}, which {_name(self.owner)} does not provide"
                for name in sorted(read - set(self.names))
            ]
        found = defined(self.owner)
        if found is not None:
            problems += [f"{_name(self.owner)} has no attribute {name!r}" for name in self.names if name not in found]
        return problems

    def check(self) -> None:
        """Raise :class:`InternalsChanged` naming whatever :meth:`problems` finds; once passed, a
        guard is not looked at again in this process."""
        if self in _PASSED:
            return
        problems = self.problems()
        if problems:
            tested = tested_range(self.distribution) or f"the {self.distribution} versions pyproject.toml allows"
            raise InternalsChanged(
                f"{self.user} cannot run on {self.distribution} {_version(self.distribution)}, which changed "
                f"internals it relies on: {'; '.join(problems)}. petstore was tested with {tested}: install a "
                f"version in that range, or adapt {self.user} to the new release and widen the range"
            )
        _PASSED.add(self)


#: The guards that passed (the installed versions do not change while the process runs).
_PASSED: set[Uses] = set()


def defined(cls: type) -> set[str] | None:
    """The attributes an instance of ``cls`` has (see the module docstring); None without source."""
    names = set(dir(cls))
    for source in _sources(cls):
        if source is None:
            return None
        names |= source.assigned
    return names


def reads(cls: type, via: str) -> set[str] | None:
    """The private attributes (``_name``, not dunder) that the methods of ``cls`` and of its bases
    from the same project read of ``self.<via>``; None without source."""
    names: set[str] = set()
    for source in _sources(cls):
        if source is None:
            return None
        names |= source.private_reads.get(via, frozenset())
    return names


def tested_range(distribution: str) -> str | None:
    """The requirement petstore's metadata states for ``distribution`` (``pyproject.toml``), if installed."""
    try:
        requirements = importlib.metadata.requires("petstore") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = _canonical(distribution)
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        if match and _canonical(match.group()) == wanted and "extra ==" not in requirement:
            return requirement
    return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class _Source:
    """What the guards need of one class's source (kept instead of its syntax tree, which is large)."""

    #: ``self.<name> = ...`` anywhere in it.
    assigned: frozenset[str]
    #: ``self.<attribute>._<name>``: the private names read of each of its attributes.
    private_reads: dict[str, frozenset[str]]


def _sources(cls: type) -> list[_Source | None]:
    """The sources of ``cls`` and of its bases from the same project (None for one that has none)."""
    root = cls.__module__.partition(".")[0]
    sources: list[_Source | None] = []
    for klass in cls.__mro__:
        if klass.__module__.partition(".")[0] == root:
            source = _classes(klass.__module__).get(klass.__name__)
            if source is None:
                logger.warning(
                    "cannot read the source of %s, so the internals petstore uses of it are not checked: "
                    "only the version range in pyproject.toml vouches for them",
                    _name(klass),
                )
            sources.append(source)
    return sources


@functools.cache
def _classes(module: str) -> dict[str, _Source]:
    """The classes of a module's source, by name (none when it has no source)."""
    try:
        text = inspect.getsource(sys.modules[module])
    except (OSError, TypeError, KeyError):
        return {}
    classes: dict[str, _Source] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.name not in classes:
            classes[node.name] = _summary(node)
    return classes


def _summary(node: ast.ClassDef) -> _Source:
    assigned: set[str] = set()
    private_reads: dict[str, set[str]] = {}
    for child in ast.walk(node):
        if not isinstance(child, ast.Attribute):
            continue
        if _is_self(child.value) and isinstance(child.ctx, ast.Store):
            assigned.add(child.attr)
        inner = child.value
        if (
            isinstance(inner, ast.Attribute)
            and _is_self(inner.value)
            and child.attr.startswith("_")
            and not child.attr.startswith("__")
        ):
            private_reads.setdefault(inner.attr, set()).add(child.attr)
    return _Source(frozenset(assigned), {via: frozenset(names) for via, names in private_reads.items()})


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"
