"""The structure-aware trace fuzzer (tests/tracefuzz.py), bounded for the host tests.

A long run's counts are in docs/reliability.md; this runs every class a few times
(90 cases, about 10 s on the 2-core CI machine) with a fixed seed, so a failure reproduces.
"""

from __future__ import annotations

import tracefuzz


def test_structure_aware_fuzzer_finds_no_broken_promise() -> None:
    per_class = 6
    tally = tracefuzz.fuzz(seed=13, cases=per_class * len(tracefuzz.CLASSES))
    assert tally.failures == []
    assert set(tally.cases) == set(tracefuzz.CLASSES)
    runs = len(tracefuzz.COMMANDS) * per_class
    # The oracle can fail both ways: valid files (escapes included) must replay...
    assert tally.status[("valid", 0)] == runs and tally.status[("valid-v1", 0)] == runs
    assert tally.status[("escapes", 0)] > 0
    assert tally.status[("display", 0)] == runs  # any display on any type still prints
    # Packed batches: any bytes of whole records replay; a body of another length is refused.
    assert tally.status[("packed", 0)] > 0 and tally.status[("packed", 2)] > 0
    assert set(tally.status) & {("packed", s) for s in range(3, 256)} == set()
    # ...and structural damage must be refused, every time, by every command.
    for name in ("structure", "rows", "rows-shape", "header-extreme", "v1-structure"):
        assert tally.status[(name, 2)] == runs, name
    # A value that is not a record where one should start, a format-1 batch body that
    # is not an array of rows: refused by every command, info included.
    for name in ("not-record", "v1-batch-body"):
        assert tally.status[(name, 2)] == runs, name
    # The largest joined batches replay (within the memory bound: judge), except
    # into the histogram of a field their schema does not have.
    assert tally.status[("merged", 0)] == runs - per_class
    assert tally.slowest < tracefuzz.CASE_SECONDS
