from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import tracekit
from tracekit import hookimpl
from tracekit.base.session import EventBatch, LostReport, Session
from tracekit.cli.main import cli
from tracekit.plugin.bus import build_bus
from tracekit.plugin.registry import SinkRegistry, SinkSpec
from tracekit.testing import feed

TRACEKIT = [sys.executable, "-m", "tracekit"]


def tk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TRACEKIT, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def trace(
    tmp_path: Path, session: Session, rows: list, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, str]:
    """A recording made through the same pipeline as a live run, and the live hist output."""
    p = tmp_path / "rec.tkt"
    capsys.readouterr()
    feed(
        None,
        session,
        ["hist", f"msgpack={p}"],
        [rows[:250], rows[250:]],
        lost=[LostReport("perf", {1: 7})],
        counters={
            "txq_counts": {
                "calls": {0: 900, 1: 100},
                "changes": {0: 5, 1: 6},
                "no_socket": {0: 0, 1: 0},
            }
        },
    )
    return p, capsys.readouterr().out


def test_replay_hist_prints_exactly_what_the_live_run_printed(trace: tuple[Path, str]) -> None:
    path, live = trace
    assert "@queue_after[" in live and "@txq_counts.calls: total=1000" in live
    r = tk("replay", str(path), "--sink", "hist")
    assert r.returncode == 0, r.stderr
    assert r.stdout == live


def test_replay_console_and_json(trace: tuple[Path, str]) -> None:
    path, _ = trace
    r = tk("replay", str(path))
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["time(s)", "sk", "cpu"] and len(lines) == 501
    r = tk("replay", str(path), "--sink", "console=json")
    objs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(objs) == 501 and "summary" in objs[-1] and objs[0]["saddr"].count(".") == 3


def test_info(trace: tuple[Path, str]) -> None:
    path, _ = trace
    r = tk("info", str(path))
    assert r.returncode == 0
    assert "probe:     txq-flip (parameters: ifindex=0)" in r.stdout
    assert "kernel 6.1.0-test, 2 CPUs" in r.stdout and "on testhost" in r.stdout
    # The msgpack sink joined the two batches of 250 (they came within 100 ms).
    assert "500 events in 1 batches" in r.stdout
    assert "lost:      7 (perf: cpu1=7)" in r.stdout
    assert "counter:   txq_counts.calls = 1000" in r.stdout


