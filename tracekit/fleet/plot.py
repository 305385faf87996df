"""``tracekit plot``: the picture of a trace a person would rather look at.

A probe declares its plot (``ProbeSpec.plot``); a plugin can add plots for any probe
with the ``tracekit_register_plots`` hook. A plot is a function ``draw(trace)``
that reads the trace through ``Trace`` (batches as numpy columns, never one Python
call per event) and returns a matplotlib ``Figure`` (``new_figure`` makes one).

A plot usually reads the trace twice: ``Trace.span()`` first (the time range, to
choose the bins), then the columns it draws. Both passes stream a record's batch at
a time, as numpy columns of its packed records (no Python object per event but the
keys a plot asks for), so time is linear in the events and memory stays flat in the
trace's size: only the binned counts are kept, for at most ``MAX_KEYS`` keys per
``Binned`` (and, for txq-flip, a bounded number of the flips of the sockets drawn).
"""

from __future__ import annotations

import heapq
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any

import click

from tracekit.base.errors import UsageError
from tracekit.base.schema import _NUMPY_CODES, format_value
from tracekit.base.session import EventBatch, Session, Summary
from tracekit.base.text import examples, printable
from tracekit.base.trust import DEFAULT_MODE, OutputFile, check_output
from tracekit.fleet.extras import mode_option, need
from tracekit.traces.progress import Progress
from tracekit.traces.tracefile import BATCH, TraceReader

FORMATS = (".png", ".svg", ".pdf")

# Bin widths a reader takes in at a glance, in seconds.
_NICE_WIDTHS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300)
MAX_BINS = 150
# Keys one ``Binned`` keeps a row of bins for: 150 bins x 4096 keys of 8 bytes are
# 4.9 MB. A plot draws its top few; a trace of two million distinct flows made a
# grid of 2.4 GB.
MAX_KEYS = 4096


@dataclass
class Span:
    """The time range of a trace's events: ``t0`` (ns) and its length (s)."""

    t0: int
    seconds: float
    events: int

    def bins(self) -> tuple[float, int]:
        """(width in seconds, number of bins): at most ``MAX_BINS`` bins that cover
        the span exactly, the first event at the first bin's start and the last at
        the last bin's end.

        The width is about a nice one (``_NICE_WIDTHS``), stretched so that no bin
        is partial: a last bin only partly covered by the trace would draw a rate
        that falls off at the end which the traffic never had.
        """
        nice = next(
            (w for w in _NICE_WIDTHS if self.seconds / w <= MAX_BINS), float(_NICE_WIDTHS[-1])
        )
        n = max(1, round(self.seconds / nice))
        return (self.seconds / n if self.seconds > 0 else nice), n


