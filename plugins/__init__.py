"""Built-in sinks. Installed as ``tracekit.plugins``; each module is one plugin."""
