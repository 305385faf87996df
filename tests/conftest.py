from __future__ import annotations

import os

import pytest

from tracekit.base.session import Session
from tracekit.probes.txq_flip import SCHEMA
from tracekit.testing import synthetic_rows

# tracekit mounts tracefs where it is missing and it may (as bpftrace does): never on
# the machine running the host tests, whose mounts are not the tests' to change.
if os.environ.get("TRACEKIT_IN_VM") != "1":
    os.environ["TRACEKIT_MOUNT_TRACEFS"] = "0"


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


# tests/data holds fixtures (a plugin package written against tracekit 0.1.0, with
# its own tests), run by tests/test_api_0_1_0.py in a process of their own.
collect_ignore_glob = ["data/*"]
