"""Read a probe's C declarations without a compiler: the one declaration of its layout.

A probe declares its event (``struct tk_event``), its in-kernel aggregation key
(``struct tk_agg_key``) and the slots of its counter maps (``enum <map>``) in its
``.bpf.c``; the Python side only says how fields are shown. Replays, host tests and
``tracekit new`` run where no compiler (or no kernel header) is, so the layout is
computed here from the source text, for a deliberately small subset of C:

- members of fixed-width integer types (``u8``..``u64``, ``s8``..``s64``, their
  ``__u8``/``__s8`` spellings, ``__be16``, ``__be32``) and ``char`` arrays, arrays of
  them with any number of dimensions (sizes are numbers or ``#define``\\ s of the file);
- natural alignment, as clang lays out a struct for the BPF target: each member at
  a multiple of its size, the struct a multiple of its widest member.

Anything else (pointers, bitfields, nested structs, attributes, ``#if`` inside the
struct) is refused with the file and line, rather than guessed. The loaders still
check this layout against the compiler's (BCC's ``tk_event_layout`` map, the CO-RE
build's manifest) and refuse a mismatch, and a host test compares it with clang's
BTF for every built-in probe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# C type -> (schema type, size). Network-order types keep their bytes as the kernel
# holds them (a __be32 address is what display="ipv4" reads).
_INT_TYPES: dict[str, tuple[str, int]] = {}
for _bits in (8, 16, 32, 64):
    for _sign, _prefix in (("u", "u"), ("s", "s")):
        _t = (f"{_prefix}{_bits}", _bits // 8)
        _INT_TYPES[f"{_sign}{_bits}"] = _t
        _INT_TYPES[f"__{_sign}{_bits}"] = _t
_INT_TYPES["__be16"] = ("u16", 2)
_INT_TYPES["__be32"] = ("u32", 4)
SUPPORTED = ", ".join([*_INT_TYPES, "char[N]"])

_TOKENS = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|/\*.*?\*/|//[^\n]*', re.DOTALL)
_DEFINE = re.compile(
    r"^[ \t]*#[ \t]*define[ \t]+(\w+)[ \t]+(0[xX][0-9a-fA-F]+|\d+)[uUlL]*[ \t]*$", re.M
)
_MEMBER = re.compile(r"^(\w+)\s+(.+)$", re.DOTALL)
_DECL = re.compile(r"^(\w+)((?:\s*\[\s*\w+\s*\])*)$")
_DIM = re.compile(r"\[\s*(\w+)\s*\]")
_SETTING = re.compile(r"\bTK_SETTING\s*\(\s*\w+\s*,\s*(\w+)\s*,\s*(\w+)\s*,")
_ENUMERATOR = re.compile(r"^(\w+)(?:\s*=\s*(\S.*))?$", re.DOTALL)


class CDeclError(ValueError):
    """A declaration outside the supported subset, or missing; says file and line."""


def is_padding(name: str) -> bool:
    """Members that only fill space: ``pad``, ``pad2``, ``_anything``, ``__pad_3``.

    They stay in the C (explicit padding keeps every byte of an event initialised,
    which the verifier wants before the event is copied out) but never become fields.
    """
    return name.startswith("_") or re.fullmatch(r"pad\d*", name) is not None


@dataclass(frozen=True)
class CMember:
    """One member of a C struct as declared: ``type`` is the schema type of one
    element (``u32``, ``str16``), ``dims`` the array dimensions outside it."""

    name: str
    ctype: str
    type: str
    offset: int
    size: int
    dims: tuple[int, ...]
    line: int

    @property
    def padding(self) -> bool:
        return is_padding(self.name)

    def elements(self) -> list[tuple[str, str, int]]:
        """(field name, schema type, offset) of each element: a scalar or string is
        one, an array ``x[2]`` is ``x_0`` and ``x_1``."""
        if not self.dims:
            return [(self.name, self.type, self.offset)]
        out = []
        n = 1
        for d in self.dims:
            n *= d
        step = self.size // n
        for i in range(n):
            idx, rest = [], i
            for d in reversed(self.dims):
                idx.append(rest % d)
                rest //= d
            suffix = "_".join(str(j) for j in reversed(idx))
            out.append((f"{self.name}_{suffix}", self.type, self.offset + i * step))
        return out


@dataclass(frozen=True)
class CStruct:
    """A struct as clang lays it out for BPF: members, their offsets, total size."""

    name: str
    members: tuple[CMember, ...]
    size: int
    path: str
    line: int

    def fields(self) -> list[tuple[str, str, int]]:
        """(name, schema type, offset) of every element that is not padding."""
        return [e for m in self.members if not m.padding for e in m.elements()]


@dataclass(frozen=True)
class CSource:
    """The text of a probe's source with comments blanked out (lines kept)."""

    path: str
    text: str

    @classmethod
    def parse(cls, text: str, path: str = "probe.bpf.c") -> CSource:
        def blank(m: re.Match[str]) -> str:
            s = m.group(0)
            if s.startswith(("/*", "//")):
                return "\n" * s.count("\n") or " "
            return s

        return cls(path, _TOKENS.sub(blank, text))

    def _line(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def _error(self, pos: int, what: str) -> CDeclError:
        return CDeclError(f"{self.path}:{self._line(pos)}: {what}")

    def _defines(self) -> dict[str, int]:
        return {m.group(1): int(m.group(2), 0) for m in _DEFINE.finditer(self.text)}

    def _block(self, kind: str, name: str) -> tuple[int, int, int] | None:
        """(start of the keyword, start and end of the body) of the one ``kind name {``."""
        found = list(re.finditer(rf"\b{kind}\s+{name}\s*\{{", self.text))
        if not found:
            return None
        if len(found) > 1:
            lines = ", ".join(str(self._line(m.start())) for m in found)
            raise self._error(
                found[1].start(),
                f"{kind} {name} is declared {len(found)} times (lines {lines}); declare it "
                "once, for every build (no #ifdef around different versions)",
            )
        m = found[0]
        end = self.text.find("}", m.end())
        if end < 0:
            raise self._error(m.start(), f"{kind} {name}: no closing brace")
        inner = self.text.find("{", m.end(), end)
        if inner >= 0:
            raise self._error(inner, f"{kind} {name}: nested braces are not supported")
        tail = re.match(r"\s*;", self.text[end + 1 :])
        if tail is None:
            raise self._error(
                end, f"{kind} {name}: expected ';' after '}}' (attributes are not supported)"
            )
        return m.start(), m.end(), end

    def declaration(self, name: str) -> str:
        """The text of ``struct name { ... };`` as written (comments blanked), for a
        compiler to lay out beside this module (tests/test_cdecl.py)."""
        block = self._block("struct", name)
        if block is None:
            raise CDeclError(f"{self.path}: no 'struct {name} {{ ... }};' declared")
        return self.text[block[0] : block[2] + 1] + ";"

    def has_struct(self, name: str) -> bool:
        return self._block("struct", name) is not None

    def struct(self, name: str) -> CStruct:
        """``struct name`` laid out; CDeclError naming the line for anything unsupported."""
        block = self._block("struct", name)
        if block is None:
            raise CDeclError(f"{self.path}: no 'struct {name} {{ ... }};' declared")
        start, body, end = block
        defines = self._defines()
        members: list[CMember] = []
        offset, align = 0, 1
        pos = body
        for stmt in self.text[body:end].split(";"):
            at = pos + len(stmt) - len(stmt.lstrip())
            pos += len(stmt) + 1
            text = " ".join(stmt.split())
            if not text:
                continue
            if "#" in stmt:
                raise self._error(
                    at + stmt.lstrip().find("#"),
                    f"struct {name}: preprocessor lines inside the struct are not supported "
                    "(its layout must not depend on build flags)",
                )
            for m in self._members(name, text, at, defines):
                # Natural alignment: an integer (or array of them) at a multiple of
                # its element's size; text at any byte.
                a = 1 if m.ctype == "char" else _INT_TYPES[m.ctype][1]
                offset = (offset + a - 1) // a * a
                members.append(CMember(m.name, m.ctype, m.type, offset, m.size, m.dims, m.line))
                offset += m.size
                align = max(align, a)
        if not members:
            raise self._error(start, f"struct {name} has no members")
        seen: dict[str, int] = {}
        for m in members:
            if m.name in seen:
                raise CDeclError(f"{self.path}:{m.line}: struct {name}: member {m.name} twice")
            seen[m.name] = m.line
        size = (offset + align - 1) // align * align
        return CStruct(name, tuple(members), size, self.path, self._line(start))

    def _members(self, struct: str, text: str, at: int, defines: dict[str, int]) -> list[CMember]:
        line = self._line(at)
        where = f"{self.path}:{line}: struct {struct}"
        m = _MEMBER.match(text)
        if m is None:
            raise CDeclError(f"{where}: cannot read member {text!r}")
        ctype, rest = m.group(1), m.group(2)
        if ctype not in _INT_TYPES and ctype != "char":
            if ctype in ("struct", "union", "enum", "unsigned", "signed", "const", "volatile"):
                ctype = " ".join(text.split()[:2]).rstrip("*")
            raise CDeclError(
                f"{where}: member type {ctype!r} is not one tracekit lays out without a "
                f"compiler; use {SUPPORTED}"
            )
        out = []
        for decl in rest.split(","):
            decl = decl.strip()
            if "*" in decl:
                raise CDeclError(f"{where}: {decl!r}: pointers are not supported (store a u64)")
            if ":" in decl:
                raise CDeclError(f"{where}: {decl!r}: bitfields are not supported")
            d = _DECL.match(decl)
            if d is None:
                raise CDeclError(f"{where}: cannot read member {decl!r}")
            dims = []
            for dim in _DIM.findall(d.group(2)):
                n = defines.get(dim)
                if n is None:
                    try:
                        n = int(dim, 0)
                    except ValueError:
                        raise CDeclError(
                            f"{where}: array size {dim!r} is neither a number nor a "
                            "'#define NAME NUMBER' of this file"
                        ) from None
                if n <= 0:
                    raise CDeclError(f"{where}: array size {dim} must be positive")
                dims.append(n)
            if ctype == "char":
                if not dims:
                    raise CDeclError(f"{where}: {decl!r}: a char member must be an array (text)")
                stype, size = f"str{dims[-1]}", _product(dims)
                dims = dims[:-1]
            else:
                stype, elem = _INT_TYPES[ctype]
                size = elem * _product(dims)
            out.append(CMember(d.group(1), ctype, stype, 0, size, tuple(dims), line))
        return out

    def enum(self, name: str) -> list[tuple[str, int]] | None:
        """(enumerator, value) of ``enum name``, values counted as C counts them; None
        when the source has no such enum."""
        block = self._block("enum", name)
        if block is None:
            return None
        _, body, end = block
        out: list[tuple[str, int]] = []
        value = 0
        pos = body
        for item in self.text[body:end].split(","):
            at = pos + len(item) - len(item.lstrip())
            pos += len(item) + 1
            text = " ".join(item.split())
            if not text:
                continue
            m = _ENUMERATOR.match(text)
            if m is None:
                raise self._error(at, f"enum {name}: cannot read enumerator {text!r}")
            if m.group(2) is not None:
                try:
                    value = int(m.group(2), 0)
                except ValueError:
                    raise self._error(
                        at, f"enum {name}: {m.group(1)}: only number values are supported"
                    ) from None
            out.append((m.group(1), value))
            value += 1
        return out

    def settings(self) -> dict[str, str]:
        """The source's ``TK_SETTING(type, name, MACRO, default)`` declarations, as
        {MACRO: name}: a value computed at load by the probe's ``prepare`` reaches BCC
        as ``-DMACRO=value`` and a CO-RE object as the read-only variable ``name``."""
        out: dict[str, str] = {}
        for m in _SETTING.finditer(self.text):
            line_start = self.text.rfind("\n", 0, m.start()) + 1
            if self.text[line_start : m.start()].lstrip().startswith("#"):
                continue  # the macro's own #define (probes/tk_compat.h)
            name, macro = m.group(1), m.group(2)
            if macro in out and out[macro] != name:
                raise self._error(
                    m.start(), f"TK_SETTING macro {macro} names both {out[macro]} and {name}"
                )
            out[macro] = name
        return out

    def counter_labels(self, map_name: str) -> tuple[str, ...] | None:
        """The slot names of counter map ``map_name`` from ``enum map_name``.

        Each enumerator is ``<MAP>_<LABEL>`` (the map's name in capitals); the label
        is ``<label>`` in lower case, and slot i is the enumerator of value i. A last
        ``<MAP>_NSLOTS`` is the count, for the map's declaration. None: no such enum.
        """
        items = self.enum(map_name)
        if items is None:
            return None
        block = self._block("enum", map_name)
        assert block is not None
        where = f"{self.path}:{self._line(block[0])}: enum {map_name}"
        prefix = map_name.upper() + "_"
        labels = []
        for i, (ident, value) in enumerate(items):
            if not ident.startswith(prefix) or len(ident) == len(prefix):
                raise CDeclError(f"{where}: {ident} must be named {prefix}<LABEL>")
            if ident == prefix + "NSLOTS":
                if i != len(items) - 1:
                    raise CDeclError(f"{where}: {ident} must be the last enumerator")
                if value != i:
                    raise CDeclError(f"{where}: {ident} is {value}, not the {i} slots before it")
                break
            if value != i:
                raise CDeclError(f"{where}: {ident} is {value}: slots are numbered 0, 1, 2...")
            labels.append(ident[len(prefix) :].lower())
        if not labels:
            raise CDeclError(f"{where}: no slots")
        self._check_map_size(map_name, len(labels), where)
        return tuple(labels)

    def _check_map_size(self, map_name: str, n: int, where: str) -> None:
        m = re.search(
            rf"\bBPF_PERCPU_ARRAY\s*\(\s*{map_name}\s*,\s*\w+\s*,\s*(\w+)\s*\)", self.text
        )
        if m is None:
            return
        size = m.group(1)
        if size == map_name.upper() + "_NSLOTS":
            return
        try:
            slots = int(size, 0)
        except ValueError:
            slots = self._defines().get(size, -1)
        if slots != n:
            raise CDeclError(
                f"{self.path}:{self._line(m.start())}: {map_name} has {size} slots but "
                f"{where.split(': ', 1)[1]} names {n}; size it {map_name.upper()}_NSLOTS"
            )


def _product(dims: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
