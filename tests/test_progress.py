"""Progress of replay, export and plot: on a terminal only, quiet otherwise."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

import tracekit.traces.progress as progress_mod
from tracekit.plugin.bus import build_bus
from tracekit.plugin.pipeline import SinkOptions
from tracekit.traces.progress import Progress
from tracekit.traces.replay import replay

SAMPLE = str(Path(__file__).parent.parent / "examples" / "traces" / "rss-cpu.tkt")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_at_most_every_quarter_second() -> None:
    now = [0.0]
    out = Tty()
    p = Progress("replaying x.tkt", 1000, stream=out, clock=lambda: now[0], large=0)
    p.update(100)  # before the first quarter second: nothing
    assert out.getvalue() == ""
    now[0] = 0.3
    p.update(500)
    p.update(600)  # same quarter second: not redrawn
    assert out.getvalue() == "\r\x1b[Ktracekit: replaying x.tkt:  50.0% of 0 MB"
    p.close()
    assert out.getvalue().endswith("\r\x1b[K")  # the line is cleared at the end


@pytest.mark.parametrize(("stream", "large"), [(io.StringIO(), 0), (Tty(), 10_000)])
def test_progress_is_quiet_off_a_terminal_and_for_small_files(
    stream: io.StringIO, large: int
) -> None:
    now = [0.0]
    p = Progress("x", 1000, stream=stream, clock=lambda: now[0], large=large)
    for i in range(10):
        now[0] += 1
        p.update(i * 100)
    p.close()
    assert stream.getvalue() == ""


def test_replay_export_and_plot_show_progress_on_a_terminal_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    from tracekit.fleet.export import export

    monkeypatch.setattr(progress_mod, "LARGE", 0)
    monkeypatch.setattr(progress_mod, "_EVERY", -1.0)  # every record
    bus = build_bus(load_entry_points=False)
    for tty, said in ((Tty(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", tty)
        replay(bus, SAMPLE, ("hist",), SinkOptions())
        export((SAMPLE,), "parquet", str(tmp_path / "o.parquet"), force=True)
        text = tty.getvalue()
        assert ("replaying" in text and "checking" in text and "exporting" in text) is said
        assert ("%" in text) is said
