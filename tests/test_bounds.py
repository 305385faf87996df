"""Every number a user gives is bounded (issue #26): each numeric option of every
command, every probe parameter, the sinks' arguments, the .rodata a probe's settings
are written to. Out of range is one line ``tracekit: ...`` and status 2, never a
traceback, and never reaches the command's work."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import tracefuzz

from tracekit.base.errors import TracekitError
from tracekit.bpf.libbpf import LibbpfError, rodata_bytes
from tracekit.cli.main import cli
from tracekit.cli.options import Seconds
from tracekit.plugin.bus import build_bus

HOSTILE = (
    "-1",
    "0",
    "-9223372036854775809",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e309",
    "inf",
    "-inf",
    "nan",
    "0x10",
    "",
)


class Accepted(TracekitError):
    """The command's work was reached: the value passed every check before it."""

    exit_code = 99


def _commands() -> Iterator[tuple[list[str], click.Command]]:
    def walk(cmd: click.Command, path: list[str]) -> Iterator[tuple[list[str], click.Command]]:
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
                yield from walk(sub, [*path, name])
        else:
            yield path, cmd

    yield from walk(cli, [])


def _numeric(p: click.Parameter) -> bool:
    t = p.type
    return isinstance(t, Seconds | click.types._NumberParamTypeBase) or t in (
        click.INT,
        click.FLOAT,
    )


OPTIONS = [
    (path, opt)
    for path, cmd in _commands()
    for p in cmd.params
    if isinstance(p, click.Option) and _numeric(p)
    for opt in p.opts[-1:]
]


def test_the_walk_finds_the_numeric_options() -> None:
    found = {(" ".join(path), opt) for path, opt in OPTIONS}
    assert {
        ("run", "--duration"),
        ("run", "--sample"),
        ("run", "--buffer-pages"),
        ("run", "--max-events-per-sec"),
        ("lab fq-throttle", "--flow-limit"),
        ("lab txq-flip", "--duration"),
    } <= found


@pytest.mark.parametrize("path,opt", OPTIONS, ids=[f"{' '.join(p)} {o}" for p, o in OPTIONS])
def test_every_numeric_option_has_both_bounds(path: list[str], opt: str) -> None:
    cmd = dict((" ".join(p), c) for p, c in _commands())[" ".join(path)]
    p = next(x for x in cmd.params if opt in x.opts)
    if isinstance(p.type, Seconds):
        return
    assert isinstance(p.type, click.IntRange | click.FloatRange), (path, opt, p.type)
    assert p.type.min is not None and p.type.max is not None, (path, opt)


def _argv_for(path: list[str], cmd: click.Command) -> list[str]:
    """Values for the command's required arguments and options."""
    out: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        value = p.type.choices[0] if isinstance(p.type, click.Choice) else "txq-flip"
        out += [value] if isinstance(p, click.Argument) else [p.opts[-1], str(value)]
    return out


