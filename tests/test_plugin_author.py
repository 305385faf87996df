"""What a second outside plugin ran into (#27 item 7), each fixed or documented."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit import ProbeSpec, Session, StandInProbe, feed
from tracekit.plugin.bus import build_bus
from tracekit.testing import aggregate_from_keys

DATA = Path(__file__).parent / "data" / "napi_poll"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def napi() -> ProbeSpec:
    return ProbeSpec(
        name="napi-poll",
        description="NAPI polls: work against budget",
        source=DATA / "napi_poll.bpf.c",  # type: ignore[arg-type]
    )


def test_a_char_array_in_the_aggregate_key_reaches_sinks_as_text(napi: ProbeSpec) -> None:
    assert napi.agg_fields == ("cpu", "dev")
    key = struct.Struct("=I16s")
    agg = aggregate_from_keys(napi, {key.pack(1, b"(no_device)"): 7, key.pack(0, b"eth0"): 3})
    dev = napi.schema.index("dev")
    assert sorted(r[dev] for r, _ in agg.rows) == ["(no_device)", "eth0"]
    session = Session(probe=napi.name, schema=napi.schema)
    bus = build_bus(load_entry_points=False)
    out = feed(bus, session, ["hist=count,by=cpu+dev"], [], kernel_agg=agg)
    assert out.kernel_agg == tuple(agg.rows)
    # The same as a streamed event's field: text, never bytes with NULs.
    probe = StandInProbe(napi, agg=agg, aggregate=True, stream=False)
    rows = probe.read_agg()
    assert {r[dev] for r, _ in rows} == {"(no_device)", "eth0"}
    assert not any(isinstance(r[dev], bytes) for r, _ in rows)


def test_hist_prints_the_key_text(napi: ProbeSpec, capsys: pytest.CaptureFixture[str]) -> None:
    key = struct.Struct("=I16s")
    agg = aggregate_from_keys(napi, [(key.pack(1, b"(no_device)"), 5)])
    session = Session(probe=napi.name, schema=napi.schema)
    feed(build_bus(load_entry_points=False), session, ["hist=count,by=cpu+dev"], [], kernel_agg=agg)
    printed = capsys.readouterr().out
    assert "(no_device)" in printed and "b'" not in printed and "\\x00" not in printed


def _clang() -> str:
    path = shutil.which("clang")
    if path is None:
        pytest.skip("clang not installed")
    return path


@pytest.mark.parametrize(
    ("decl", "key_size", "value_size", "entries"),
    [
        ("BPF_HASH(m, struct k, u64);", 8, 8, 10240),
        ("BPF_HASH(m, struct k);", 8, 8, 10240),
        ("BPF_HASH(m);", 8, 8, 10240),
        ("BPF_HASH(m, struct k, u32, 64);", 8, 4, 64),
        ("BPF_ARRAY(m, u32);", 4, 4, 10240),
        ("BPF_PERCPU_ARRAY(m, u64, 3);", 4, 8, 3),
    ],
)
def test_map_macros_take_bccs_forms_under_core(
    tmp_path: Path, decl: str, key_size: int, value_size: int, entries: int
) -> None:
    """BCC's optional arguments (value u64, 10240 entries) mean the same under CO-RE."""
    import ctypes as ct

    from tracekit.bpf.core_build import compile_core
    from tracekit.bpf.libbpf import BpfObject

    _clang()
    src = tmp_path / "m.bpf.c"
    src.write_text(
        '#include "tk_compat.h"\nstruct k { u32 a; u32 b; };\n'
        f"{decl}\n"
        'TK_SEC("kprobe") int tk_x(struct pt_regs *ctx) { (void)m; return 0; }\n'
    )
    out = tmp_path / "m.bpf.o"
    compile_core(src, out, [ROOT / "probes"])
    with BpfObject(str(out)) as obj:
        m = obj.map("m")
        lib = obj.lib.lib
        lib.bpf_map__max_entries.restype = ct.c_uint32
        lib.bpf_map__max_entries.argtypes = [ct.c_void_p]
        assert (lib.bpf_map__key_size(m), lib.bpf_map__value_size(m)) == (key_size, value_size)
        assert lib.bpf_map__max_entries(m) == entries


def test_vm_run_help_is_usage_not_an_error() -> None:
    for flag in ("--help", "-h"):
        r = subprocess.run(["bash", str(ROOT / "vm" / "run"), flag], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("usage: vm/run"), r.stdout
        assert "--kernel" in r.stdout and "--list-kernels" in r.stdout


def test_param_signature_and_integer_params_are_documented() -> None:
    """The guide states Param's real signature (built here from the class) and that
    parameters are integers."""
    import inspect
    import json

    from tracekit import Param

    parts = []
    for p in inspect.signature(Param).parameters.values():
        empty = p.default is inspect.Parameter.empty
        parts.append(
            p.name if empty else f"{p.name}={json.dumps(p.default)}".replace("null", "None")
        )
    sig = f"Param({', '.join(parts)})"
    text = re.sub(r"\s+", " ", (ROOT / "docs" / "writing-plugins.md").read_text())
    assert f"`{sig}`" in text, sig
    assert "Parameters are integers" in text


def test_the_minimum_kernel_is_stated() -> None:
    text = (ROOT / "docs" / "writing-plugins.md").read_text()
    assert re.search(r"tracekit itself needs Linux 5\.8", text)
    assert sys.version_info >= (3, 11)


def test_the_tracepoint_example_builds_under_core(tmp_path: Path) -> None:
    """The guide's tracepoint program (tests/data/napi_poll): a CO-RE object with a
    tracepoint program, its context and __data_loc read relocated by name."""
    from tracekit.bpf.core_build import compile_core
    from tracekit.bpf.libbpf import BpfObject

    _clang()
    out = tmp_path / "napi.bpf.o"
    compile_core(DATA / "napi_poll.bpf.c", out, [ROOT / "probes"])
    with BpfObject(str(out)) as obj:
        obj.program("tk_napi_poll")
        assert obj.lib.lib.bpf_map__key_size(obj.map("tk_agg")) == 20
    data = out.read_bytes()
    assert b"trace_event_raw_napi_poll" in data and b"__data_loc_dev_name" in data
    # The guide shows this very source.
    guide = (ROOT / "docs" / "writing-plugins.md").read_text()
    src = (DATA / "napi_poll.bpf.c").read_text()
    body = src[src.index("#ifdef TK_CORE\nTK_SEC") :]
    assert body in guide
