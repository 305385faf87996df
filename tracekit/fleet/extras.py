"""What the fleet commands share: the optional extra, and text safe for a terminal.

``tracekit export``, ``tracekit plot`` and the ``prometheus`` sink need packages that
a host which only records traces does not: they are the ``fleet`` extra, imported
only when one of them runs, so ``tracekit run`` works without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tracekit.base.errors import ExtraMissingError

# Module -> distribution name, for the one-line error.
_DISTS = {
    "pyarrow": "pyarrow",
    "matplotlib": "matplotlib",
    "numpy": "numpy",
    "prometheus_client": "prometheus-client",
    "duckdb": "duckdb",
}

INSTALL_HINT = "pip install 'tracekit-ebpf[fleet]' (scripts/setup.sh installs it into .venv)"


def need(module: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` or raise one line saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        dist = _DISTS.get(module.split(".")[0], module.split(".")[0])
        raise ExtraMissingError(f"{what} needs {dist}: {INSTALL_HINT}") from None


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a trace cannot drive the terminal.

    Host names, interface names and comms come from the traced machine; an escape
    sequence in one must reach the user as text, not as a command to their terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
