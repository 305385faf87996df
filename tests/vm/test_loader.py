"""The loader against BCC itself: the struct check reads clang's layout, never gives up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.base.errors import CompileError
from tracekit.base.schema import Field, Schema
from tracekit.live.run import RunOptions, compile_probe
from tracekit.plugin.registry import AttachPoint, ProbeSpec

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


# The same hole, declared once: tracekit reads the struct from the C, BCC compiles it,
# and the two layouts must agree for the run to start at all.
HOLE = """
#include <linux/skbuff.h>
#include <linux/netdevice.h>

struct tk_event {
    u64 ts_ns;
    __be16 proto;   /* a hole of 2 after it */
    u32 ifindex;
};

#include "tracekit.h"

/* Not TRACEPOINT_PROBE: BCC would attach that by itself, behind tracekit's back. */
int tk_hole(struct bpf_raw_tracepoint_args *ctx)
{
    struct sk_buff *skb = (struct sk_buff *)ctx->args[0];
    struct net_device *dev = NULL;
    struct tk_event ev;
    __builtin_memset(&ev, 0, sizeof(ev)); /* the hole too: the verifier reads it */
    ev.ts_ns = bpf_ktime_get_ns();
    bpf_probe_read_kernel(&ev.proto, sizeof(ev.proto), &skb->protocol);
    bpf_probe_read_kernel(&dev, sizeof(dev), &skb->dev);
    bpf_probe_read_kernel(&ev.ifindex, sizeof(ev.ifindex), &dev->ifindex);
    tk_emit(ctx, &ev);
    return 0;
}
"""


def test_a_struct_with_a_hole_declared_once_runs_and_decodes(tmp_path: Path) -> None:
    """Offsets tracekit computed from the C (ifindex after the hole, at 12) are the
    ones BCC's clang used: the run starts, and each loopback packet's ifindex is the
    kernel's for lo, its protocol ETH_P_IP as the skb holds it (network order)."""
    import socket
    import time

    src = tmp_path / "hole.bpf.c"
    src.write_text(HOLE)
    spec = ProbeSpec(
        name="hole",
        description="a __be16 member, then a hole",
        source=src,
        attach=(AttachPoint("raw_tracepoint", "net:netif_receive_skb", "tk_hole"),),
    )
    assert spec.schema.names == ("ts_ns", "proto", "ifindex")
    assert spec.schema.kernel_offsets() == [0, 8, 12] and spec.schema.kernel_size == 16
    lo = int(Path("/sys/class/net/lo/ifindex").read_text())
    compiled = compile_probe(spec, {}, RunOptions(quiet=True, loader="bcc"))
    probe = compiled.probe
    rows: list[tuple[object, ...]] = []
    try:
        probe.open_output()
        probe.attach(compiled.points)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(20):
                s.sendto(b"x", ("127.0.0.1", 9))
        deadline = time.monotonic() + 120
        while sum(1 for r in rows if r[2] == lo) < 20:
            assert time.monotonic() < deadline, rows[:5]
            batch = probe.poll(100)
            rows += batch.rows if hasattr(batch, "rows") else batch
    finally:
        probe.detach()
        probe.close()
    mine = [r for r in rows if r[2] == lo and r[1] == 0x0008]  # htons(ETH_P_IP), read LE
    assert len(mine) >= 20, rows[:5]
    assert all(isinstance(r[0], int) and r[0] > 0 for r in mine)
