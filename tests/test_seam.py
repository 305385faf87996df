"""The declared seam between a run and a loaded probe (#27 item 3).

One ``load(spec, params, opts)`` picks the loader; the plan records the choice; an
``enrich`` gets a ``ProbeContext`` built on two primitives; entry/return pairs
attach together; ``tracekit.testing.StandInProbe`` stands in for a kernel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any

import pytest
from fake_tracefs import fake_kprobe_tracefs

import tracekit
from tracekit import (
    AttachPoint,
    LoadedProbe,
    LoadOptions,
    ProbeContext,
    ProbeSpec,
    RunOptions,
    Session,
    StandInProbe,
    plan_run,
    resolve_stack,
)
from tracekit.bpf.preflight import Report, usable_attach_points
from tracekit.plugin.bus import build_bus
from tracekit.testing import synthetic_rows

NAMES = {0xFFFF0001: "tcp_sendmsg", 0xFFFF0002: "ip_finish_output2", 0xFFFF0003: "tcp_ack"}
STACKS = {1: [0xFFFF0001], 2: [0xFFFF0002, 0xFFFF0003]}


@pytest.fixture(scope="module")
def ooo() -> ProbeSpec:
    return build_bus(load_entry_points=False).probes.get("ooo-okay")


def _rows_with_stacks(spec: ProbeSpec, n: int) -> list[tuple[Any, ...]]:
    sid = spec.schema.index("stack_id")
    return [
        (*r[:sid], 1 + i % 2, *r[sid + 1 :]) for i, r in enumerate(synthetic_rows(spec.schema, n))
    ]


def test_both_loaders_and_the_stand_in_declare_the_protocol(ooo: ProbeSpec) -> None:
    from tracekit.bpf.bcc import BccProbe
    from tracekit.bpf.core import CoreProbe

    members = [n for n in dir(LoadedProbe) if not n.startswith("_") and n not in ("register",)]
    assert {"map_lookup", "kernel_symbol", "attach", "poll", "loader"} <= set(members)
    for cls in (BccProbe, CoreProbe, StandInProbe):
        assigned = cls.__init__.__code__.co_names  # attributes set in __init__
        missing = [n for n in members if not hasattr(cls, n) and n not in assigned]
        assert not missing, (cls.__name__, missing)
    assert BccProbe.loader == "bcc" and CoreProbe.loader == "core"
    assert isinstance(StandInProbe(ooo), LoadedProbe)
    with pytest.raises(FrozenInstanceError):
        LoadOptions().loader = "core"  # type: ignore[misc]
    with pytest.raises(ValueError, match="loader must be"):
        LoadOptions(loader="bpftrace")


def test_enrich_gets_a_context_and_records_each_stack_and_name_once(ooo: ProbeSpec) -> None:
    from tracekit.probes.ooo_okay import PATHS, path_of

    probe = StandInProbe(ooo, stacks=STACKS, symbols=NAMES)
    session = probe.session()
    rows = _rows_with_stacks(ooo, 30)
    out = probe.enrich(rows, session) + probe.enrich(rows, session)
    path = ooo.schema.index("path")
    want = {sid: PATHS.index(path_of([NAMES[a] for a in STACKS[sid]])) for sid in STACKS}
    sid = ooo.schema.index("stack_id")
    assert all(r[path] == want[r[sid]] for r in out)
    assert len(set(want.values())) == 2  # the two stacks classify differently
    assert (probe.lookups, probe.symbol_calls) == ({"tk_stacks": 2}, 3)
    assert dict(session.symbols) == NAMES and dict(session.stacks) == STACKS


def test_context_lookup_and_a_missing_stack() -> None:
    spec = build_bus(load_entry_points=False).probes.get("rss-cpu")
    probe = StandInProbe(spec, maps={"filters": {b"\x01\x00\x00\x00": b"\x2a" + bytes(7)}})
    ctx = probe.context()
    assert isinstance(ctx, ProbeContext)
    assert ctx.lookup("filters", b"\x01\x00\x00\x00") == b"\x2a" + bytes(7)
    assert ctx.lookup("filters", b"\x02\x00\x00\x00") is None
    assert ctx.stack(9) == [] and ctx.stack(-1) == [] and ctx.stack_names(9) == []
    assert resolve_stack(ctx, "tk_stacks", 9) == []
    assert ctx.params == probe.params


def test_the_0_1_0_enrich_works_with_a_warning(ooo: ProbeSpec) -> None:
    seen: list[list[str]] = []

    def old_enrich(bpf: Any, session: Session, rows: list[tuple[Any, ...]]) -> Any:
        for r in rows:
            seen.append(resolve_stack(bpf, "tk_stacks", r[ooo.schema.index("stack_id")], session))
        return rows

    warned = r"enrich\(bpf, session, rows\).*0\.3\.0.*ProbeContext"
    with pytest.warns(DeprecationWarning, match=warned):
        old = replace(ooo, enrich=old_enrich)
    probe = StandInProbe(old, stacks=STACKS, symbols=NAMES)
    probe.enrich(_rows_with_stacks(ooo, 4))
    assert seen[:2] == [["tcp_sendmsg"], ["ip_finish_output2", "tcp_ack"]]


def test_setup_is_deprecated(ooo: ProbeSpec) -> None:
    with pytest.warns(DeprecationWarning, match=r"ProbeSpec.setup.*0\.3\.0.*prepare"):
        replace(ooo, setup=lambda bpf, params: None)


def test_attach_pairs_go_together() -> None:
    pair = AttachPoint.pair("netdev_pick_tx", "tk_entry", "tk_return", group="pick")
    entry, ret = pair.expanded()
    assert (entry.kind, entry.fn) == ("kprobe", "tk_entry")
    assert (ret.kind, ret.fn) == ("kretprobe", "tk_return")
    assert pair.describe() == "kprobe+kretprobe:netdev_pick_tx"
    with pytest.raises(ValueError, match="only a kprobe pairs"):
        AttachPoint("tracepoint", "net:x", "tk_x", ret_fn="tk_y")


def _spec_with(tmp_path: Path, attach: tuple[AttachPoint, ...]) -> ProbeSpec:
    src = tmp_path / "p.bpf.c"
    src.write_text("struct tk_event { u64 ts_ns; };\n")
    return ProbeSpec(name="p", description="p", source=src, attach=attach)  # type: ignore[arg-type]


def test_a_group_cannot_split_an_entry_from_its_return(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"AttachPoint.pair\('netdev_pick_tx'"):
        _spec_with(
            tmp_path,
            (
                AttachPoint("kprobe", "netdev_pick_tx", "tk_e", group="pick"),
                AttachPoint("kretprobe", "netdev_pick_tx", "tk_r", group="pick"),
            ),
        )


@pytest.mark.parametrize(
    ("present", "attached"),
    [
        # The function was renamed: the second alternative's entry and return, both.
        (
            "netdev_core_pick_tx\n",
            {"kprobe:netdev_core_pick_tx", "kretprobe:netdev_core_pick_tx"},
        ),
        (
            "netdev_pick_tx\nnetdev_core_pick_tx\n",
            {"kprobe:netdev_pick_tx", "kretprobe:netdev_pick_tx"},
        ),
        ("", set()),  # neither: nothing of the group, no half
    ],
)
def test_a_renamed_functions_alternatives_attach_both_or_neither(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, present: str, attached: set[str]
) -> None:
    import tracekit.base.kernel as kernel
    from tracekit.bpf import preflight

    fake_kprobe_tracefs(monkeypatch, tmp_path, present)
    names = frozenset(present.split())
    monkeypatch.setattr(kernel, "kallsyms_names", lambda: names, raising=False)
    monkeypatch.setattr(preflight, "check_attach_point", _fake_check(names), raising=True)
    spec = _spec_with(
        tmp_path,
        (
            AttachPoint.pair("netdev_pick_tx", "tk_e", "tk_r", group="pick"),
            AttachPoint.pair("netdev_core_pick_tx", "tk_e", "tk_r", group="pick"),
        ),
    )
    chosen = usable_attach_points(spec, Report(), "6.12.0")
    probe = StandInProbe(spec)
    probe.attach(chosen)
    assert {a.describe() for a in probe.attached} == attached


def _fake_check(names: frozenset[str]) -> Any:
    def check(report: Report, ap: AttachPoint, syms: Any = None) -> bool:
        ok = ap.target in names
        report.add(ap.describe(), ok, "present" if ok else "missing")
        return ok

    return check


def test_load_picks_the_loader_once_and_the_plan_records_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ooo: ProbeSpec
) -> None:
    """The plan holds the loader, object, its hash and the points; the object is
    checked (read and hashed) once; load builds the loader the plan chose with
    the plan's options, whichever it is."""
    import tracekit.base.kernel as kernel
    import tracekit.bpf.bcc as bcc
    import tracekit.bpf.core as core
    import tracekit.bpf.core_build as core_build
    import tracekit.bpf.load as tload
    from tracekit.live.run import execute

    obj = tmp_path / "ooo-okay-x.bpf.o"
    obj.write_bytes(b"\x7fELF")
    Path(str(obj) + ".sha256").write_text("ab" * 32 + "  ooo-okay-x.bpf.o\n")
    finds: list[str] = []

    def find(spec: ProbeSpec) -> tuple[Path | None, str]:
        finds.append(spec.name)
        return obj, f"CO-RE object {obj}"

    monkeypatch.setattr(core_build, "find_object", find)
    monkeypatch.setattr(kernel, "vmlinux_btf_path", lambda: tmp_path)
    monkeypatch.setattr(tload, "preflight", lambda spec, loader: (Report(), list(spec.attach)))
    built: list[tuple[str, dict[str, Any]]] = []

    class Built(StandInProbe):
        def __init__(self, spec: ProbeSpec, params: dict[str, int], *a: Any, **kw: Any) -> None:
            super().__init__(spec, params=params)
            built.append((type(self).loader, {**kw, "args": a}))

    class Core(Built):
        loader = "core"

    class Bcc(Built):
        loader = "bcc"

    monkeypatch.setattr(core, "CoreProbe", Core)
    monkeypatch.setattr(bcc, "BccProbe", Bcc)
    monkeypatch.setattr(bcc, "remove_stale_kprobe_events", lambda: [])
    bus = build_bus(load_entry_points=False)
    for loader, want in (("auto", "core"), ("bcc", "bcc")):
        finds.clear()
        opts = RunOptions(duration=0.01, quiet=True, loader=loader, sample=3)
        plan = plan_run(bus, ooo, None, ("hist",), opts)
        assert plan.load is not None and plan.load.loader == want
        assert plan.load.points == ooo.attach
        if want == "core":
            assert plan.load.object_path == obj and plan.load.object_sha256 == "ab" * 32
        else:
            assert plan.load.object_path is None and plan.load.object_sha256 is None
        execute(bus, plan)
        assert finds == (["ooo-okay"] if want == "core" else [])  # once, at planning
        kind, kw = built[-1]
        assert kind == want and kw["sample"] == 3 and kw["aggregate"] is True
    assert tracekit.load is tload.load


