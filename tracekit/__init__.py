"""tracekit: eBPF tracing for Linux network-stack performance work.

Plugin authors need one import::

    from tracekit import hookimpl
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("tracekit")

__all__ = ["__version__", "hookimpl"]
