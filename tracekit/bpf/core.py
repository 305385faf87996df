"""The CO-RE loader: a probe compiled once by clang, loaded by libbpf, no BCC.

``CoreProbe`` is a ``tracekit.bpf.probe_base.LoadedProbe``, as the BCC loader's
``BccProbe`` is (attach, detach, poll, counters, aggregate, losses, and the map
lookups and symbol names a ``ProbeContext`` is built on), for probes whose source compiles with
``-DTK_CORE`` (see probes/tk_compat.h). Settings and parameters are written into
the object's read-only data before load, so one object serves every value; ring
buffer events are read from the buffer's mapped pages a batch at a time.
"""

from __future__ import annotations

import ctypes as ct
import struct
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from tracekit.base import kernel
from tracekit.base.errors import CompileError, ResourceError, TracekitError
from tracekit.base.schema import Schema
from tracekit.base.session import EventBatch
from tracekit.bpf.bcc import WAKEUP_EVENTS, layout_problems
from tracekit.bpf.core_build import manifest
from tracekit.bpf.core_stacks import KernelSymbols, read_symbols_in_background
from tracekit.bpf.libbpf import BpfObject, LibbpfError, libbpf, map_items
from tracekit.bpf.perfbuf import PerfBuffer
from tracekit.bpf.probe_base import KernelProbe, agg_key_struct, import_in_background
from tracekit.bpf.records import record_decoder, rows_from_records
from tracekit.bpf.ringbuf import HEADER, RingBuffer
from tracekit.plugin.registry import AttachPoint, ProbeSpec, expand_points

POLL_MS = 100


def _agg_key_decoder(st: dict[str, Any], spec: ProbeSpec) -> tuple[struct.Struct, list[str]]:
    """``struct tk_agg_key`` as clang laid it out (the build's manifest)."""
    try:
        return agg_key_struct(spec, [(str(n), int(o)) for n, o in st["members"]], int(st["size"]))
    except ValueError as exc:
        raise CompileError(str(exc)) from None


def prepared_settings(
    spec: ProbeSpec, params: dict[str, int], rodata: dict[str, tuple[int, int]]
) -> dict[str, int]:
    """The probe's ``prepare`` values as the CO-RE object's read-only variables.

    Each macro a TK_SETTING declares becomes its variable; the others are the BCC
    build's -D flags (offsets CO-RE relocates instead) and are not needed here. A
    declared setting the object lacks means the object was built from another
    source: refused, since the program would run with its default.
    """
    if spec.prepare is None:
        return {}
    variables = spec.setting_variables()
    out: dict[str, int] = {}
    for macro, value in spec.prepare(params).items():
        name = variables.get(macro)
        if name is None:
            continue
        if name not in rodata:
            raise CompileError(
                f"probe {spec.name}: the CO-RE object has no setting {name} "
                f"(TK_SETTING of {macro}): rebuild it with 'tracekit build {spec.name}'"
            )
        out[name] = int(value)
    return out