class Trace:
    """A trace file read as numpy columns, batch by batch, as often as a plot needs."""

    def __init__(self, path: str) -> None:
        self.np = need("numpy", "tracekit plot")
        self.path = path
        reader = TraceReader(path)
        reader.close()
        self.session: Session = reader.session
        self.footer: Summary | None = None
        self._span: Span | None = None

    @property
    def schema(self) -> Any:
        return self.session.schema

    def batches(self) -> Iterator[EventBatch]:
        """Each batch record as an ``EventBatch`` (valid until the next is read): its
        ``rows`` decode on demand, ``column`` reads the packed records with numpy."""
        reader = TraceReader(self.path)
        reader.progress = Progress(f"plotting {self.path}", reader.size)
        for rec in reader.records():
            if rec.kind == BATCH and len(rec.payload):
                yield rec.payload
        self.footer = reader.footer

    def column(self, rows: EventBatch | list[tuple[Any, ...]], name: str) -> Any:
        """One field of a batch as a numpy array (strings as an object array)."""
        np = self.np
        f = self.schema.field(name)
        i = self.schema.index(name)
        if isinstance(rows, EventBatch) and rows.packed:
            if f.is_str:
                return np.array(rows.column_values(i), dtype=object)
            return rows.field_array(i)
        values = map(itemgetter(i), rows)
        if f.is_str:
            return np.array(list(values), dtype=object)
        return np.fromiter(values, dtype=_NUMPY_CODES[f.type], count=len(rows))

    def columns(self, *names: str) -> Iterator[dict[str, Any]]:
        """Per batch, the named fields as arrays, plus ``t``: seconds since ``span().t0``."""
        t0 = self.span().t0
        ts = self._ts_name()
        for rows in self.batches():
            cols = {n: self.column(rows, n) for n in names}
            cols["t"] = (self.column(rows, ts).astype("int64") - t0) / 1e9
            yield cols

    def _ts_name(self) -> str:
        for f in self.schema.fields:
            if f.display == "ts":
                return str(f.name)
        raise UsageError(f"{printable(self.path)}: the events have no time field to plot over")

    def span(self) -> Span:
        if self._span is None:
            lo, hi, n = None, None, 0
            ts = self._ts_name()
            for rows in self.batches():
                col = self.column(rows, ts)
                lo = int(col.min()) if lo is None else min(lo, int(col.min()))
                hi = int(col.max()) if hi is None else max(hi, int(col.max()))
                n += len(rows)
            if lo is None or hi is None:
                raise UsageError(f"{printable(self.path)}: no events to plot")
            self._span = Span(lo, (hi - lo) / 1e9, n)
        return self._span

    def label(self, name: str, value: Any) -> str:
        """A field's value as a person reads it, safe to draw."""
        return printable(format_value(self.schema.field(name), value, self.session.symbols))

    def title(self, what: str) -> str:
        s = self.session
        sampled = f", sampled 1 in {s.sample_every} (counts scaled)" if s.sample_every > 1 else ""
        return printable(f"{s.probe} on {s.hostname} (kernel {s.kernel}){sampled}: {what}")


