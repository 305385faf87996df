"""The BCC loader: compile a probe, attach it, drain its buffer in batches, detach.

One ``BccProbe`` (a ``tracekit.bpf.probe_base.LoadedProbe``) is one compiled
program. Compiling costs seconds natively and minutes under emulation, so a compiled
probe can be attached, drained and detached several times (the VM tests share one
per boot).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from tracekit.base import kernel
from tracekit.base.errors import BccMissingError, CompileError, ResourceError, TracekitError
from tracekit.base.session import EventBatch
from tracekit.bpf.clang_messages import sorted_compiler_messages
from tracekit.bpf.perfbuf import PerfBuffer
from tracekit.bpf.probe_base import KernelProbe, import_in_background
from tracekit.bpf.records import record_decoder
from tracekit.bpf.ringbuf import RingBuffer
from tracekit.plugin.registry import AttachPoint, ProbeSpec, expand_points

POLL_MS = 100
# Wake user space after this many events per CPU (perf buffer); the poll timeout
# collects the rest. Per-event wakeups cost ~9 us an event here, every 64 < 1 us.
WAKEUP_EVENTS = 64


def import_bcc() -> Any:
    try:
        import bcc
    except ImportError:
        raise BccMissingError(
            "BCC is not importable: install python3-bpfcc and use a venv made with "
            "--system-site-packages (tracekit run needs it; replay and list do not)"
        ) from None
    return bcc


@contextlib.contextmanager
def bcc_guard(what: str) -> Iterator[None]:
    """BCC's Python side raises bare Exception, and on a type it cannot map (its
    struct readers meet ``__be16``, say) prints a line and calls ``sys.exit(1)``:
    both become one CompileError line, with what BCC printed folded in."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
    except SystemExit:
        said = " ".join(buf.getvalue().split()) or "BCC gave up"
        raise CompileError(f"{what}: {said}") from None
    except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception
        said = " ".join(buf.getvalue().split())
        raise CompileError(f"{what}: {exc}" + (f" ({said})" if said else "")) from None
    else:
        # Not an error: whatever BCC printed on its Python side still reaches the user.
        sys.stderr.write(buf.getvalue())


def own_files(source_name: str, include_dirs: list[str]) -> Callable[[str], bool]:
    """Whether clang's warning about a file is one the probe's author can act on: the
    probe's source (BCC's ``/virtual/main.c``, or its name through the line markers
    expand_common_header adds), or a header of the probe's or tracekit's ``-I``
    folders; not the kernel's headers. ``TRACEKIT_CLANG_WARNINGS=all``: every file."""
    if os.environ.get("TRACEKIT_CLANG_WARNINGS") == "all":
        return lambda path: True
    dirs = tuple(d.rstrip("/") + "/" for d in include_dirs)
    return lambda path: (
        path.startswith("/virtual/")
        or Path(path).name == source_name
        or path.startswith(dirs)
        or Path(path).name == COMMON_HEADER
    )


def ctypes_members(cls: Any) -> list[tuple[str, int]]:
    """(name, offset) of each member of a ctypes struct (BCC's view of a C struct)."""
    return [(f[0], getattr(cls, f[0]).offset) for f in cls._fields_]


def layout_problems(members: list[tuple[str, int]], size: int, schema: Any) -> list[str]:
    """How a compiled struct (its members' names and offsets, its size) differs from
    the layout the schema expects: the C struct as tracekit read it (padding members
    included), or the packed fields of a hand-made schema.

    BCC names the holes clang left ``__pad_N``: they are not members of the C.
    """
    named = [(n, off) for n, off in members if not n.startswith("__pad_")]
    if schema.layout is not None:
        want = {m.name: m.offset for m in schema.layout.members}
        want_size = schema.layout.size
    else:
        want, want_size = schema.offsets(), schema.size
    problems = []
    if [n for n, _ in named] != list(want):
        problems.append(f"fields {[n for n, _ in named]} != schema {list(want)}")
    else:
        for name, off in named:
            if off != want[name]:
                problems.append(f"{name} at offset {off}, schema says {want[name]}")
    if size != want_size:
        problems.append(f"struct is {size} bytes, schema {want_size}")
    return problems


COMMON_HEADER = "tracekit.h"


def expand_common_header(source: str) -> str:
    """Paste ``probes/tracekit.h`` where a probe includes it.

    BCC rewrites map calls (``tk_events.perf_submit``) only in the main file, never in
    included headers nor macros, so the shared output code must become part of the
    main file's text. Line markers keep compiler messages pointing at the real files.
    """
    header = files("tracekit.probes").joinpath(COMMON_HEADER).read_text()
    lines = []
    for n, line in enumerate(source.splitlines(), 1):
        if line.strip() == f'#include "{COMMON_HEADER}"':
            lines.append(f'#line 1 "{COMMON_HEADER}"')
            lines.append(header)
            lines.append(f'#line {n + 1} "probe.bpf.c"')
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def ringbuf_supported() -> bool:
    # BPF_MAP_TYPE_RINGBUF arrived in 5.8.
    return kernel.at_least(5, 8)


