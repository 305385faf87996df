"""Namespace labs that rebuild the seeds situations (``tracekit lab``)."""
