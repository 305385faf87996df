"""A plugin written against tracekit 0.1.0 still works, with warnings (#27 item 2).

The fixture (tests/data/api-0.1.0) is the example package and the plugin guide as
0.1.0 shipped them, plus a plugin written against 0.1.0's code. Run against today's
tracekit: the package's own host tests pass unchanged, every snippet of the guide
runs, and each deprecated name warns, naming its replacement and 0.3.0. ``tracekit
list`` flags the plugin.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

from tracekit import SinkOptions, StandInProbe
from tracekit.plugin.bus import build_bus

DATA = Path(__file__).parent / "data" / "api-0.1.0"
PACKAGE = DATA / "tracekit-tcp-retrans"

ENTRY_POINTS = "[tracekit]\ntcp_retrans = tracekit_tcp_retrans\n"
METADATA = "Metadata-Version: 2.1\nName: tracekit-tcp-retrans\nVersion: 0.1.0\n"


@pytest.fixture
def old_site(tmp_path: Path) -> Path:
    """A folder that, first on PYTHONPATH, installs the 0.1.0 package as pip did:
    its module and a dist-info with its entry point (found before today's)."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE / "tracekit_tcp_retrans", site / "tracekit_tcp_retrans")
    info = site / "tracekit_tcp_retrans-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(METADATA)
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    env.pop("PYTHONWARNINGS", None)
    return env


def test_the_0_1_0_example_package_passes_its_own_tests(old_site: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(PACKAGE, pkg)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-W", "always::DeprecationWarning", "tests"],
        cwd=pkg,
        env=_env(old_site),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert re.search(r"\b5 passed, 1 skipped\b", out), out  # the VM test skips on the host
    # The package's own imports, each named with its replacement and the release
    # that removes it.
    for old, new in (
        ("tracekit.registry", "tracekit.plugin.registry"),
        ("tracekit.schema", "tracekit.base.schema"),
        ("tracekit.session", "tracekit.base.session"),
        ("tracekit.errors", "tracekit.base.errors"),
    ):
        assert (
            f"the module {old} is deprecated since tracekit 0.2.0 and goes in 0.3.0: use {new}"
            in out
        ), old


def test_tracekit_list_flags_the_plugin(old_site: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "tracekit", "list"],
        env=_env(old_site),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("tcp-retrans "))
    assert "tcp_retrans 0.1.0" in line and line.endswith("[deprecated API]"), line
    section = r.stdout.split("plugins using deprecated API", 1)[1]
    assert "tcp_retrans 0.1.0:" in section
    assert "the module tracekit.registry is deprecated" in section
    # Built-ins use none.
    assert "[deprecated API]" not in next(ln for ln in r.stdout.splitlines() if "txq-flip" in ln)


def _snippets() -> list[str]:
    text = (DATA / "writing-plugins.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _module(name: str, code: str, **names: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(names)
    exec(compile(code, f"<0.1.0 guide: {name}>", "exec"), mod.__dict__)
    return mod


def test_every_snippet_of_the_0_1_0_guide_runs(tmp_path: Path, capsys: Any) -> None:
    import click
    from click.testing import CliRunner

    from tracekit import hookimpl
    from tracekit.base.session import LostReport, Session
    from tracekit.plugin.registry import SinkSpec
    from tracekit.testing import feed, synthetic_rows

    if importlib.util.find_spec("tracekit_tcp_retrans") is None:
        pytest.skip("the example package is not installed")
    blocks = _snippets()
    assert len(blocks) == 9, len(blocks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _module("hello", blocks[0])
        # The probe and the sink: one plugin module, as a package would hold them.
        plugin = _module(
            "snippet_plugin", blocks[1] + "\n" + blocks[2], __package__="tracekit_tcp_retrans"
        )
    bus = build_bus(extra_plugins=(("snippet", plugin),), load_entry_points=False)
    spec = bus.probes.get("tcp-retrans")
    assert [h.title for h in spec.schema.histograms] == ["retrans"]
    assert spec.attach[0].describe() == "tracepoint:tcp:tcp_retransmit_skb"
    out = tmp_path / "out.csv"
    session = Session(probe="tcp-retrans", schema=plugin.SCHEMA)
    feed(bus, session, [f"csv={out}"], [synthetic_rows(plugin.SCHEMA, 20)])
    lines = out.read_text().splitlines()
    assert len(lines) == 21 and lines[0].startswith("ts_ns,cpu,saddr")

    commands = _module("commands", blocks[3])
    group = click.Group()
    commands.tracekit_add_commands(group)
    assert CliRunner().invoke(group, ["hello"]).output == "hello from my plugin\n"

    # The session hooks' snippets, as the methods of one sink.
    hooks: dict[str, Any] = {}
    for code in blocks[4:8]:
        hooks.update(
            {
                k: v
                for k, v in vars(_module("hooks", code, sys=sys, hookimpl=hookimpl)).items()
                if k.startswith("tracekit_")
            }
        )

    class Watch:
        def __init__(self, arg: str | None) -> None:
            self.per_cpu: dict[int, int] = {}

    for name, fn in hooks.items():
        setattr(Watch, name, fn)
    watcher = types.ModuleType("watch")
    built: list[Watch] = []

    def make(arg: str | None) -> Watch:
        built.append(Watch(arg))
        return built[-1]

    @hookimpl
    def tracekit_register_sinks(registry: Any) -> None:
        registry.add(SinkSpec("watch", "the guide's hooks", make))

    watcher.tracekit_register_sinks = tracekit_register_sinks  # type: ignore[attr-defined]
    wbus = build_bus(
        extra_plugins=(("snippet", plugin), ("watch", watcher)), load_entry_points=False
    )
    rows = synthetic_rows(plugin.SCHEMA, 50, seed=2)
    capsys.readouterr()
    summary = feed(wbus, session, ["watch"], [rows], lost=[LostReport("ringbuf", {0: 3})])
    said = capsys.readouterr()
    cpu = plugin.SCHEMA.index("cpu")
    assert sum(built[0].per_cpu.values()) == 50
    assert built[0].per_cpu == {c: sum(1 for r in rows if r[cpu] == c) for c in built[0].per_cpu}
    assert said.out.startswith(f"# tcp-retrans on {session.hostname}")
    assert "lost 3 events (ringbuf)" in said.err
    assert f"{summary.events} events, 3 lost in" in said.out

    with warnings.catch_warnings():
        # Its old import path warns (once per process: checked in a process of its
        # own above).
        warnings.simplefilter("ignore", DeprecationWarning)
        testing = _module("testing_snippet", blocks[8], SCHEMA=plugin.SCHEMA)
    testing.test_my_sink(tmp_path)


def test_a_plugin_written_against_0_1_0_code_works_with_warnings(tmp_path: Path) -> None:
    """enrich assigning session.symbols, default_histograms(), Session(symbols=...):
    each works and warns, naming its replacement and 0.3.0."""
    spec_path = DATA / "kfree_skb_plugin.py"
    spec = importlib.util.spec_from_file_location("kfree_skb_plugin_0_1_0", spec_path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    with pytest.warns(DeprecationWarning, match=r"enrich\(bpf, session, rows\).*0\.3\.0"):
        spec.loader.exec_module(mod)
    with pytest.warns(
        DeprecationWarning, match=r"default_histograms\(\).*0\.3\.0.*schema.histograms"
    ):
        assert mod.default_titles() == ["drops"]
    with pytest.warns(DeprecationWarning, match=r"Session\(symbols=...\).*0\.3\.0.*add_symbols"):
        seeded = mod.session_with_names({0x10: "tcp_v4_rcv"})
    assert seeded.symbols[0x10] == "tcp_v4_rcv"

    # enrich, as a run calls it, on a stand-in of the kernel: stack 5's caller is
    # 0x20, named through the 0.1.0 bpf object and recorded by assignment.
    probe = StandInProbe(mod.PROBE, stacks={5: [0x10, 0x20]}, symbols={0x20: "skb_release_data"})
    session = probe.session()
    row = (1, 0, 2, 5)
    with pytest.warns(DeprecationWarning, match=r"session.symbols\[...\] = .*add_symbols"):
        (enriched,) = probe.enrich([row], session)
    assert enriched == (1, 0x20, 2, 5) and session.symbols[0x20] == "skb_release_data"
    # The names reach the trace file like any: replayed into the plugin's own sink.
    bus = build_bus(extra_plugins=(("kfree", mod),), load_entry_points=False)
    from tracekit.testing import feed
    from tracekit.traces.replay import replay

    trace, prom = tmp_path / "t.tkt", tmp_path / "drops.prom"
    feed(bus, session, [f"msgpack={trace}"], [[enriched, enriched]])
    replay(bus, str(trace), (f"promtext={prom}",), SinkOptions())
    assert prom.read_text() == 'skb_drops_total{caller="skb_release_data"} 2\n'
