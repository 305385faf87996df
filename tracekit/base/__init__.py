"""The foundations every other layer stands on.

What it holds: errors with their exit statuses (``errors``), text made safe for a
terminal (``text``), facts about the running kernel read from /proc and /sys
(``kernel``), C declarations read without a compiler (``cdecl``), event schemas
(``schema``), the objects sinks receive (``session``), histograms (``hist``), the
metric model metrics sinks share (``metrics``), small statistics (``stats``), and
the paths root may trust and the files it writes (``trust``).

May import: the standard library, numpy and msgpack; nothing else of tracekit.
"""
