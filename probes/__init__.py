"""Built-in BPF probes. Installed as ``tracekit.probes``; each folder is one plugin."""
