"""A live run: planned once, then loaded, attached, drained into sinks and stopped.

What it holds: the run plan and its execution (``run``).

May import: ``tracekit.base``, ``tracekit.plugin`` and ``tracekit.bpf``.
"""