class BccProbe(KernelProbe):
    """A probe compiled by BCC, and its attachment state."""

    loader = "bcc"

    def __init__(
        self,
        spec: ProbeSpec,
        params: dict[str, int],
        output: str = "auto",
        stream: bool = True,
        max_events_per_sec: int = 0,
        page_cnt: int = 64,
        aggregate: bool = False,
        sample: int = 1,
    ) -> None:
        self.spec = spec
        self.params = params
        if output == "auto":
            output = "ringbuf" if ringbuf_supported() else "perf"
        if output not in ("ringbuf", "perf"):
            raise TracekitError(f"output must be auto, ringbuf or perf, not {output!r}")
        self.output = output
        self.page_cnt = page_cnt
        self.stream = stream
        self.aggregate = aggregate and bool(spec.agg_fields)
        self.sample = max(1, int(sample))
        self.attached: list[AttachPoint] = []
        self._reader: RingBuffer | PerfBuffer | None = None
        self._unpad: Any = None  # tracekit.bpf.records.record_decoder, for a padded struct
        # PERF_RECORD_LOST totals per CPU, as the perf buffer itself reports them:
        # a second count, which lags the kernel-side one (see tracekit.h), kept for
        # cross-checks. Handling them also stops BCC printing "Possibly lost".
        self.perf_records_lost: dict[int, int] = {}
        self._reported: dict[str, dict[int, int]] = {}
        self._open = False
        self._output_open = False
        bcc = import_bcc()
        self.ncpus = len(kernel.online_cpus())
        # TK_PARAM_NAME for probes testing it with #if; TK_PARAM_name for TK_PARAM(name).
        cflags = [f"-D{p.macro}={params[p.name]}" for p in spec.params]
        cflags += [f"-DTK_PARAM_{p.name}={params[p.name]}" for p in spec.params]
        cflags += [
            f"-DTK_STREAM={1 if stream else 0}",
            f"-DTK_AGG={1 if self.aggregate else 0}",
            f"-DTK_SAMPLE={self.sample}",
            f"-DTK_MAX_EVENTS_PER_SEC={int(max_events_per_sec)}",
            f"-DTK_NCPUS={kernel.ncpus()}",
            "-Wno-macro-redefined",
        ]
        if spec.prepare is not None:
            cflags += [f"-D{macro}={value}" for macro, value in spec.prepare(params).items()]
        if output == "ringbuf":
            cflags.append("-DTK_USE_RINGBUF")
            # One ring shared by all CPUs: as large as the per-CPU perf buffers together.
            cflags.append(f"-DTK_RINGBUF_PAGES={page_cnt * 16}")
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(as_file(spec.source))
            cflags.append(f"-I{Path(src).parent}")
            # tk_compat.h and tk_kernel_types.h, for probes that include them.
            cflags.append(f"-I{stack.enter_context(as_file(files('tracekit.probes')))}")
            for inc in spec.include_dirs:
                cflags.append(f"-I{stack.enter_context(as_file(inc))}")
            text = expand_common_header(Path(src).read_text())
            import_in_background("numpy")  # the batches need it; clang takes long enough
            own = own_files(Path(src).name, [f[2:] for f in cflags if f.startswith("-I")])
            with sorted_compiler_messages(own), bcc_guard(f"probe {spec.name} failed to compile"):
                self.bpf = bcc.BPF(text=text.encode(), cflags=cflags)
        self._open = True
        self._check_layout()

    # -- layout ------------------------------------------------------------------

    def _check_layout(self) -> None:
        """Refuse to run when the Python schema and the compiled C struct disagree.

        The struct as clang laid it out comes from the ``tk_event_layout`` map that
        tracekit.h declares with ``struct tk_event`` as its value type; the schema's
        is tracekit's own reading of the same C (tracekit/base/cdecl.py).
        """
        try:
            with bcc_guard(f"probe {self.spec.name}: reading struct tk_event"):
                cls = self.bpf[b"tk_event_layout"].Leaf
        except CompileError:
            self.close()
            raise
        problems = layout_problems(ctypes_members(cls), ct.sizeof(cls), self.spec.schema)
        if problems:
            self.close()
            raise CompileError(
                f"probe {self.spec.name}: schema does not match struct tk_event: "
                + "; ".join(problems)
            )

    # -- attach / detach ---------------------------------------------------------

    def reset(self) -> None:
        """Zero the in-kernel counters, losses and aggregate: each run starts from nothing.

        A compiled probe can serve several runs (labs, tests); without this, a run's
        counters would include every earlier run's.
        """
        names = [cm.map for cm in self.spec.counters] + ["tk_lost"]
        if self.aggregate:
            names.append("tk_agg")
        for name in names:
            self.bpf[name.encode()].clear()
        self.perf_records_lost = {}
        if isinstance(self._reader, PerfBuffer):
            self._reader.reset_lost()
        self._reported.clear()

    def attach(self, points: list[AttachPoint] | None = None) -> None:
        self.reset()
        points = expand_points(list(self.spec.attach) if points is None else points)
        # Tracepoints first: they are stable, and a kretprobe attached before its
        # kprobe would see returns without entries.
        order = {"tracepoint": 0, "raw_tracepoint": 0, "kprobe": 1, "kretprobe": 2}
        maxactive = max(16, 4 * self.ncpus)
        try:
            for ap in sorted(points, key=lambda p: order[p.kind]):
                if ap.kind == "tracepoint":
                    self.bpf.attach_tracepoint(tp=ap.target.encode(), fn_name=ap.fn.encode())
                elif ap.kind == "raw_tracepoint":
                    self.bpf.attach_raw_tracepoint(
                        tp=ap.target.split(":")[-1].encode(), fn_name=ap.fn.encode()
                    )
                elif ap.kind == "kprobe":
                    self.bpf.attach_kprobe(event=ap.target.encode(), fn_name=ap.fn.encode())
                else:
                    # maxactive makes BCC create a tracefs kretprobe event, whose
                    # misses (nmissed) kprobe_profile reports; we count them as losses.
                    self.bpf.attach_kretprobe(
                        event=ap.target.encode(), fn_name=ap.fn.encode(), maxactive=maxactive
                    )
                self.attached.append(ap)
        except Exception as exc:  # noqa: BLE001
            self.detach()
            raise TracekitError(f"cannot attach {ap.describe()}: {exc}") from None
        if self.spec.setup is not None:  # deprecated (ProbeSpec warned): goes in 0.3.0
            self.spec.setup(self.bpf, self.params)

    def detach(self) -> None:
        for ap in reversed(self.attached):
            with contextlib.suppress(Exception):
                if ap.kind == "tracepoint":
                    self.bpf.detach_tracepoint(tp=ap.target.encode())
                elif ap.kind == "raw_tracepoint":
                    self.bpf.detach_raw_tracepoint(tp=ap.target.split(":")[-1].encode())
                elif ap.kind == "kprobe":
                    self.bpf.detach_kprobe(event=ap.target.encode())
                else:
                    self.bpf.detach_kretprobe(event=ap.target.encode())
        self.attached.clear()

    def close(self) -> None:
        if self._open:
            self._open = False
            self.detach()
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            with contextlib.suppress(Exception):
                self.bpf.cleanup()

    # -- draining ----------------------------------------------------------------

    def open_output(self) -> None:
        """Open the ring or perf buffer; once per compiled probe, reused across runs.

        Both are read from their mapped pages by tracekit (tracekit.bpf.ringbuf,
        tracekit.bpf.perfbuf), as with the CO-RE loader: BCC's own readers would call
        Python once per event.
        """
        if self._output_open:
            return
        table = self.bpf[b"tk_events"]
        if self.output == "ringbuf":
            self._reader = RingBuffer(table.map_fd, self.page_cnt * 16 * 4096)
            self._output_open = True
            return

        def set_cpu(cpu: int, fd: int) -> None:
            table[table.Key(cpu)] = table.Leaf(fd)

        try:
            self._reader = PerfBuffer(set_cpu, kernel.online_cpus(), self.page_cnt, WAKEUP_EVENTS)
        except Exception as exc:  # noqa: BLE001 - perf_event_open, mmap or the map update
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ResourceError(
                f"cannot allocate the perf buffer of {self.page_cnt} pages per CPU ({why}); "
                "raise RLIMIT_MEMLOCK (ulimit -l) or lower --buffer-pages"
            ) from None
        self._output_open = True

    def close_output(self) -> None:
        """Close the perf buffers, so that the next run opens them again (another size).

        The ring buffer is a map: it lives as long as the compiled probe.
        """
        if not self._output_open or self.output != "perf":
            return
        if isinstance(self._reader, PerfBuffer):
            self._reader.close()
        self._reader = None
        self._output_open = False

    def poll(self, timeout_ms: int = POLL_MS) -> EventBatch | list[tuple[Any, ...]]:
        """Wait up to ``timeout_ms`` for events; return what is there as one packed batch."""
        reader = self._reader
        if reader is None:
            return []
        reader.wait(timeout_ms)
        # Copied out of the buffer once, into packed records in the struct's layout
        # (checked against the schema at compile time): no Python step per event.
        schema = self.spec.schema
        records = reader.drain(schema.kernel_size)
        if isinstance(reader, PerfBuffer):
            # The perf buffer's own PERF_RECORD_LOST totals (see perf_records_lost).
            self.perf_records_lost = reader.lost()
        if not len(records):
            return []
        if schema.kernel_packed:
            return EventBatch.from_records(self.spec.name, schema, records)
        # The C struct has padding or holes: records are drained at its size, and
        # the padding is dropped in one copy (tracekit.bpf.records).
        if self._unpad is None:
            self._unpad = record_decoder(
                self.spec.name, schema, header=0, stride=schema.kernel_size
            )
        batch: EventBatch = self._unpad(memoryview(records), len(records) // schema.kernel_size)
        return batch

    # -- the two primitives of a ProbeContext -----------------------------------

    def map_lookup(self, name: str, key: bytes) -> bytes | None:
        table = self.bpf[name.encode()]
        try:
            k = table.Key.from_buffer_copy(key)
        except ValueError:
            raise TracekitError(
                f"probe {self.spec.name}: {len(key)}-byte key for map {name}, "
                f"whose keys are {ct.sizeof(table.Key)} bytes"
            ) from None
        try:
            value = table[k]
        except KeyError:
            return None
        return ct.string_at(ct.addressof(value), ct.sizeof(value))

    def kernel_symbol(self, addr: int) -> str:
        return str(self.bpf.ksym(addr).decode("utf-8", "replace"))

    def legacy_bpf(self) -> Any:
        return self.bpf

    # -- counters and losses -----------------------------------------------------

    def read_percpu(self, name: str, slots: int) -> list[dict[int, int]]:
        table = self.bpf[name.encode()]
        cpus = set(kernel.online_cpus())  # BCC returns a value per possible CPU; keep online ones
        out = []
        for i in range(slots):
            values = table[table.Key(i)]
            out.append({cpu: int(v) for cpu, v in enumerate(values) if cpu in cpus})
        return out

    def read_agg(self) -> list[tuple[tuple[Any, ...], int]]:
        """The in-kernel aggregate as (row, count): rows in schema order, zero-filled."""
        if not self.aggregate:
            return []
        names = self.spec.agg_fields
        return self.agg_rows(
            ([getattr(k, n) for n in names], int(v.value)) for k, v in self.bpf[b"tk_agg"].items()
        )

    def kretprobe_misses(self) -> int:
        root = kernel.tracefs()
        if root is None:
            return 0
        tag = f"_bcc_{os.getpid()}"
        total = 0
        try:
            for line in Path(root, "kprobe_profile").read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0].startswith("r_") and parts[0].endswith(tag):
                    total += int(parts[2])
        except OSError:
            return 0
        return total


