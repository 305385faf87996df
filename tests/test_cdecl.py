"""The C declarations read without a compiler (tracekit/base/cdecl.py), and against clang.

A probe's struct tk_event, struct tk_agg_key and counter enums are declared once, in
its C. tracekit lays them out itself (replay, tests and `tracekit new` have no
compiler); here that layout is compared with clang's own, read from the BTF of the
object clang makes of the same text, for every installed probe.
"""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path

import pytest

from tracekit.base.cdecl import CDeclError, CSource
from tracekit.base.schema import Field, HistSpec, Schema
from tracekit.bpf.btf import Btf
from tracekit.plugin.bus import build_bus
from tracekit.plugin.registry import AttachPoint, CounterMap, ProbeSpec

# The types probes use, as the kernel (and tk_compat.h) defines them.
PRELUDE = """
typedef unsigned char __u8; typedef signed char __s8;
typedef unsigned short __u16; typedef short __s16;
typedef unsigned int __u32; typedef int __s32;
typedef unsigned long long __u64; typedef long long __s64;
typedef __u8 u8; typedef __s8 s8; typedef __u16 u16; typedef __s16 s16;
typedef __u32 u32; typedef __s32 s32; typedef __u64 u64; typedef __s64 s64;
typedef __u16 __be16; typedef __u32 __be32;
"""

# Every supported construct, with holes clang must leave (after `a`, `port`, `tail`).
AWKWARD = """
#define NAME_LEN 12
struct tk_event {
    u8 a;               /* hole of 7 after it */
    __u64 b;
    __be16 port;        /* hole of 2 */
    s32 c, d;
    char name[NAME_LEN];
    u16 grid[2][3];
    __be32 addr;
    u8 tail;            /* and tail padding to 8 */
};
"""