def test_truncated_file_replays_with_one_warning(trace: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = trace
    cut = tmp_path / "cut.tkt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    # (Findings off: they follow the warning, computed from what was replayed.)
    r = tk("replay", str(cut), "--sink", "hist", "--findings", "off")
    assert r.returncode == 0
    assert r.stderr.count("\n") == 1 and "ends early" in r.stderr and "Traceback" not in r.stderr
    r = tk("info", str(cut))
    assert "footer:    missing" in r.stdout


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x89TKT\r\n\x1a\n\xff\xff"])
def test_corrupt_or_foreign_files_one_line_exit_2(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.tkt"
    p.write_bytes(content)
    for cmd in ("replay", "info"):
        r = tk(cmd, str(p))
        assert r.returncode == 2
        assert r.stderr.startswith("tracekit: ") and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "nope"], "unknown probe 'nope'; valid: fq-throttle, ooo-okay, rss-cpu, "),
        (
            ["run", "txq-flip", "--sink", "nope"],
            "unknown sink 'nope'; valid: console, ",
        ),
        (["run", "txq-flip", "--param", "bogus=1"], "has no parameter 'bogus'; valid: ifindex"),
        (["run", "txq-flip", "--param", "ifindex=abc"], "is not an integer"),
        (["run", "txq-flip", "--sink", "hist=nofield"], "no field 'nofield'"),
        (["run", "txq-flip", "--sink", "msgpack"], "needs a file"),
        (["run"], "Missing argument 'PROBE'"),
        (["replay", "/nonexistent/x.tkt"], "cannot read"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_one_line_exit_2(args: list[str], needle: str) -> None:
    r = tk(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_existing_recording_is_not_overwritten(trace: tuple[Path, str]) -> None:
    path, _ = trace
    r = tk("run", "txq-flip", "--sink", f"msgpack={path}")
    assert r.returncode == 2 and "exists; pass --force" in r.stderr


def test_list_and_json_and_version() -> None:
    r = tk("list")
    assert "txq-flip" in r.stdout and f"tracekit.probes.txq_flip {tracekit.__version__}" in r.stdout
    data = json.loads(tk("list", "--json").stdout)
    assert {s["name"] for s in data["sinks"]} >= {"console", "hist", "msgpack"}
    first = tk("--version").stdout.splitlines()[0]
    assert (
        first
        == f"tracekit {tracekit.__version__} (distribution tracekit-ebpf {tracekit.__version__})"
    )


def test_run_without_bcc_says_so_in_one_line(tmp_path: Path) -> None:
    # A Python with tracekit but without the system's site-packages cannot see BCC.
    code = (
        "import sys; sys.modules['bcc'] = None; from tracekit.cli.main import main; "
        "main(['run', 'txq-flip', '--loader', 'bcc', '--duration', '1'])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode in (3, 4), r.stderr  # no BCC, or (as a non-root user) not root
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "BCC" in r.stderr or "root" in r.stderr


def test_the_core_loader_never_imports_bcc() -> None:
    """Where the probe's CO-RE object is built and the kernel has BTF, BCC is not
    needed at all: the run gets past the point where the BCC path would stop."""
    from tracekit.bpf.preflight import choose_loader
    from tracekit.plugin.bus import build_bus

    if choose_loader(build_bus().probes.get("txq-flip"))[0] != "core":
        pytest.skip("no CO-RE object or no BTF here")
    code = (
        "import sys; sys.modules['bcc'] = None; from tracekit.cli.main import main; "
        "main(['run', 'txq-flip', '--loader', 'core', '--duration', '1'])"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "BCC" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 or r.returncode == 0, r.stderr


class CountSink:
    def __init__(self, arg: str | None) -> None:
        self.n = 0

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        self.n += len(batch)

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: object) -> None:
        print(f"counted {self.n}")


class ThirdParty:
    @hookimpl
    def tracekit_register_sinks(self, registry: SinkRegistry) -> None:
        registry.add(SinkSpec("count", "counts events", CountSink))


def test_third_party_sink_used_by_replay(
    trace: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = trace
    import tracekit.cli.main as tcli

    bus = build_bus(extra_plugins=(("thirdparty", ThirdParty()),))
    monkeypatch.setattr(tcli, "_bus", lambda ctx: bus)
    res = CliRunner().invoke(cli, ["replay", str(path), "--sink", "count"])
    assert res.exit_code == 0, res.output
    assert "counted 500" in res.output


@pytest.mark.parametrize("kind", ["sink", "probe"])
def test_new_skeleton_passes_its_own_tests(kind: str, tmp_path: Path) -> None:
    r = tk("new", kind, "my-thing", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    root = tmp_path / "tracekit-my-thing"
    assert (root / "pyproject.toml").exists() and (root / "tracekit_my_thing").is_dir()
    if kind == "probe":
        src = (root / "tracekit_my_thing" / "my_thing.bpf.c").read_text()
        assert "struct tk_event {" in src and "tk_emit(ctx, &ev)" in src
    t = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(root / "tests")],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert t.returncode == 0, t.stdout + t.stderr
    assert "passed" in t.stdout
    again = tk("new", kind, "my-thing", "--dir", str(tmp_path))
    assert again.returncode == 2 and "exists" in again.stderr


def test_lab_rss_spread_without_the_nic_pair_is_one_line() -> None:
    # Outside the VM there is no virtio-net pair: --spread rss cannot be honoured,
    # and the lab says so before compiling anything or creating a namespace.
    r = tk("lab", "rss-cpu", "--spread", "rss", "--link", "veth")
    assert r.returncode == 12, r.stderr
    assert r.stderr.strip() == (
        "tracekit: --spread rss needs the VM's RSS NIC pair (vm/run makes it); try rps"
    )


class Commands:
    """A plugin adding a command, as docs/writing-plugins.md shows."""

    @hookimpl
    def tracekit_add_commands(self, cli: click.Group) -> None:
        @click.command("plugins")
        def plugins() -> None:
            for name in tracekit.current_bus().plugins:
                click.echo(name)

        cli.add_command(plugins)


def test_a_plugin_command_runs_with_the_command_lines_bus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = build_bus(extra_plugins=(("commands", Commands()),))
    monkeypatch.setattr(cli, "_plugins_added", False, raising=False)
    try:
        res = CliRunner().invoke(cli, ["plugins"], obj={"bus": bus})
    finally:
        cli.commands.pop("plugins", None)  # the module's group outlives this test
    assert res.exit_code == 0, res.output
    # The same bus (one built afresh would not have the extra plugin), labs included.
    assert res.output.split() == list(bus.plugins)
    assert "commands" in res.output.split() and "tracekit.lab" in res.output.split()
    # The labs come the same way: a plugin (here disabled) and its command are gone.
    r = subprocess.run(
        [sys.executable, "-m", "tracekit", "lab", "--help"],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "TRACEKIT_DISABLE_PLUGINS": "lab"},
    )
    assert r.returncode == 2 and "No such command 'lab'" in r.stderr, r.stderr


def test_run_and_the_labs_share_their_option_declarations() -> None:
    """--sink, --force and --loader are declared once (tracekit/cli/options.py): a
    lab's differ from `tracekit run`'s only in --sink's default."""
    from tracekit.cli.main import cli

    ctx = click.Context(cli)
    run = {p.name: p for p in cli.commands["run"].params}
    lab_group = cli.get_command(ctx, "lab")
    assert isinstance(lab_group, click.Group)
    labs = [lab_group.get_command(ctx, n) for n in lab_group.list_commands(ctx)]
    assert len(labs) == 4
    for lab in labs:
        assert lab is not None
        params = {p.name: p for p in lab.params}
        for name in ("force",) + (("loader",) if "loader" in params else ()):
            assert params[name].help == run[name].help, (lab.name, name)
        sink_help = params["sinks"].help or ""
        assert sink_help == f"{run['sinks'].help}; default: hist", lab.name