# tracefs kprobe events a process leaves behind if it dies (SIGKILL): BCC's
# maxactive kretprobes (``p_<func>_bcc_<pid>``, ``r_<func>_bcc_<pid>``) and libbpf's
# legacy ones (``libbpf_<pid>_<func>_0x<offset>_<n>``, made where the kernel has no
# perf kprobe PMU).
_STALE_EVENT = re.compile(
    r"^[pr](?:\d+)?:(?:[^/\s]+/)?(?P<name>\S+_bcc_(?P<bcc>\d+)|libbpf_(?P<libbpf>\d+)_\S+)\s"
)


def remove_stale_kprobe_events() -> list[str]:
    """Remove tracefs kprobe events left by BCC or libbpf processes that died.

    perf-based kprobes vanish with their process, but kretprobes created with
    maxactive, and libbpf's legacy kprobes, are tracefs events that outlive it.
    Only events of dead processes go.
    """
    root = kernel.tracefs()
    if root is None:
        return []
    path = Path(root, "kprobe_events")
    removed = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        m = _STALE_EVENT.match(line)
        if not m:
            continue
        pid = m.group("bcc") or m.group("libbpf")
        if Path(f"/proc/{pid}").exists():
            continue
        try:
            with open(path, "a") as f:
                f.write(f"-:{m.group('name')}\n")
            removed.append(m.group("name"))
        except OSError:
            pass
    return removed


def __getattr__(name: str) -> Any:
    if name == "LoadedProbe":  # 0.1.0's name of the BCC loader's class
        from tracekit._compat import warn_deprecated

        warn_deprecated(
            "tracekit.bpf.bcc.LoadedProbe",
            "tracekit.bpf.bcc.BccProbe (or tracekit.load, which picks the loader)",
        )
        return BccProbe
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
