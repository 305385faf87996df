from __future__ import annotations

import os

import pytest

from tracekit.probes.txq_flip import SCHEMA
from tracekit.session import Session
from tracekit.testing import synthetic_rows


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TRACEKIT_IN_VM") == "1":
        return
    skip = pytest.mark.skip(reason="needs a kernel with BPF: runs inside the VM (vm/run)")
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def session() -> Session:
    return Session(
        probe="txq-flip",
        schema=SCHEMA,
        params={"ifindex": 0},
        kernel="6.1.0-test",
        ncpus=2,
        hostname="testhost",
        start_time=1_700_000_000.0,
    )


@pytest.fixture
def rows() -> list[tuple[object, ...]]:
    return synthetic_rows(SCHEMA, 500, seed=1)
