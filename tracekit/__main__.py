"""``python -m tracekit``: the command line, without the current folder on sys.path.

``python -m`` puts the current folder first on ``sys.path``, where anyone who can
write to it (a shared /tmp, a checkout of someone else's) could plant a
``*.dist-info`` with a ``tracekit`` entry point, or a module named like one tracekit
imports, and have it run as root. It is dropped before anything else is imported, as
``python -P`` (PYTHONSAFEPATH) would; the installed ``tracekit`` script never has it.
"""

import os
import sys


def _drop_current_folder() -> None:
    if sys.flags.safe_path or not sys.path:
        return
    first = sys.path[0]
    try:
        same = first in ("", ".") or os.path.samefile(first, os.getcwd())
    except OSError:
        same = False
    if same:
        del sys.path[0]


_drop_current_folder()

from tracekit.cli.main import main  # noqa: E402 - after the path is made safe

main()