def test_stop_signals_include_hup_and_quit() -> None:
    from tracekit.live.signals import STOP_SIGNALS

    assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT} <= set(STOP_SIGNALS)


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM])
def test_a_stop_signal_ends_a_run_with_summary_and_footer(tmp_path: Path, signum: int) -> None:
    from tracekit.live.run import execute
    from tracekit.traces.tracefile import TraceReader

    bus = build_bus(load_entry_points=False)
    spec = bus.probes.get("rss-cpu")
    probe = StandInProbe(spec, [synthetic_rows(spec.schema, 5)] * 1000)
    trace = tmp_path / "t.tkt"
    plan = plan_run(
        bus, spec, None, (f"msgpack={trace}",), RunOptions(quiet=True), compiled=probe.compiled()
    )
    polls = [0]

    def until() -> bool:
        polls[0] += 1
        if polls[0] == 3:
            os.kill(os.getpid(), signum)
        return False

    summary = execute(bus, plan, until=until)
    assert summary.interrupted and probe.detached >= 1 and summary.events >= 10
    reader = TraceReader(str(trace))
    list(reader.records())
    assert reader.footer is not None and reader.footer.interrupted


def test_exit_with_parent_ends_a_run_whose_parent_died(tmp_path: Path) -> None:
    """A run with no duration, started by a process that is SIGKILLed: with
    exit_with_parent it ends as on SIGTERM (footer written); the parent is a shell
    that starts it and waits."""
    trace = tmp_path / "t.tkt"
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from tracekit import RunOptions, StandInProbe, execute, plan_run
            from tracekit.plugin.bus import build_bus
            from tracekit.testing import synthetic_rows

            bus = build_bus(load_entry_points=False)
            spec = bus.probes.get("rss-cpu")
            probe = StandInProbe(spec, [synthetic_rows(spec.schema, 2)] * 10**6)
            plan = plan_run(bus, spec, None, ("msgpack={trace}",),
                            RunOptions(quiet=True, exit_with_parent=True),
                            compiled=probe.compiled())
            execute(bus, plan, on_attached=lambda: print("attached", flush=True))
            """
        )
    )
    # The shell starts the run and waits for it; the run's stdout is the shell's.
    parent = subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" "{script}" & echo $! ; wait'],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline() == "attached\n"  # readiness: the run drains
        parent.kill()  # SIGKILL: the shell passes nothing on
        parent.wait()
        _wait_gone(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    from tracekit.traces.tracefile import TraceReader

    reader = TraceReader(str(trace))
    list(reader.records())
    assert reader.footer is not None and reader.footer.interrupted


def _wait_gone(pid: int) -> None:
    """Until ``pid`` has exited (it is not our child: poll /proc)."""
    import select

    fd = os.pidfd_open(pid)
    try:
        # Readable once the process has exited; the bound only keeps a broken run
        # from hanging the suite.
        ready, _, _ = select.select([fd], [], [], 300)
        assert ready, "the run went on after its parent died"
    finally:
        os.close(fd)


def test_stale_kprobe_events_of_dead_bcc_and_libbpf_processes_are_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tracekit.bpf.bcc import remove_stale_kprobe_events

    root = fake_kprobe_tracefs(monkeypatch, tmp_path, "")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = os.getpid()
    events = [
        f"r16:kprobes/r_netdev_pick_tx_bcc_{dead.pid} netdev_pick_tx",
        f"p:kprobes/libbpf_{dead.pid}_netdev_pick_tx_0x0_0 netdev_pick_tx",
        f"p:kprobes/libbpf_{me}_fq_enqueue_0x0_1 fq_enqueue",  # alive: kept
        f"r16:kprobes/r_fq_dequeue_bcc_{me} fq_dequeue",  # alive: kept
        "p:kprobes/my_own_probe tcp_sendmsg",  # not tracekit's
    ]
    (root / "kprobe_events").write_text("\n".join(events) + "\n")
    removed = remove_stale_kprobe_events()
    assert removed == [
        f"r_netdev_pick_tx_bcc_{dead.pid}",
        f"libbpf_{dead.pid}_netdev_pick_tx_0x0_0",
    ]
    # tracefs removes an event on "-:NAME" written to kprobe_events: the fake file
    # shows what was written.
    written = (root / "kprobe_events").read_text().splitlines()[len(events) :]
    assert written == [f"-:{n}" for n in removed]