class CoreProbe(KernelProbe):
    """A CO-RE object of one probe, loaded into the kernel."""

    loader = "core"

    def __init__(
        self,
        spec: ProbeSpec,
        params: dict[str, int],
        obj_path: Path,
        *,
        output: str = "ringbuf",
        stream: bool = True,
        aggregate: bool = False,
        sample: int = 1,
        max_events_per_sec: int = 0,
        page_cnt: int = 64,
    ) -> None:
        self.spec = spec
        self.params = params
        self.output = "ringbuf" if output == "auto" else output
        if self.output not in ("ringbuf", "perf"):
            raise TracekitError(f"output must be auto, ringbuf or perf, not {output!r}")
        self.stream = stream
        self.aggregate = aggregate and bool(spec.agg_fields)
        self.sample = max(1, int(sample))
        self.page_cnt = page_cnt
        self.attached: list[AttachPoint] = []
        self._links: list[int] = []
        self._reported: dict[str, dict[int, int]] = {}
        self.perf_records_lost: dict[int, int] = {}
        self._ring: RingBuffer | PerfBuffer | None = None
        # Kernel symbols for kernel_symbol: read once, when the first address needs
        # a name (on a thread started before the load, for probes with an enrich).
        self._symbols: Callable[[], KernelSymbols] = KernelSymbols.read
        self._syms: KernelSymbols | None = None
        lib = self.lib = libbpf()
        self.ncpus_possible = lib.possible_cpus()
        desc = manifest(obj_path)
        syms = {k: (int(v[0]), int(v[1])) for k, v in desc["rodata"].items()}
        structs = desc["structs"]
        if "tk_event" not in structs:
            raise CompileError(f"probe {spec.name}: {obj_path.name} has no struct tk_event")
        self._agg_key = (
            _agg_key_decoder(structs["tk_agg_key"], spec)
            if spec.agg_fields and "tk_agg_key" in structs
            else None
        )
        st = structs["tk_event"]
        problems = layout_problems(
            [(str(n), int(o)) for n, o in st["members"]], int(st["size"]), spec.schema
        )
        if problems:
            raise CompileError(
                f"probe {spec.name}: schema does not match struct tk_event in {obj_path.name}: "
                + "; ".join(problems)
            )
        settings = {
            "tk_cfg_stream": int(stream),
            "tk_cfg_agg": int(self.aggregate),
            "tk_cfg_sample": self.sample,
            "tk_cfg_max_events_per_sec": int(max_events_per_sec),
            "tk_cfg_ncpus": max(1, len(kernel.online_cpus())),
            "tk_cfg_use_ringbuf": int(self.output == "ringbuf"),
            "tk_cfg_wakeup_events": 64,
        }
        settings.update({f"tk_param_{p.name}": params[p.name] for p in spec.params})
        settings.update(prepared_settings(spec, params, syms))
        self._obj = BpfObject(str(obj_path))
        try:
            # One ring shared by all CPUs, as large as the per-CPU perf buffers
            # together; with --output perf the (unused) ring is one page.
            pages = max(1, self.page_cnt * 16) if self.output == "ringbuf" else 1
            self._ring_size = pages * 4096
            self._obj.set_max_entries("tk_events", self._ring_size)
            missing = [n[9:] for n in settings if n.startswith("tk_param_") and n not in syms]
            if missing:
                raise LibbpfError(f"parameter {missing[0]} is not declared with TK_PARAM()")
            self._obj.set_rodata(syms, {k: v for k, v in settings.items() if k in syms})
            # numpy is imported while libbpf loads (the GIL is released): until it is
            # there, poll decodes with struct, so the first events need not wait.
            self._numpy = import_in_background("numpy")
            # A probe that names stack frames (enrich) needs kallsyms by its first
            # event: read meanwhile too.
            if spec.enrich:
                self._symbols = read_symbols_in_background()
            self._obj.load()
        except LibbpfError as exc:
            self.close()
            raise LibbpfError(f"probe {spec.name}: {exc}") from None
        except BaseException:
            self.close()
            raise

    def _map(self, name: str) -> int:
        return self._obj.map(name)

    @cached_property
    def decode_run(self) -> Any:
        """A run as the ring buffer holds it, as a batch (tests, benchmarks)."""
        return self._make_decoder(self.spec.schema)

    @cached_property
    def _unpad(self) -> Any:
        """Drained records as a batch, the padding of the C struct dropped (None
        when it has none: the records are the batch)."""
        schema = self.spec.schema
        if schema.kernel_packed:
            return None
        return self._make_decoder(schema, header=0, stride=schema.kernel_size)

    def _make_decoder(self, schema: Schema, header: int = HEADER, stride: int | None = None) -> Any:
        """tracekit.bpf.records.record_decoder for this probe."""
        return record_decoder(self.spec.name, schema, header, stride)

    # -- attach / detach -------------------------------------------------------------

    def attach(self, points: list[AttachPoint] | None = None) -> None:
        # Each run of a loaded object starts from zero counters, losses and aggregate
        # (labs and tests attach one object several times), as the BCC loader does.
        self.reset()
        lib = self.lib
        # Tracepoints first: they are stable, and a kretprobe attached before its
        # kprobe would see returns without entries.
        order = {"tracepoint": 0, "raw_tracepoint": 0, "kprobe": 1, "kretprobe": 2}
        chosen = expand_points(list(self.spec.attach) if points is None else points)
        for ap in sorted(chosen, key=lambda p: order[p.kind]):
            try:
                prog = self._obj.program(ap.fn)
            except LibbpfError:
                self.detach()
                raise TracekitError(f"cannot attach {ap.describe()}: no program {ap.fn}") from None
            with lib.call(f"cannot attach {ap.describe()}"):
                try:
                    if ap.kind in ("kprobe", "kretprobe"):
                        link = lib.lib.bpf_program__attach_kprobe(
                            prog, ap.kind == "kretprobe", ap.target.encode()
                        )
                    elif ap.kind == "raw_tracepoint":
                        link = lib.lib.bpf_program__attach_raw_tracepoint(
                            prog, ap.target.split(":")[-1].encode()
                        )
                    else:
                        cat, _, name = ap.target.partition(":")
                        link = lib.lib.bpf_program__attach_tracepoint(
                            prog, cat.encode(), name.encode()
                        )
                    self._links.append(lib.check_ptr(link, "attach"))
                except LibbpfError:
                    self.detach()
                    raise
            self.attached.append(ap)

    def detach(self) -> None:
        for link in reversed(self._links):
            self.lib.lib.bpf_link__destroy(link)
        self._links.clear()
        self.attached.clear()

    def close(self) -> None:
        self.detach()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._obj.close()

    # -- draining --------------------------------------------------------------------

    def open_output(self) -> None:
        if self._ring is not None:
            return
        if self.output == "ringbuf":
            fd = self.lib.lib.bpf_map__fd(self._map("tk_events"))
            self._ring = RingBuffer(fd, self._ring_size)
            return
        fd = self.lib.lib.bpf_map__fd(self._map("tk_events_perf"))
        try:
            self._ring = PerfBuffer.for_map(
                self.lib, fd, kernel.online_cpus(), self.page_cnt, WAKEUP_EVENTS
            )
        except (OSError, LibbpfError) as exc:
            raise ResourceError(
                f"cannot allocate the perf buffer of {self.page_cnt} pages per CPU "
                f"({exc.strerror if isinstance(exc, OSError) else exc}); "
                "raise RLIMIT_MEMLOCK (ulimit -l) or lower --buffer-pages"
            ) from None

    def close_output(self) -> None:
        """Close the perf buffers, so that the next run opens them again (another
        size). The ring buffer is a map: it lives as long as the loaded object."""
        if isinstance(self._ring, PerfBuffer):
            self._ring.close()
            self._ring = None

    def poll(self, timeout_ms: int = POLL_MS) -> EventBatch | list[tuple[Any, ...]]:
        """Everything now in the buffer, as one packed batch (or [] if empty)."""
        if self._ring is None:
            return []
        self._ring.wait(timeout_ms)
        # Copied out of the buffer (the kernel reuses it once the consumer moves on)
        # into one array of the kernel's records: for a C struct without padding the
        # batch is a view of it, no more copies; otherwise one copy drops the padding.
        schema = self.spec.schema
        if isinstance(self._ring, RingBuffer) and not self._numpy.is_set():
            # The first events of the run, while numpy is being imported: decoded by
            # struct (a Python step per record), not held back for seconds.
            return rows_from_records(schema, self._ring.drain_bytes(schema.kernel_size))
        records = self._ring.drain(schema.kernel_size)
        if isinstance(self._ring, PerfBuffer):
            # The kernel's PERF_RECORD_LOST totals: a second count of the losses
            # tracekit.h counts in tk_lost, kept for cross-checks (as with BCC).
            self.perf_records_lost = self._ring.lost()
        if not len(records):
            return []
        if self._unpad is None:
            return EventBatch.from_records(self.spec.name, schema, records)
        batch: EventBatch = self._unpad(memoryview(records), len(records) // schema.kernel_size)
        return batch

    # -- the two primitives of a ProbeContext ------------------------------------------

    def map_lookup(self, name: str, key: bytes) -> bytes | None:
        lib = self.lib.lib
        m = self._map(name)
        if len(key) != lib.bpf_map__key_size(m):
            raise TracekitError(
                f"probe {self.spec.name}: {len(key)}-byte key for map {name}, "
                f"whose keys are {lib.bpf_map__key_size(m)} bytes"
            )
        value = ct.create_string_buffer(lib.bpf_map__value_size(m))
        k = ct.create_string_buffer(key, len(key))
        if lib.bpf_map_lookup_elem(lib.bpf_map__fd(m), k, value) != 0:
            return None
        return value.raw

    def kernel_symbol(self, addr: int) -> str:
        if self._syms is None:
            self._syms = self._symbols()
        return self._syms.name(addr).decode("utf-8", "replace")

    # -- maps --------------------------------------------------------------------------

    def read_percpu(self, name: str, slots: int) -> list[dict[int, int]]:
        fd = self.lib.lib.bpf_map__fd(self._map(name))
        n = self.ncpus_possible
        vals = (ct.c_uint64 * n)()  # per-CPU values are 8-byte aligned: u64 counters
        key = ct.c_uint32()
        online = kernel.online_cpus()
        out = []
        for i in range(slots):
            key.value = i
            self.lib.check_rc(
                self.lib.lib.bpf_map_lookup_elem(fd, ct.byref(key), vals), f"reading {name}"
            )
            out.append({c: int(vals[c]) for c in online if c < n})
        return out

    def read_agg(self) -> list[tuple[tuple[Any, ...], int]]:
        """The in-kernel aggregate as (row, count): rows in schema order, zero-filled."""
        if not self.aggregate or self._agg_key is None:
            return []
        key_struct, names = self._agg_key
        # The key struct's members may come in another order than agg_fields.
        order = [names.index(n) for n in self.spec.agg_fields]
        m = self._map("tk_agg")
        fd = self.lib.lib.bpf_map__fd(m)
        return self.agg_rows(
            ([vals[i] for i in order], int.from_bytes(v, "little"))
            for k, v in map_items(self.lib, fd, key_struct.size, 8)
            for vals in (key_struct.unpack(k),)
        )

    def reset(self) -> None:
        """Zero the counters and losses: each run starts from nothing."""
        self.perf_records_lost = {}
        if isinstance(self._ring, PerfBuffer):
            self._ring.reset_lost()
        if self.aggregate:
            m = self._map("tk_agg")
            fd = self.lib.lib.bpf_map__fd(m)
            size = self.lib.lib.bpf_map__key_size(m)
            for k, _ in list(map_items(self.lib, fd, size, 8)):
                self.lib.lib.bpf_map_delete_elem(fd, k)
        slots = {cm.map: len(cm.labels) for cm in self.spec.counters}
        slots["tk_lost"] = 2
        zeros = (ct.c_uint64 * self.ncpus_possible)()
        key = ct.c_uint32()
        for name, n in slots.items():
            fd = self.lib.lib.bpf_map__fd(self._map(name))
            for i in range(n):
                key.value = i
                self.lib.check_rc(
                    self.lib.lib.bpf_map_update_elem(fd, ct.byref(key), zeros, 0),
                    f"zeroing {name}",
                )
        self._reported.clear()
