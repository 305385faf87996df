from __future__ import annotations

import struct

import pytest

from tracekit.base.schema import Field, HistSpec, Schema, format_value
from tracekit.probes.txq_flip import FIELDS

# txq-flip's event as it was before it carried `cause`: one explicit `pad` byte (so
# every byte the program copies out is initialised), which is never a field.
PADDED_C = """
struct tk_event {
    u64 ts_ns;
    u64 sk;
    u32 cpu;
    u32 pid;
    u32 ifindex;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u16 family;
    u16 queue_before;
    u16 queue_after;
    u8 ooo_okay;
    u8 pad;
    char ifname[16];
    char comm[16];
};
"""
SCHEMA = Schema.from_c(PADDED_C, [f for f in FIELDS if f.name != "cause"])


def test_decoder_reads_the_c_layout() -> None:
    # The same bytes a BPF program would write for struct tk_event (80 bytes, with
    # its `pad` byte); the fields alone are 79, and `pad` is none of them.
    assert SCHEMA.kernel_size == 80 and SCHEMA.size == 79
    assert "pad" not in SCHEMA.names
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
        0x5A,  # pad: whatever it holds, it is skipped
        b"tk0\0garbage".ljust(16, b"\0"),
        b"iperf3".ljust(16, b"\0"),
    )
    row = SCHEMA.make_decoder().decode(raw + b"\0" * 8)  # perf pads records
    assert len(row) == len(SCHEMA.fields) == 15
    assert row[0] == 123 and row[2] == 1
    assert row[SCHEMA.index("ifname")] == "tk0"
    assert row[SCHEMA.index("comm")] == "iperf3"
    assert format_value(SCHEMA.field("saddr"), row[SCHEMA.index("saddr")]) == "10.0.0.1"
    assert format_value(SCHEMA.field("queue_before"), 0xFFFF) == "none"


def test_offsets_follow_declaration_order() -> None:
    kernel = dict(zip(SCHEMA.names, SCHEMA.kernel_offsets(), strict=True))
    assert kernel["ts_ns"] == 0 and kernel["sk"] == 8 and kernel["ifname"] == 48
    assert kernel["comm"] == 64
    packed = SCHEMA.offsets()  # as traces store records: no padding
    assert packed["ifname"] == 47 and packed["comm"] == 63


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


def test_no_probe_has_padding_among_its_fields() -> None:
    """Every probe of every installed plugin, built-in or not, reads its schema from
    its C: padding members stay in the kernel's record, never among the fields."""
    from tracekit.plugin.bus import build_bus

    for spec in build_bus().probes:
        layout = spec.schema.layout
        assert layout is not None, spec.name
        pads = [m.name for m in layout.members if m.padding]
        assert not set(pads) & set(spec.schema.names), spec.name
        assert spec.schema.kernel_dtype.itemsize == layout.size, spec.name
        assert spec.schema.size == sum(f.size for f in spec.schema.fields), spec.name


def test_drained_kernel_records_lose_their_padding_in_one_step() -> None:
    # What both loaders drain: records back to back at the C struct's size, `pad`
    # included; the batch holds the fields only, in the trace's packed layout.
    import struct as st

    from tracekit.bpf.records import record_decoder
    from tracekit.testing import synthetic_rows

    rows = synthetic_rows(SCHEMA, 7, seed=5)
    fmt = SCHEMA.kernel_struct_format
    raw = b"".join(
        st.pack(fmt, *[v.encode() if isinstance(v, str) else v for v in r]) for r in rows
    )
    assert len(raw) == 7 * SCHEMA.kernel_size == 7 * 80
    decode = record_decoder("t", SCHEMA, header=0, stride=SCHEMA.kernel_size)
    batch = decode(memoryview(raw), 7)
    assert batch.packed and batch.rows == rows
