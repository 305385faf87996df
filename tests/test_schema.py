from __future__ import annotations

import struct

import pytest

from tracekit.probes.txq_flip import SCHEMA
from tracekit.schema import Field, HistSpec, Schema, format_value


def test_decoder_reads_the_c_layout() -> None:
    # The same bytes a BPF program would write for struct tk_event (80 bytes).
    assert SCHEMA.size == 80
    raw = struct.pack(
        "=QQIIIIIHHHHHBB16s16s",
        123,
        0xFFFF8880DEADBEEF,
        1,
        42,
        3,
        0x0100000A,
        0x0200000A,
        5201,
        40000,
        2,
        0xFFFF,
        1,
        1,
        0,
        b"tk0\0garbage".ljust(16, b"\0"),
        b"iperf3".ljust(16, b"\0"),
    )
    row = SCHEMA.make_decoder().decode(raw + b"\0" * 8)  # perf pads records
    assert row[0] == 123 and row[2] == 1
    assert row[SCHEMA.index("ifname")] == "tk0"
    assert row[SCHEMA.index("comm")] == "iperf3"
    assert format_value(SCHEMA.field("saddr"), row[SCHEMA.index("saddr")]) == "10.0.0.1"
    assert format_value(SCHEMA.field("queue_before"), 0xFFFF) == "none"


def test_offsets_follow_declaration_order() -> None:
    offs = SCHEMA.offsets()
    assert offs["ts_ns"] == 0 and offs["sk"] == 8 and offs["ifname"] == 48 and offs["comm"] == 64


def test_schema_round_trips_through_dict() -> None:
    assert Schema.from_dict(SCHEMA.to_dict()) == SCHEMA


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="x", type="u7"),
        dict(name="x", type="u8", display="nope"),
        dict(name="x", type="str0"),
    ],
)
def test_bad_fields_are_rejected(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Field(**kwargs)


def test_histogram_on_unknown_field_names_valid_fields() -> None:
    with pytest.raises(KeyError, match="fields are: a"):
        Schema(fields=(Field("a", "u8"),), histograms=(HistSpec(value="b"),))


def test_duplicate_field_names_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Schema(fields=(Field("a", "u8"), Field("a", "u16")))


def test_event_structs_have_no_tail_padding() -> None:
    """C pads a struct to its widest member; the schema must declare that padding.

    Every probe of every installed plugin, built-in or not.
    """
    from tracekit.bus import build_bus

    for spec in build_bus().probes:
        widest = max(f.size for f in spec.schema.fields if not f.is_str)
        assert spec.schema.size % widest == 0, (spec.name, spec.schema.size)