class Binned:
    """Sums per (time bin, key), keys numbered as they appear: the grid grows by key.

    At most ``MAX_KEYS`` keys keep their own bins. When more would, only the half
    with the largest totals (so far for the keys kept, in the batch for new ones)
    keep theirs, and the others are folded into ``other`` (counted in ``folded``),
    as top-k summaries such as SpaceSaving do: a key that holds more than 1/2048 of
    the events counted so far is always among the half kept, so the few keys a plot
    draws are exact unless they came late and small. Memory: ``MAX_KEYS`` x bins,
    whatever the trace holds.
    """

    def __init__(self, trace: Trace) -> None:
        self.np = trace.np
        self.width, self.nbins = trace.span().bins()
        self.keys: dict[Any, int] = {}
        self.grid = self.np.zeros((self.nbins, 8))
        self.other = self.np.zeros(self.nbins)  # sums of the keys folded together
        self.folded = 0  # keys folded into ``other``

    def add(self, t: Any, keys: list[Any], weights: Any = None) -> None:
        np = self.np
        if not len(keys):
            return
        w = np.ones(len(keys)) if weights is None else np.asarray(weights, dtype=float)
        ids = self.keys
        new = [k for k in dict.fromkeys(keys) if k not in ids]  # once per distinct key
        if len(ids) + len(new) > MAX_KEYS:
            self._make_room(keys, new, w)
            ids = self.keys
        else:
            for k in new:
                ids[k] = len(ids)
        if len(ids) > self.grid.shape[1]:
            grown = np.zeros((self.nbins, min(MAX_KEYS, max(len(ids), 2 * self.grid.shape[1]))))
            grown[:, : self.grid.shape[1]] = self.grid
            self.grid = grown
        col = np.fromiter(map(ids.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        row = np.clip((t / self.width).astype(np.int64), 0, self.nbins - 1)
        kept = col >= 0
        width = self.grid.shape[1]
        flat = np.bincount(
            row[kept] * width + col[kept], weights=w[kept], minlength=self.nbins * width
        )
        self.grid += flat.reshape(self.nbins, width)
        if not kept.all():
            self.other += np.bincount(row[~kept], weights=w[~kept], minlength=self.nbins)

    def _make_room(self, keys: list[Any], new: list[Any], w: Any) -> None:
        """Keep the ``MAX_KEYS // 2`` keys with the largest totals, old (so far) and
        new (in this batch) alike; fold the other old ones into ``other``. New keys
        not kept are counted there by ``add``."""
        np = self.np
        n = len(self.keys)
        where = {k: i for i, k in enumerate(new)}
        li = np.fromiter(map(where.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
        m = li >= 0
        totals = np.concatenate(
            [self.grid[:, :n].sum(axis=0), np.bincount(li[m], weights=w[m], minlength=len(new))]
        )
        keep = np.sort(np.argsort(-totals, kind="stable")[: MAX_KEYS // 2])  # by arrival
        old, admit = keep[keep < n], (keep[keep >= n] - n).tolist()
        gone = np.setdiff1d(np.arange(n), old)
        self.other += self.grid[:, gone].sum(axis=1)
        self.folded += len(gone) + len(new) - len(admit)
        by_col = list(self.keys)
        self.keys = {by_col[c]: i for i, c in enumerate(old.tolist())}
        for i in admit:
            self.keys[new[i]] = len(self.keys)
        grid = np.zeros_like(self.grid)
        grid[:, : len(old)] = self.grid[:, old]
        self.grid = grid

    def series(self) -> dict[Any, Any]:
        """Key -> per-bin sums (the keys kept: see ``other`` for the folded ones)."""
        return {k: self.grid[:, i] for k, i in self.keys.items()}

    def times(self) -> Any:
        """The start of every bin, in seconds."""
        return self.np.arange(self.nbins) * self.width

    def edges(self) -> Any:
        """The ``nbins + 1`` bin edges, in seconds (for ``Axes.stairs``: every bin
        drawn its whole width, the last one too)."""
        return self.np.arange(self.nbins + 1) * self.width

    def top(self, n: int) -> list[Any]:
        """The ``n`` keys with the largest totals."""
        totals = self.grid.sum(axis=0)
        return sorted(self.keys, key=lambda k: -totals[self.keys[k]])[:n]


class TopKeys:
    """Counts of sub-keys per key (``counts[key][sub]``), for at most ``MAX_KEYS``
    keys, folded as ``Binned`` folds: when more would be kept, only the half with the
    largest totals (so far, or in the batch for new keys) stay. ``seen`` counts the
    distinct keys met (a key folded and met again counts again). Counting is
    ``Counter`` over the batch's (key, sub) pairs, in C; Python then runs once per
    distinct pair of a batch."""

    def __init__(self) -> None:
        self.counts: dict[Any, Counter[Any]] = {}
        self.totals: dict[Any, int] = {}
        self.seen = 0

    def add(self, keys: list[Any], subs: list[Any]) -> None:
        pairs = Counter(zip(keys, subs, strict=True))
        new: Counter[Any] = Counter()
        for (k, _), n in pairs.items():
            if k not in self.counts:
                new[k] += n
        self.seen += len(new)
        if len(self.counts) + len(new) > MAX_KEYS:
            ranked = heapq.nlargest(
                MAX_KEYS // 2,
                [*self.totals.items(), *new.items()],
                key=itemgetter(1),
            )
            keep = {k for k, _ in ranked}
            for k in [k for k in self.counts if k not in keep]:
                del self.counts[k], self.totals[k]
            new = Counter({k: n for k, n in new.items() if k in keep})
        for k in new:
            self.counts[k], self.totals[k] = Counter(), 0
        counts, totals = self.counts, self.totals
        for (k, sub), n in pairs.items():
            got = counts.get(k)
            if got is not None:
                got[sub] += n
                totals[k] += n


def keys_of(trace: Trace, cols: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    """Row keys (tuples of field values) of a batch's columns, built with zip in C."""
    return list(zip(*(cols[n].tolist() for n in names), strict=True))


def matplotlib_defaults() -> Any:
    """matplotlib with its own defaults, whatever the current folder or user holds.

    matplotlib reads a ``matplotlibrc`` from the current folder first when it is
    imported, where ``text.usetex`` would run ``latex`` on trace strings as root:
    it is imported from ``/`` (and back), ``MATPLOTLIBRC`` and ``MPLCONFIGDIR`` are
    dropped under sudo or set-uid, and the rc parameters are reset to matplotlib's
    defaults (``rcdefaults``) with TeX and mathtext off. Trace strings (interface
    names, hostnames, comms) may hold ``$``: drawn as text, never parsed as math.
    """
    import sys

    if "matplotlib" not in sys.modules:
        from tracekit.base.trust import elevated

        if elevated():
            for name in ("MATPLOTLIBRC", "MPLCONFIGDIR"):
                os.environ.pop(name, None)
        try:
            here: int | None = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            here = None
        try:
            os.chdir("/")
            mpl = need("matplotlib", "tracekit plot")
        finally:
            if here is not None:
                os.fchdir(here)
                os.close(here)
    mpl = need("matplotlib", "tracekit plot")
    mpl.rcdefaults()
    mpl.rcParams["text.usetex"] = False
    mpl.rcParams["text.parse_math"] = False
    return mpl


def new_figure(rows: int, height: float = 2.4) -> Any:
    """A Figure with ``rows`` stacked axes sharing the time axis; no pyplot, no display."""
    matplotlib_defaults()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 1.2 + height * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("seconds since the first event")
    return fig


def render(
    path: str,
    out: str,
    plot: str | None = None,
    bus: Any = None,
    *,
    force: bool = True,
    mode: int = DEFAULT_MODE,
) -> str:
    """Draw ``plot`` (default: the probe's own) of trace ``path`` into ``out``; its name.

    ``out`` is written beside itself and renamed into place (tracekit.base.trust):
    never through a link at its name, never over a device; ``force``: an existing
    regular file may be replaced.
    """
    ext = os.path.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise UsageError(f"-o {printable(out)}: the name must end in {', '.join(FORMATS)}")
    check_output(out, force)
    matplotlib_defaults()
    need("numpy", "tracekit plot")
    from tracekit.plugin.bus import build_bus

    bus = bus or build_bus()
    trace = Trace(path)
    probe = trace.session.probe
    choices: dict[str, Callable[[Any], Any]] = {}
    if probe in bus.probes and bus.probes.get(probe).plot is not None:
        choices[probe] = bus.probes.get(probe).plot
    for spec in bus.plots:
        if spec.probe == probe:
            choices[spec.name] = spec.draw
    if not choices:
        raise UsageError(
            f"no plot for probe {printable(probe)}: a plugin adds one with tracekit_register_plots"
        )
    name = plot or (probe if probe in choices else sorted(choices)[0])
    if name not in choices:
        raise UsageError(
            f"no plot {printable(name)} for {printable(probe)}; plots: {', '.join(sorted(choices))}"
        )
    fig = choices[name](trace)
    try:
        with OutputFile(out, mode=mode, replace=force) as f:
            fig.savefig(f, format=ext[1:], dpi=110)
    except OSError as exc:
        raise UsageError(f"cannot write {printable(out)}: {exc.strerror}") from None
    return name


@click.command(
    "plot",
    epilog=examples(
        "tracekit plot examples/traces/rss-cpu.tkt -o rss.png",
        "tracekit plot examples/traces/fq-throttle.tkt -o fq.svg",
    ),
)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="the picture: OUT.png, OUT.svg or OUT.pdf",
)
@click.option(
    "--plot",
    "plot",
    default=None,
    metavar="NAME",
    help="which plot (default: the probe's own; plugins may add others)",
)
@click.option("--force", is_flag=True, help="overwrite OUT")
@mode_option
def plot_cmd(file: str, out: str, plot: str | None, force: bool, mode: int) -> None:
    """Draw the picture of trace FILE that its probe declares, into OUT.png or OUT.svg."""
    name = render(file, out, plot, force=force, mode=mode)
    click.echo(f"tracekit: wrote {printable(out)} ({printable(name)} plot)", err=True)
