"""What BCC's clang says while compiling a probe, sorted before the user sees it.

Clang runs inside libbcc and writes its diagnostics straight to file descriptor 2,
past Python's ``sys.stderr``. Newer clang (BCC 0.37 on Debian's 7.2 row) warns about
the kernel's own headers: a dozen lines like ``include/net/ip6_fib.h: warning:
default initialization of an object of type 'const unsigned long'`` on every run of
every probe that includes ``net/tcp.h``, which the probe's author cannot fix and the
user cannot act on. So while BCC compiles, descriptor 2 goes to a file; afterwards
the errors and the warnings about the probe's own files are printed, and the
warnings about anyone else's headers are dropped (``TRACEKIT_CLANG_WARNINGS=all``
shows them: see the loader). The text is our compiler's about source on this
machine, printed as clang wrote it (escaping would double the backslashes of its
source excerpts).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

# "FILE:LINE:COL: warning: TEXT" (clang's diagnostic line) and what starts a block.
_DIAG = re.compile(r"^(?P<file>[^\s:][^:]*):\d+:\d+: (?P<kind>warning|error|fatal error): ")
_INCLUDED = "In file included from "
_SUMMARY = re.compile(r"^\d+ (warning|error)s? generated\.$")
# A message with no location ("error: unknown argument"): a block of its own, kept.
_BARE = re.compile(r"^(fatal error|error|warning): ")


def sort_messages(text: str, own: Callable[[str], bool]) -> tuple[list[str], int]:
    """(lines to show, warnings dropped) of clang's output ``text``.

    A diagnostic is its ``In file included from`` chain, its line and what follows
    (the source excerpt, its notes) up to the next one. Errors are kept whatever
    their file; a warning only when ``own(file)`` (the probe's source, tracekit's
    headers). Clang's "N warnings generated." is dropped: it counted both kinds.
    Lines that are no diagnostic (anything else that wrote to descriptor 2) stay.
    """
    blocks: list[list[str]] = [[]]
    in_chain = False
    for line in text.splitlines():
        if _SUMMARY.match(line):
            in_chain = False
            continue
        starts_chain = line.startswith(_INCLUDED)
        if not in_chain and (starts_chain or _DIAG.match(line) or _BARE.match(line)):
            blocks.append([])
        in_chain = starts_chain
        blocks[-1].append(line)
    shown: list[str] = list(blocks[0])
    dropped = 0
    for block in blocks[1:]:
        head = next((m for m in map(_DIAG.match, block) if m), None)
        if head is not None and head["kind"] == "warning" and not own(head["file"]):
            dropped += 1
        else:
            shown += block
    return shown, dropped


@contextlib.contextmanager
def sorted_compiler_messages(own: Callable[[str], bool]) -> Iterator[None]:
    """Catch what is written to descriptor 2 inside the block, then print it sorted
    (on failure too: the errors are what the user needs then)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to catch: nothing to sort
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            shown, _ = sort_messages(caught.read().decode("utf-8", "replace"), own)
            if shown:
                sys.stderr.write("".join(line + "\n" for line in shown))
