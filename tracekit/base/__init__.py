"""The foundations every other layer stands on.

What it holds: errors with their exit statuses (``errors``), text made safe for a
terminal (``text``), facts about the running kernel read from /proc and /sys
(``kernel``), C declarations read without a compiler (``cdecl``), event schemas
(``schema``), the objects sinks receive (``session``), histograms (``hist``), the
metric model metrics sinks share (``metrics``) and small statistics (``stats``).

May import: the standard library, numpy and msgpack; nothing else of tracekit.
"""