@pytest.mark.parametrize("path,opt", OPTIONS, ids=[f"{' '.join(p)} {o}" for p, o in OPTIONS])
def test_out_of_range_values_are_one_line_before_any_work(
    path: list[str], opt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cmd = dict((" ".join(p), c) for p, c in _commands())[" ".join(path)]

    def reached(*a: object, **kw: object) -> None:
        raise Accepted(f"{' '.join(path)} {opt}: accepted")

    monkeypatch.setattr(cmd, "callback", reached)
    p = next(x for x in cmd.params if opt in x.opts)
    for value in HOSTILE:
        t = p.type
        if (
            isinstance(t, click.IntRange)
            and value.lstrip("-").isdigit()
            and (t.min is None or int(value) >= t.min)
            and (t.max is None or int(value) <= t.max)
        ):
            continue  # in range for this option (0 for --max-events-per-sec)
        r = tracefuzz.run_cli([*path, opt, value, *_argv_for(path, cmd)])
        assert r.status == 2, (path, opt, value, r.status, r.stderr)
        assert r.stderr.startswith("tracekit: ") and r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr


def test_the_sample_rate_from_the_issue_is_refused() -> None:
    r = tracefuzz.run_cli(["run", "txq-flip", "--sample", "4294967296"])
    assert r.status == 2 and "4294967296 is not in the range 1<=x<=4294967295" in r.stderr
    r = tracefuzz.run_cli(["run", "txq-flip", "--buffer-pages", "8192"])
    assert r.status == 2 and "8192 is not in the range 1<=x<=4096" in r.stderr


PARAMS = [(spec.name, p) for spec in build_bus().probes for p in spec.params]


@pytest.mark.parametrize("probe,param", PARAMS, ids=[f"{s} {p.name}" for s, p in PARAMS])
def test_every_probe_parameter_is_bounded_both_ways(
    probe: str, param: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracekit.plugin.registry import Param

    assert isinstance(param, Param)
    assert param.minimum is not None and param.maximum is not None, (probe, param.name)

    def reached(*a: object, **kw: object) -> None:
        raise Accepted("accepted")

    monkeypatch.setattr("tracekit.live.run.plan_run", reached)
    for value in (param.minimum - 1, param.maximum + 1, 2**64, "nan", "inf", "1e3", ""):
        r = tracefuzz.run_cli(["run", probe, "--param", f"{param.name}={value}"])
        assert r.status == 2, (probe, param.name, value, r.stderr)
        assert r.stderr.startswith("tracekit: ") and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize(
    "sink,needle",
    [
        ("prometheus=127.0.0.1:0,hold=inf", "hold='inf': must be seconds from 0 to 86400"),
        ("prometheus=127.0.0.1:0,hold=nan", "hold='nan': must be seconds"),
        ("prometheus=127.0.0.1:0,hold=-1", "hold='-1': must be seconds"),
        ("prometheus=127.0.0.1:0,hold=1e300", "hold='1e300': must be seconds"),
        ("prometheus=127.0.0.1:0,hold=x", "hold='x' is not seconds"),
        ("prometheus=127.0.0.1:65536", "expected ADDR:PORT"),
        ("prometheus=127.0.0.1:-1", "expected ADDR:PORT"),
        ("prometheus=127.0.0.1:\u00b2", "expected ADDR:PORT"),
        ("prometheus=127.0.0.1:" + "9" * 5000, "expected ADDR:PORT"),
        ("hist=lat,linear=0:99999999999999999999999:1", "within 64-bit values"),
        ("hist=lat,linear=0:1e309:1", "expected LO:HI:STEP"),
        ("hist=lat,linear=0:nan:1", "expected LO:HI:STEP"),
        ("hist=lat,linear=0:10:0", "step > 0"),
        ("hist=lat,linear=0:10:-1", "step > 0"),
        ("hist=lat,linear=0:1000000:1", "buckets (limit 10000)"),
        ("console=-1", "valid forms are console, console=json"),
        ("msgpack=", "msgpack"),
    ],
)
def test_sink_arguments_out_of_range_are_one_line(tmp_path: Path, sink: str, needle: str) -> None:
    p = tmp_path / "t.tkt"
    p.write_bytes(tracefuzz.serialize(tracefuzz.base_records(random.Random(1))))
    r = tracefuzz.run_cli(["replay", str(p), "--sink", sink])
    assert r.status == 2, (sink, r.status, r.stderr)
    assert r.stderr.startswith("tracekit: ") and r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr


@pytest.mark.parametrize(
    "off,width,value,ok",
    [
        (0, 4, 7, True),
        (12, 4, 2**32 - 1, True),
        (8, 8, -(2**63), True),
        (-4, 4, 1, False),  # before the map's initial value
        (-(2**40), 8, 1, False),
        (13, 4, 1, False),  # past its end
        (0, 3, 1, False),
        (0, 4, 2**32, False),  # OverflowError from to_bytes before
        (0, 1, -129, False),
    ],
)
def test_rodata_writes_stay_inside_rodata(off: int, width: int, value: int, ok: bool) -> None:
    if ok:
        assert len(rodata_bytes("tk_cfg_x", off, width, 16, value)) == width
    else:
        with pytest.raises(LibbpfError, match="tk_cfg_x"):
            rodata_bytes("tk_cfg_x", off, width, 16, value)
