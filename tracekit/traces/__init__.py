"""Trace files: the recorded form of a run, and everything that reads one.

What it holds: the versioned msgpack format (``tracefile``), its record framing
(``framing``), the checks on what a file claims (``checks``), replay through the
same sinks as a live run (``replay``) and ``tracekit info`` (``info``).

May import: ``tracekit.base`` and ``tracekit.plugin``.
"""
