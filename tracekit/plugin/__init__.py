"""The plugin machinery behind the author's contract (``tracekit/hookspecs.py``).

What it holds: what plugins register (``registry``: ProbeSpec, SinkSpec, ...), what a
sink may implement (``contract``), the pluggy bus with its built-in and third-party
plugins (``bus``, ``entry_points``) and a session's path through the sinks
(``pipeline``).

May import: ``tracekit.base`` and ``tracekit.hookspecs``.
"""
