"""The loader against BCC itself: the struct check reads clang's layout, never gives up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.errors import CompileError
from tracekit.registry import AttachPoint, ProbeSpec
from tracekit.run import RunOptions, compile_probe
from tracekit.schema import Field, Schema

pytestmark = pytest.mark.vm

# __be16 is a typedef BCC's own struct reader (table.event()) does not know: it used
# to print "Type: '__be16' not recognized" and call sys.exit(1). The hole clang
# leaves after `port` is what the schema below forgets.
SOURCE = """
#include <linux/skbuff.h>
#include <net/sock.h>

struct tk_event {
    u64 ts_ns;
    __be16 port;
    u32 cpu;
};

#include "tracekit.h"

TRACEPOINT_PROBE(net, netif_receive_skb)
{
    struct tk_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.port = 1;
    ev.cpu = bpf_get_smp_processor_id();
    tk_emit(args, &ev);
    return 0;
}
"""


def test_layout_mismatch_with_a_typedef_member_is_one_compile_error(tmp_path: Path) -> None:
    src = tmp_path / "be16.bpf.c"
    src.write_text(SOURCE)
    spec = ProbeSpec(
        name="be16",
        description="a struct with a __be16 member and a schema that forgets the hole",
        source=src,
        schema=Schema((Field("ts_ns", "u64"), Field("port", "u16"), Field("cpu", "u32"))),
        attach=(
            AttachPoint(
                "tracepoint", "net:netif_receive_skb", "tracepoint__net__netif_receive_skb"
            ),
        ),
    )
    with pytest.raises(CompileError) as exc:
        compile_probe(spec, {}, RunOptions(quiet=True))
    msg = str(exc.value)
    assert "\n" not in msg
    # Read from clang's layout: cpu after a 2-byte hole, 16 bytes in all.
    assert "cpu at offset 12, schema says 10" in msg, msg
    assert "struct is 16 bytes, schema 14" in msg, msg
