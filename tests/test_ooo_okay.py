"""ooo-okay's rules per kernel, host side: names from the C, what the results say,
how events show, and where each rule's attach points apply (the VM tests,
tests/vm/test_ooo_okay_rules.py, check the rules against the kernels themselves)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_tracefs import fake_kprobe_tracefs

# test_bcc_compile's tree of Debian's kernel headers (skips without them or root).
from test_bcc_compile import kernel_source as _headers  # noqa: F401

from tracekit.base.cdecl import CSource
from tracekit.base.schema import format_row, format_value
from tracekit.base.session import Summary
from tracekit.bpf.preflight import Report, usable_attach_points
from tracekit.plugin.bus import build_bus
from tracekit.plugin.registry import AttachPoint, ProbeSpec
from tracekit.probes.ooo_okay import RULE_TEXT, RULES, TRANSPORTS, path_of, report


@pytest.fixture(scope="module")
def spec() -> ProbeSpec:
    return build_bus().probes.get("ooo-okay")


def test_rule_and_transport_names_are_the_c_enums(spec: ProbeSpec) -> None:
    src = CSource.parse(spec.source.read_text(), spec.source.name)
    assert RULES == ("tcp_wmem", "tcp_wmem_rtx", "owner_w")
    assert [n for n, _ in src.enum("ooo_rule") or []] == [f"OOO_RULE_{r.upper()}" for r in RULES]
    assert TRANSPORTS[0] == "tcp" and "udp" in TRANSPORTS
    assert spec.schema.field("rule").choices == RULES
    assert spec.schema.field("transport").choices == TRANSPORTS
    # The C counts an skb in slot RULE_TCP_WMEM + rule: the slots follow enum ooo_rule.
    labels = spec.counters[0].labels
    first = labels.index("rule_tcp_wmem")
    assert labels[first : first + len(RULES)] == tuple(f"rule_{r}" for r in RULES)
    # Rule and transport are kernel-aggregated keys: the why-histogram splits by rule.
    assert {"rule", "transport"} <= set(spec.agg_fields)
    why = next(h for h in spec.schema.histograms if h.title == "ooo_okay_why")
    assert why.by[0] == "rule"


def test_an_event_shows_the_rule_and_transport_by_name(spec: ProbeSpec) -> None:
    s = spec.schema
    row = {n: 0 for n in s.names} | {
        "comm": "iperf3",
        "wmem": 4608,
        "threshold": 1,
        "rule": RULES.index("owner_w"),
        "transport": TRANSPORTS.index("udp"),
    }
    shown = dict(zip(s.names, format_row(s, [row[n] for n in s.names]), strict=True))
    assert (shown["rule"], shown["transport"], shown["wmem"]) == ("owner_w", "udp", "4608")
    # A rule this version does not know (a newer trace) shows as its number.
    assert format_value(s.field("rule"), 7) == "7"


def _summary(**counts: int) -> Summary:
    return Summary(counters={"ooo_counts": {k: {0: v} for k, v in counts.items()}})


def test_the_results_name_each_rule_the_kernel_applied() -> None:
    lines = report(
        _summary(
            transmitted=500,
            ooo_okay=130,
            wmem_low=100,
            rtx_empty=40,
            rule_tcp_wmem_rtx=380,
            rule_owner_w=120,
            not_as_rule=2,
        )
    )
    assert lines[0] == (
        "ooo_okay share: 130/500 skbs = 26.00% (wmem low: 100, rtx queue empty: 40)"
    )
    assert lines[1] == f"  rule tcp_wmem_rtx: 380 skbs; {RULE_TEXT['tcp_wmem_rtx']}"
    assert lines[2] == f"  rule owner_w: 120 skbs; {RULE_TEXT['owner_w']}"
    assert lines[3].startswith("  2 skbs with a flag other than the rule gives")
    assert len(lines) == 4  # no tcp_wmem line: no skb was decided by it
    # A 6.1 run: the old TCP rule only, every flag explained.
    old = report(_summary(transmitted=10, ooo_okay=3, wmem_low=3, rule_tcp_wmem=10))
    assert old[1:] == [f"  rule tcp_wmem: 10 skbs; {RULE_TEXT['tcp_wmem']}"]
    assert report(_summary()) == ["ooo_okay: no skbs transmitted"]


def test_rule_texts_name_what_each_kernel_tests() -> None:
    assert "6.6" in RULE_TEXT["tcp_wmem_rtx"] and "retransmit queue" in RULE_TEXT["tcp_wmem_rtx"]
    assert "6.5" in RULE_TEXT["tcp_wmem"] and "retransmit" not in RULE_TEXT["tcp_wmem"]
    assert "6.19" in RULE_TEXT["owner_w"] and "skb_set_owner_w" in RULE_TEXT["owner_w"]


@pytest.fixture
def all_traceable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A tracefs of a kernel with kprobes where every ooo-okay function is traceable."""
    fake_kprobe_tracefs(monkeypatch, tmp_path, "ip_queue_xmit\ninet6_csk_xmit\nskb_set_owner_w\n")