def clang_layout(
    text: str, names: list[str], tmp: Path
) -> dict[str, tuple[int, list[tuple[str, int, int]]]]:
    """{struct: (size, [(member, offset, size)])} as clang lays ``text`` out for BPF."""
    src, obj = tmp / "layout.c", tmp / "layout.o"
    src.write_text(PRELUDE + text + "".join(f"\nstruct {n} tk_use_{n};" for n in names) + "\n")
    p = subprocess.run(
        ["clang", "-target", "bpf", "-g", "-O2", "-c", str(src), "-o", str(obj)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".BTF")
        assert sec is not None
        btf = Btf(sec.data())
    out = {}
    for n in names:
        st = btf.find_struct(n)
        out[n] = (
            st.size_or_type,
            [(m.name, m.offset, btf.size_of(m.type_id)) for m in st.members],
        )
    return out


def ours(src: CSource, name: str) -> tuple[int, list[tuple[str, int, int]]]:
    st = src.struct(name)
    return st.size, [(m.name, m.offset, m.size) for m in st.members]


needs_clang = pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")


def _sources() -> list[tuple[str, str, str]]:
    return [(s.name, s.source.read_text(), s.source.name) for s in build_bus().probes]


@needs_clang
@pytest.mark.parametrize("name,text,path", _sources(), ids=[s[0] for s in _sources()])
def test_every_probe_is_laid_out_as_clang_does(
    name: str, text: str, path: str, tmp_path: Path
) -> None:
    """Each installed probe's (built-ins, the example) structs, as tracekit reads them,
    member by member and byte for byte against clang's BTF of the same text."""
    src = CSource.parse(text, path)
    names = [n for n in ("tk_event", "tk_agg_key") if src.has_struct(n)]
    decls = "\n".join(src.declaration(n) for n in names)
    theirs = clang_layout(decls, names, tmp_path)
    for n in names:
        assert ours(src, n) == theirs[n], (name, n)


@needs_clang
def test_the_tracekit_new_template_is_laid_out_as_clang_does(tmp_path: Path) -> None:
    from tracekit.cli.scaffold import scaffold

    root = scaffold("probe", "my-probe", tmp_path)
    src = CSource.parse((root / "tracekit_my_probe" / "my_probe.bpf.c").read_text())
    theirs = clang_layout(src.declaration("tk_event"), ["tk_event"], tmp_path)
    assert ours(src, "tk_event") == theirs["tk_event"]
    assert src.counter_labels("my_probe_counts") == ("packets",)


@needs_clang
def test_holes_arrays_and_defines_as_clang_lays_them_out(tmp_path: Path) -> None:
    src = CSource.parse(AWKWARD)
    assert ours(src, "tk_event") == clang_layout(AWKWARD, ["tk_event"], tmp_path)["tk_event"]
    st = src.struct("tk_event")
    assert st.size == 64 and [m.offset for m in st.members][:4] == [0, 8, 16, 20]
    # Arrays of integers become one field per element; char arrays are text.
    schema = Schema.from_struct(st, (Field("grid", unit="pkts"), Field("name", key=True)))
    assert schema.names[5:12] == ("name", "grid_0_0", "grid_0_1", "grid_0_2", "grid_1_0",
                                  "grid_1_1", "grid_1_2")  # fmt: skip
    assert schema.field("name").type == "str12" and schema.field("name").key
    assert all(schema.field(f"grid_1_{i}").unit == "pkts" for i in range(3))
    assert schema.kernel_offsets()[6:8] == [40, 42]


@needs_clang
@pytest.mark.parametrize("spec", [s for s in build_bus().probes if s.counters],
                         ids=lambda s: s.name)  # fmt: skip
def test_counter_enums_count_as_c_counts(spec: ProbeSpec, tmp_path: Path) -> None:
    """Slot i of each label is what the C compiler gives the enumerator."""
    src = CSource.parse(spec.source.read_text(), spec.source.name)
    checks = []
    for cm in spec.counters:
        block = src.enum(cm.map)
        assert block is not None, f"{spec.name}: {cm.map} has no enum in the C"
        text = src.text[src.text.index(f"enum {cm.map}") :]
        text = text[: text.index("}") + 1] + ";"
        checks.append(text)
        for i, label in enumerate(cm.labels):
            checks.append(f'_Static_assert({cm.map.upper()}_{label.upper()} == {i}, "{label}");')
    (tmp_path / "e.c").write_text("\n".join(checks) + "\n")
    p = subprocess.run(
        ["clang", "-target", "bpf", "-fsyntax-only", str(tmp_path / "e.c")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize(
    "body,error",
    [
        ("struct sock *sk;", r"x\.bpf\.c:4: struct tk_event: member type 'struct sock' is not"),
        ("void *p;", r"x\.bpf\.c:4: .*'void'"),
        ("u64 *p;", r"x\.bpf\.c:4: .*pointers are not supported"),
        ("u8 flag : 1;", r"x\.bpf\.c:4: .*bitfields are not supported"),
        ("unsigned int n;", r"x\.bpf\.c:4: .*'unsigned int'"),
        ("int n;", r"x\.bpf\.c:4: struct tk_event: member type 'int' is not one tracekit lays"),
        ("char c;", r"x\.bpf\.c:4: .*a char member must be an array"),
        ("char comm[TASK_COMM_LEN];", r"x\.bpf\.c:4: .*'TASK_COMM_LEN' is neither a number"),
        ("u8 z[0];", r"x\.bpf\.c:4: .*must be positive"),
        ("struct { u8 a; } in;", r"x\.bpf\.c:4: .*nested braces"),
        ("u8 a;\n#ifdef TK_CORE\n    u8 b;\n#endif", r"x\.bpf\.c:5: .*preprocessor lines"),
        ("u8 x;\n    u16 x;", r"x\.bpf\.c:5: .*member x twice"),
    ],
)
def test_what_is_not_laid_out_is_refused_naming_the_line(body: str, error: str) -> None:
    text = f"/* a probe */\n#include <x.h>\nstruct tk_event {{\n    {body}\n}};\n"
    with pytest.raises(CDeclError, match=error):
        CSource.parse(text, "x.bpf.c").struct("tk_event")


def test_declared_twice_or_with_attributes_or_not_at_all() -> None:
    twice = (
        "#ifdef TK_CORE\nstruct tk_event { u8 a; };\n#else\nstruct tk_event { u16 a; };\n#endif\n"
    )
    with pytest.raises(CDeclError, match=r"p\.c:4: struct tk_event is declared 2 times"):
        CSource.parse(twice, "p.c").struct("tk_event")
    packed = "struct tk_event { u8 a; u32 b; } __attribute__((packed));"
    with pytest.raises(CDeclError, match="attributes are not supported"):
        CSource.parse(packed, "p.c").struct("tk_event")
    with pytest.raises(CDeclError, match="no 'struct tk_event"):
        CSource.parse("/* struct tk_event { u8 a; }; */ struct other { u8 a; };").struct("tk_event")


def test_padding_members_never_become_fields() -> None:
    text = "struct tk_event { u64 ts; u8 a; u8 pad; u16 _rsvd; u32 pad2; u8 padding; };"
    st = CSource.parse(text).struct("tk_event")
    assert [n for n, _, _ in st.fields()] == ["ts", "a", "padding"]  # `padding` is a name
    schema = Schema.from_struct(st)
    assert schema.size == 10 and schema.kernel_size == 24
    with pytest.raises(ValueError, match="'pad' is padding, not a field"):
        Schema.from_struct(st, (Field("pad", display="hex"),))


def test_presentation_names_a_member_and_keeps_its_type() -> None:
    st = CSource.parse("struct tk_event { u64 ts_ns; u32 cpu; u32 _p; };", "p.c").struct("tk_event")
    with pytest.raises(
        ValueError, match=r"p\.c: struct tk_event has no member 'cpus'; its fields are ts_ns, cpu"
    ):
        Schema.from_struct(st, (Field("cpus", key=True),))
    with pytest.raises(ValueError, match="cpu is u32 in the C, not u16"):
        Schema.from_struct(st, (Field("cpu", "u16"),))
    with pytest.raises(KeyError, match="no field 'nope'"):
        Schema.from_struct(st, histograms=(HistSpec(value="nope"),))
    with pytest.raises(ValueError, match="has no type"):
        Schema((Field("cpu"),))  # a presentation is no schema by itself


def test_kernel_records_with_holes_decode_to_packed_rows() -> None:
    import struct as st

    import numpy as np

    from tracekit.bpf.core import CoreProbe
    from tracekit.bpf.ringbuf import HEADER

    text = "struct tk_event { u8 a; u64 b; u16 pad; char s[3]; };"
    schema = Schema.from_c(text)
    assert schema.kernel_size == 24 and schema.size == 12
    raw = st.pack("=B7xQH3s3x", 7, 2**40, 0xBEEF, b"ab\0")
    assert schema.make_decoder().decode(raw) == (7, 2**40, "ab")
    # The CO-RE drain: ring records (8-byte header, the record, padding to 8) become
    # a packed batch in one numpy step.
    fake = types.SimpleNamespace(spec=types.SimpleNamespace(name="t"))
    decode = CoreProbe._make_decoder(fake, schema)  # type: ignore[arg-type]
    run = b"".join(st.pack("=II", 24, 0) + st.pack("=B7xQH3s3x", i, i * 3, 0xBEEF, b"x")
                   for i in range(4))  # fmt: skip
    assert len(run) == 4 * (HEADER + 24)
    batch = decode(memoryview(run), 4)
    assert batch.array.dtype == schema.dtype and batch.array.dtype.itemsize == 12
    assert batch.rows == [(i, i * 3, "x") for i in range(4)]
    assert np.frombuffer(batch.array.tobytes(), dtype=schema.dtype).shape == (4,)


SPEC_C = """
struct tk_event { u64 ts_ns; u32 cpu; u16 port; u8 proto; u8 pad; };
struct tk_agg_key { u32 cpu; u16 port; u16 pad; };
enum my_counts { MY_COUNTS_SEEN, MY_COUNTS_KEPT, MY_COUNTS_NSLOTS };
BPF_PERCPU_ARRAY(my_counts, u64, MY_COUNTS_NSLOTS);
"""


def _spec(tmp_path: Path, text: str, **kw: object) -> ProbeSpec:
    src = tmp_path / "p.bpf.c"
    src.write_text(text)
    args: dict[str, object] = dict(
        name="p",
        description="p",
        source=src,
        attach=(AttachPoint("kprobe", "f", "tk_f"),),
        counters=(CounterMap("my_counts"),),
    )
    args.update(kw)
    return ProbeSpec(**args)  # type: ignore[arg-type]


def test_a_probe_spec_reads_schema_key_and_counter_labels_from_its_c(tmp_path: Path) -> None:
    spec = _spec(tmp_path, SPEC_C, fields=(Field("port", display="port"),))
    assert spec.schema.names == ("ts_ns", "cpu", "port", "proto")
    assert spec.schema.field("port").display == "port"
    assert spec.agg_fields == ("cpu", "port")
    assert spec.counters[0].labels == ("seen", "kept")
    from dataclasses import replace

    assert replace(spec, min_kernel="6.1").schema == spec.schema  # copies read it again


@pytest.mark.parametrize(
    "text,kw,error",
    [
        (SPEC_C.replace("u16 port; u16 pad; }", "u16 port; u8 qos; }"), {},
         "member qos is not a field"),
        (SPEC_C.replace("struct tk_agg_key { u32 cpu;", "struct tk_agg_key { u64 cpu;"), {},
         "member cpu is u64, the event's is u32"),
        (SPEC_C, {"agg_fields": ("cpu",)}, "agg_fields .* differ from struct tk_agg_key"),
        (SPEC_C, {"counters": (CounterMap("my_counts", ("a", "b")),)},
         "differ from enum my_counts"),
        (SPEC_C, {"counters": (CounterMap("other_counts"),)}, "declare 'enum other_counts"),
        (SPEC_C.replace("MY_COUNTS_KEPT", "KEPT"), {}, "KEPT must be named MY_COUNTS_<LABEL>"),
        (SPEC_C.replace("MY_COUNTS_NSLOTS);", "3);"), {}, "my_counts has 3 slots but enum"),
        (SPEC_C.replace("MY_COUNTS_KEPT,", "MY_COUNTS_KEPT = 5,"), {}, "slots are numbered 0, 1"),
        (SPEC_C, {"schema": Schema((Field("a", "u8"),)), "fields": (Field("a"),)}, "not both"),
    ],
)  # fmt: skip
def test_a_probe_spec_refuses_what_its_c_contradicts(
    tmp_path: Path, text: str, kw: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        _spec(tmp_path, text, **kw)


@needs_clang
def test_a_compiled_layout_that_drifted_from_the_source_is_named(tmp_path: Path) -> None:
    """What both loaders do before a run: compare the compiler's struct with the one
    tracekit read. Here the compiler saw another declaration (a u64 port)."""
    from tracekit.bpf.bcc import layout_problems

    schema = Schema.from_c(AWKWARD)
    size, members = clang_layout(AWKWARD, ["tk_event"], tmp_path)["tk_event"]
    assert layout_problems([(n, o) for n, o, _ in members], size, schema) == []
    drifted = AWKWARD.replace("__be16 port;", "u64 port;")
    size, members = clang_layout(drifted, ["tk_event"], tmp_path)["tk_event"]
    problems = layout_problems([(n, o) for n, o, _ in members], size, schema)
    assert "c at offset 24, schema says 20" in problems, problems
    assert "tail at offset 60, schema says 56" in problems, problems


SETTINGS_C = (
    SPEC_C
    + """
#define TK_SETTING(type, name, macro, dflt) const volatile type name = dflt  /* no setting */
TK_SETTING(u32, tk_limit, TK_LIMIT, 0xffffffff);
TK_SETTING(u64, tk_other,
           TK_OTHER, 0);  /* across lines */
"""
)


def test_settings_are_read_from_the_c_and_reach_a_core_object(tmp_path: Path) -> None:
    """A value prepare() computes at load reaches the CO-RE object's variable named by
    its TK_SETTING; other macros are the BCC build's only; a setting the object lacks
    is refused (the program would run with its default)."""
    from tracekit.base.errors import CompileError
    from tracekit.bpf.core import prepared_settings

    def prepare(params: dict[str, int]) -> dict[str, int]:
        return {"TK_LIMIT": 7, "TK_OTHER": 9, "TK_OFF_ONLY_FOR_BCC": 3}

    spec = _spec(tmp_path, SETTINGS_C, prepare=prepare)
    assert spec.setting_variables() == {"TK_LIMIT": "tk_limit", "TK_OTHER": "tk_other"}
    rodata = {"tk_limit": (0, 4), "tk_other": (8, 8), "tk_cfg_stream": (16, 4)}
    assert prepared_settings(spec, {}, rodata) == {"tk_limit": 7, "tk_other": 9}
    with pytest.raises(CompileError, match="no setting tk_other"):
        prepared_settings(spec, {}, {"tk_limit": (0, 4)})
    assert prepared_settings(_spec(tmp_path, SETTINGS_C), {}, rodata) == {}


def test_a_settings_macro_names_one_variable(tmp_path: Path) -> None:
    text = SPEC_C + "TK_SETTING(u32, a, TK_X, 0);\nTK_SETTING(u32, b, TK_X, 0);\n"
    with pytest.raises(CDeclError, match="TK_X names both a and b"):
        CSource.parse(text, "p.bpf.c").settings()
