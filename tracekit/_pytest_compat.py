"""tracekit's pytest fixtures loaded into every pytest run, as 0.1.0 did: deprecated.

Since 0.2.0 the fixtures are opt-in: a plugin's suite says ``pytest_plugins =
["tracekit.testing"]`` in its conftest.py (or runs ``pytest -p tracekit.testing``).
Until 0.3.0 this ``pytest11`` entry point keeps a 0.1.0 plugin's own tests passing
unchanged. It imports nothing of tracekit until a test uses one of its fixtures,
then warns (unless the suite opted in) and hands over ``tracekit.testing``'s fixture:
a pytest run that uses none of them never loads tracekit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def _real(name: str) -> Any:
    from tracekit import testing

    return getattr(testing, name).__wrapped__


def _warn(request: pytest.FixtureRequest, name: str) -> None:
    if request.config.pluginmanager.has_plugin("tracekit.testing"):
        return  # opted in: these are the same fixtures
    from tracekit._compat import warn_deprecated

    warn_deprecated(
        f"the {name} fixture without opting in to tracekit's pytest plugin",
        'pytest_plugins = ["tracekit.testing"] in the conftest.py (or pytest -p tracekit.testing)',
        stacklevel=2,
    )


@pytest.fixture
def tracekit_bus(request: pytest.FixtureRequest) -> Any:
    _warn(request, "tracekit_bus")
    return _real("tracekit_bus")()


@pytest.fixture
def tracekit_feed(request: pytest.FixtureRequest, tracekit_bus: Any) -> Any:
    _warn(request, "tracekit_feed")
    return _real("tracekit_feed")(tracekit_bus)


@pytest.fixture
def tracekit_replay(request: pytest.FixtureRequest, tracekit_bus: Any) -> Any:
    _warn(request, "tracekit_replay")
    return _real("tracekit_replay")(tracekit_bus)


@pytest.fixture
def tracekit_run_probe(request: pytest.FixtureRequest, tracekit_bus: Any) -> Iterator[Any]:
    _warn(request, "tracekit_run_probe")
    yield from _real("tracekit_run_probe")(tracekit_bus)
