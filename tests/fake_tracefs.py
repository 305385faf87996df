"""A tracefs of a kernel with kprobes, made in a temporary folder, for the host tests
of what preflight decides (this machine's own kernel has no kprobes)."""

from __future__ import annotations

from pathlib import Path

import pytest


def fake_kprobe_tracefs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, functions: str, blacklist: str = ""
) -> Path:
    """tracekit.base.kernel sees a tracefs with kprobe_events, ``functions`` (the text of
    available_filter_functions) and ``blacklist`` (kprobes/blacklist); returns its root."""
    import tracekit.base.kernel as kernel

    root = tmp_path / "tracing"
    (root / "events").mkdir(parents=True)
    (root / "kprobe_events").write_text("")
    (root / "available_filter_functions").write_text(functions)
    monkeypatch.setattr(kernel, "tracefs", lambda: root)
    monkeypatch.setattr(kernel, "KPROBE_PMU", tmp_path / "no-pmu")
    monkeypatch.setattr(kernel, "KPROBE_BLACKLIST", tmp_path / "blacklist")
    (tmp_path / "blacklist").write_text(blacklist)
    return root
