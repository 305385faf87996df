"""tracekit's pytest fixtures (tracekit_feed, tracekit_run_probe, ...) and its vm marker."""

pytest_plugins = ["tracekit.testing"]
