"""Text from traces and from the kernel, made safe to print on a terminal.

A process's ``comm`` is set by any program (``prctl(PR_SET_NAME)``), interface names
and host names are chosen by whoever set up the machine, and a trace file may come
from anyone. Printed as they are, ``\\x1b[2J`` clears the screen and ``\\x1b]0;...\\a``
retitles the window (older terminals even let escape sequences type into the shell).
Every such string goes through ``printable`` before it reaches a terminal: control
and format characters (C0, DEL, C1, bidirectional overrides, line separators) are
shown escaped, Python style, so a person still sees what the bytes were.

JSON output does not use this: ``json.dumps`` escapes by JSON's rules, and a reader
of JSON wants the real string back.
"""

from __future__ import annotations

import re


def _escape_char(c: str) -> str:
    n = ord(c)
    if c == "\\":
        return "\\\\"
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\x1b``, ``\\u202e``).

    Backslashes are doubled, so an escaped ESC cannot be confused with a string that
    contained a literal ``\\x1b``. Ordinary strings (the vast majority) come back
    unchanged after two C-speed scans.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape_char(c) for c in text)


# CSV cells a spreadsheet would run as a formula (OWASP, "CSV Injection"): starting
# with = + - @, a tab or a carriage return. A plain number ("-5") is left alone.
CSV_FORMULA_START = r"^[=+\-@\t\r]"
CSV_PLAIN_NUMBER = r"^-?[0-9]+(\.[0-9]+)?$"
_FORMULA_CHARS = frozenset("=+-@\t\r")
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?", re.ASCII)


def csv_cell(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs: a ``'`` put before a cell that
    starts with ``= + - @``, a tab or a carriage return, as OWASP recommends, unless
    it is a plain number. Applied by ``tracekit export --to csv`` and the example's
    CSV sink unless they are told to write cells raw."""
    if text[:1] not in _FORMULA_CHARS:
        return text
    if text[0] == "-" and _PLAIN_NUMBER.fullmatch(text):
        return text
    return "'" + text


def examples(*lines: str) -> str:
    """A command's ``--help`` epilog: example command lines, kept as written.

    click rewraps help text into paragraphs; a paragraph that starts with ``\\b``
    keeps its lines. Each line is a command, or a ``# comment`` saying what it does.
    """
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