@pytest.mark.parametrize(
    ("release", "owner_w"),
    [
        ("6.1.0-56-amd64", False),
        ("6.12.117+deb13-amd64", False),
        ("6.18.44-fc-v782", False),
        ("6.19.0", True),
        ("7.2.13+deb14-amd64", True),
        ("my-own-build", True),  # not a version: attached, as min_kernel is not checked
    ],
)
def test_skb_set_owner_w_is_attached_from_6_19_only(
    spec: ProbeSpec, all_traceable: None, release: str, owner_w: bool
) -> None:
    r = Report()
    points = {ap.describe() for ap in usable_attach_points(spec, r, release)}
    assert {"kprobe:ip_queue_xmit", "kprobe:inet6_csk_xmit"} <= points
    ours = {"kprobe:skb_set_owner_w", "kretprobe:skb_set_owner_w"}
    assert (ours <= points) == owner_w and (ours & points == set()) == (not owner_w)
    skipped = [c for c in r.checks if "not attached" in c.message]
    assert r.ok
    if owner_w:
        assert not skipped
    else:
        assert {c.name for c in skipped} == ours
        assert all(f"Linux 6.19+ only ({release})" in c.message for c in skipped)


def test_a_malformed_since_fails_at_registration() -> None:
    with pytest.raises(ValueError, match=r"kprobe:f: since must be MAJOR\.MINOR"):
        AttachPoint("kprobe", "f", "tk_f", since="soon")


def test_other_transports_sendmsg_stacks_are_sendmsg() -> None:
    udp = [
        "skb_set_owner_w",
        "sock_alloc_send_pskb",
        "__ip_append_data",
        "ip_make_skb",
        "udp_sendmsg",
        "__sys_sendto",
    ]
    raw6 = ["skb_set_owner_w", "sock_alloc_send_pskb", "rawv6_sendmsg", "sock_sendmsg"]
    # An ICMP reply from softirq (the kernel's ICMP socket): not a sendmsg.
    icmp = ["skb_set_owner_w", "sock_alloc_send_pskb", "icmp_push_reply", "net_rx_action"]
    assert [path_of(s) for s in (udp, raw6, icmp)] == ["sendmsg", "sendmsg", "other"]


@pytest.mark.parametrize("aggregate", [False, True])
def test_every_program_passes_this_kernels_verifier_under_bcc(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    spec: ProbeSpec,
    aggregate: bool,
) -> None:
    """BCC loads a program only when it attaches (which needs the VM): load each one
    here, the 6.19-only ones too, with every skb streamed or counted in the kernel."""
    from bcc import BPF

    from tracekit.bpf.bcc import BccProbe

    monkeypatch.setenv("BCC_KERNEL_SOURCE", request.getfixturevalue("_headers"))
    kw: dict[str, object] = {"stream": False, "aggregate": True} if aggregate else {}
    probe = BccProbe(spec, spec.resolve_params({"all": "1"}), output="ringbuf", **kw)  # type: ignore[arg-type]
    try:
        for fn in sorted({ap.fn for ap in spec.attach}):
            probe.bpf.load_func(fn.encode(), BPF.KPROBE)
    finally:
        probe.close()
