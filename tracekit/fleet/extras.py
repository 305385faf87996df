"""What the fleet commands share: the optional extra.

``tracekit export`` and ``tracekit plot`` need packages that a host which only
records traces does not: they are the ``fleet`` extra, imported only when one of
them runs, so ``tracekit run`` works without them. (The ``prometheus`` sink writes
its format itself and needs none of them.)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tracekit.base.errors import ExtraMissingError
from tracekit.base.text import printable as _printable

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
    """Deprecated: use ``tracekit.base.text.printable`` (``from tracekit import printable``).

    This one left backslashes as they were, so an escaped ESC (``\\x1b``) could not be
    told from a name holding those four characters; it now forwards to the one that
    doubles them.
    """
    from tracekit._compat import warn_deprecated

    warn_deprecated("tracekit.fleet.extras.printable", "tracekit.base.text.printable")
    return _printable(text)
