"""Read struct layouts from the running kernel's BTF (/sys/kernel/btf).

Probes that read a module's private structures (sch_fq's ``fq_sched_data`` is in no
header) take member offsets from the module's BTF, split on vmlinux's, instead of
hard-coding them: a kernel whose layout differs is refused in one line rather than
read as garbage. Only what such checks need is parsed: types, names, struct
members with offsets, and sizes through typedefs and qualifiers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tracekit.base import kernel
from tracekit.base.errors import BtfMissingError, ModuleNotLoadedError, TracekitError

_MAGIC = 0xEB9F

# kind -> bytes of kind-specific data after the 12-byte btf_type, per vlen item or fixed.
(
    INT,
    PTR,
    ARRAY,
    STRUCT,
    UNION,
    ENUM,
    FWD,
    TYPEDEF,
    VOLATILE,
    CONST,
    RESTRICT,
    FUNC,
    FUNC_PROTO,
    VAR,
    DATASEC,
    FLOAT,
    DECL_TAG,
    TYPE_TAG,
    ENUM64,
) = range(1, 20)
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_ITEM = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int

    @property
    def offset(self) -> int:
        return self.bit_offset // 8


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int
    members: tuple[Member, ...] = ()
    array: tuple[int, int] | None = None  # (element type, count)
    enumerators: tuple[tuple[str, int], ...] = ()  # ENUM: (name, value)


class Btf:
    """Types of one BTF blob, optionally split on a base (vmlinux) blob."""

    def __init__(self, data: bytes, base: Btf | None = None) -> None:
        self.types: list[BtfType] = list(base.types) if base else [BtfType(0, "void", 0)]
        self._strings: bytes = b""
        self._base_strings: bytes = base._strings if base else b""
        self._by_name: dict[tuple[int, str], int] = dict(base._by_name) if base else {}
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        if len(data) < 24:
            raise TracekitError("BTF blob too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != _MAGIC:
            raise TracekitError("not a BTF blob")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        self._strings = self._base_strings + strings
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kind_flag = bool(info >> 31)
            name = self._str(name_off)
            members: tuple[Member, ...] = ()
            array = None
            enumerators: tuple[tuple[str, int], ...] = ()
            if kind in (STRUCT, UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    if kind_flag:
                        ms.append(Member(self._str(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24))
                    else:
                        ms.append(Member(self._str(m_name), m_type, m_off, 0))
                members = tuple(ms)
            elif kind == ARRAY:
                elem, _index, nelems = struct.unpack_from("<III", data, pos)
                array = (elem, nelems)
            elif kind == ENUM:
                fmt = "<Ii" if kind_flag else "<II"  # kind_flag: signed values
                enumerators = tuple(
                    (self._str(n), v)
                    for n, v in (struct.unpack_from(fmt, data, pos + 8 * i) for i in range(vlen))
                )
            pos += _FIXED.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen
            self._by_name.setdefault((kind, name), len(self.types))
            self.types.append(BtfType(kind, name, size_or_type, members, array, enumerators))

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def find_struct(self, name: str) -> BtfType:
        tid = self._by_name.get((STRUCT, name))
        if tid is None:
            raise TracekitError(f"struct {name} is not in the kernel's BTF")
        return self.types[tid]

    def size_of(self, type_id: int) -> int:
        t = self.types[type_id]
        for _ in range(32):
            if t.kind in (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
                t = self.types[t.size_or_type]
                continue
            if t.kind == PTR:
                return 8
            if t.kind == ARRAY and t.array:
                return self.size_of(t.array[0]) * t.array[1]
            return t.size_or_type
        raise TracekitError("BTF type chain too deep")

    def _resolve(self, type_id: int) -> BtfType:
        t = self.types[type_id]
        while t.kind in (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG):
            t = self.types[t.size_or_type]
        return t

    def _find_member(self, st: BtfType, member: str, base_bits: int) -> tuple[Member, int] | None:
        for m in st.members:
            if m.name == member:
                return m, base_bits + m.bit_offset
            if not m.name:  # anonymous struct/union (struct_group and friends): look inside
                inner = self._resolve(m.type_id)
                if inner.kind in (STRUCT, UNION):
                    found = self._find_member(inner, member, base_bits + m.bit_offset)
                    if found:
                        return found
        return None

    def member(self, struct_name: str, member: str) -> tuple[int, int]:
        """(byte offset, size) of ``struct_name.member`` (not a bitfield)."""
        found = self._find_member(self.find_struct(struct_name), member, 0)
        if found is None:
            raise TracekitError(f"struct {struct_name} has no member {member}")
        m, bits = found
        if m.bitfield_size:
            raise TracekitError(f"{struct_name}.{member} is a bitfield")
        return bits // 8, self.size_of(m.type_id)

    def enum_values(self, enum_name: str) -> dict[str, int]:
        """The enumerators of ``enum enum_name``; {} if the kernel has no such enum."""
        tid = self._by_name.get((ENUM, enum_name))
        return dict(self.types[tid].enumerators) if tid is not None else {}


def vmlinux_btf() -> Btf:
    """The running kernel's own BTF."""
    vmlinux = kernel.vmlinux_btf_path()
    if vmlinux is None:
        raise BtfMissingError("the kernel has no BTF (/sys/kernel/btf/vmlinux)")
    return Btf(vmlinux.read_bytes())


def module_btf(module: str) -> Btf:
    """The BTF of a loaded module, split on vmlinux's."""
    vmlinux = kernel.vmlinux_btf_path()
    if vmlinux is None:
        raise BtfMissingError("the kernel has no BTF (/sys/kernel/btf/vmlinux)")
    path = kernel.module_btf_path(module)
    if path is None:
        path = kernel.BTF_DIR / module
        if kernel.module_loaded(module):
            raise BtfMissingError(
                f"module {module} is loaded but has no BTF ({path}): this kernel has no "
                "module BTF (CONFIG_DEBUG_INFO_BTF_MODULES, Linux 5.11 and later)"
            )
        raise ModuleNotLoadedError(
            f"module {module} is not loaded (no {path}): configure the qdisc first or "
            f"modprobe {module}"
        )
    base = Btf(vmlinux.read_bytes())
    return Btf(path.read_bytes(), base=base)


def struct_offsets(btf: Btf, struct_name: str, wanted: dict[str, int]) -> dict[str, int]:
    """Offsets of members, checking each has the size the probe reads.

    ``wanted`` maps member name to the size in bytes the BPF code reads.
    """
    out = {}
    for name, size in wanted.items():
        off, real = btf.member(struct_name, name)
        if real != size:
            raise TracekitError(
                f"{struct_name}.{name} is {real} bytes in this kernel, the probe reads {size}: "
                "layout not supported"
            )
        out[name] = off
    return out
