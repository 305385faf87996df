"""Histograms: log2 and linear buckets keyed by fields, printed like bpftrace.

The output follows bpftrace's ``hist``/``lhist`` and bcc's ``print_log2_hist``:
``@name[key, key]:`` then one line a bucket with a bar of up to 52 ``@``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from itertools import repeat
from operator import itemgetter
from typing import Any

from tracekit.base.schema import Field, HistSpec, Schema, format_value
from tracekit.base.session import EventBatch, decode_strings
from tracekit.base.text import printable

BAR_WIDTH = 52

# A linear histogram prints every bucket between the lowest and the highest it saw,
# so its bucket count bounds the output and the time to print it. bpftrace's lhist
# has no limit and a hostile 0:2^63:1 makes it print forever; 10,000 lines is more
# than anyone reads. Bounds stay within 64-bit values, as fields are.
MAX_LINEAR_BUCKETS = 10_000
_BOUND = 1 << 64


# Counters one histogram keeps: one per (key, bucket) seen. Each row can add one, so a
# file could otherwise make a histogram as large as its rows times ~400 bytes (a key
# costs a dict of buckets); keys seen after this many counters are counted together
# under OTHER_KEYS (and said so). 8 histograms (a header's limit) x 20,000 counters
# stay under ~70 MB. Shipped probes use tens (CPUs x paths, queues x log2 buckets).
MAX_HIST_CELLS = 20_000
# Lines one histogram prints with every empty bucket between each key's lowest and
# highest; beyond it, empty buckets are left out (sparse keys of a wide histogram
# would otherwise print up to MAX_LINEAR_BUCKETS lines per key).
MAX_DENSE_LINES = 200_000


class _OtherKeys:
    """Stands for every key that came after MAX_HIST_CELLS counters."""

    def __repr__(self) -> str:
        return "other keys"


OTHER_KEYS: tuple[Any, ...] = (_OtherKeys(),)


class KeyCache:
    """What a sink's histograms share: each distinct key kept once, and each distinct
    value of a key field formatted once.

    Eight histograms keyed by the same wide key each kept their own copy of it and
    formatted every field of every key again when printing (16.8 million calls for a
    2 MB file). With one cache, a key counted by several histograms is one tuple, and
    printing formats a value the first time any histogram shows it.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._text: dict[tuple[str, str], dict[Any, str]] = {}

    def intern(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        return self._keys.setdefault(key, key)

    def texts(
        self, f: Field, values: list[Any], symbols: Mapping[int, str] | None, prefix: str = ""
    ) -> list[str]:
        """``values`` of field ``f`` as printed after ``prefix``, each distinct one
        formatted once."""
        # By field name: a name is one field (and one display) in a schema.
        memo = self._text.setdefault((f.name, prefix), {})
        for v in set(values).difference(memo):
            memo[v] = prefix + format_value(f, v, symbols)
        return list(map(memo.__getitem__, values))

    def clear_text(self) -> None:
        """Forget formatted values (symbols may have grown since they were made)."""
        self._text.clear()


def check_hist_limits(spec: HistSpec) -> None:
    """Raise ValueError for a histogram too large to keep or print (see above)."""
    if spec.kind != "linear":
        return
    if not (-_BOUND <= spec.lo < spec.hi <= _BOUND) or spec.step <= 0:
        raise ValueError("linear=LO:HI:STEP needs LO < HI within 64-bit values and STEP > 0")
    buckets = -(-(spec.hi - spec.lo) // spec.step)
    if buckets > MAX_LINEAR_BUCKETS:
        raise ValueError(
            f"linear={spec.lo}:{spec.hi}:{spec.step} makes {buckets} buckets "
            f"(limit {MAX_LINEAR_BUCKETS}); use a larger STEP or log2"
        )


def log2_bucket(v: int) -> int:
    """Bucket index: 0 holds 0 (and negatives), 1 holds 1, k holds [2^(k-1), 2^k)."""
    return int(v).bit_length() if v > 0 else 0


def _human(n: int) -> str:
    for suffix in ("", "K", "M", "G", "T", "P"):
        if n < 1024 or suffix == "P":
            return f"{n}{suffix}"
        if n % 1024:
            return str(n)
        n //= 1024
    return str(n)


def log2_label(b: int) -> str:
    if b == 0:
        return "[0]"
    if b == 1:
        return "[1]"
    return f"[{_human(1 << (b - 1))}, {_human(1 << b)})"


def _dense_limit(n: int) -> int:
    """Codes up to which counting with a table (bincount) beats sorting n values."""
    return max(1 << 16, 4 * n)


def _distinct(col: Any) -> tuple[Any, Any]:
    """(sorted distinct values, index of each value among them), as ``np.unique``
    with ``return_inverse``, without sorting when the values span a small range."""
    import numpy as np

    if not len(col):
        return np.unique(col, return_inverse=True)
    lo, hi = col.min(), col.max()
    span = int(hi) - int(lo)
    if span >= _dense_limit(len(col)):
        return np.unique(col, return_inverse=True)
    # Offsets from the smallest value: exact in the column's own unsigned width.
    off = (
        (col - lo).astype(np.intp)
        if col.dtype.kind == "u"
        else (col.astype(np.int64) - int(lo)).astype(np.intp)
    )
    present = np.bincount(off, minlength=span + 1) > 0
    index = np.cumsum(present) - 1
    # Back from offsets in the column's own type: int(lo) of a u8 above 2**63 fits no
    # C long (hypothesis found it). Arithmetic wraps there, and every value is within
    # [lo, hi], so the wrapped sum is exact.
    values = np.flatnonzero(present).astype(col.dtype) + lo
    return values, index[off]


_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: an odd multiplier that spreads bits


def _words(col: Any) -> Any:
    """A column as a 2-D array of uint64 words, one row per event: integers widened,
    fixed-width strings as their bytes (zero-padded to a whole number of words)."""
    import numpy as np

    if col.dtype.kind in "iu":
        return col.astype(np.uint64).reshape(-1, 1)
    width = col.dtype.itemsize
    raw = np.ascontiguousarray(col).view(np.uint8).reshape(len(col), width)
    if width % 8:
        padded = np.zeros((len(col), -(-width // 8) * 8), dtype=np.uint8)
        padded[:, :width] = raw
        raw = padded
    return raw.view(np.uint64)


def _hash_group(words: Any) -> tuple[Any, Any] | None:
    """(index of each row's group, one row of each group) of equal rows of ``words``
    (2-D uint64), without sorting: rows are hashed into a table of at least 4x their
    number, counted with ``bincount``, and the grouping is then checked against the
    rows themselves. None if two different rows share a slot (the caller sorts)."""
    import numpy as np

    n = len(words)
    h = np.full(n, _MIX, dtype=np.uint64)
    mix, shift = np.uint64(_MIX), np.uint64(29)
    for k in range(words.shape[1]):
        h ^= words[:, k]
        h *= mix  # wraps: arithmetic modulo 2^64
        h ^= h >> shift
    h *= mix
    bits = max(16, (4 * n - 1).bit_length())
    slot = (h >> np.uint64(64 - bits)).astype(np.intp)
    at = np.full(1 << bits, -1, dtype=np.intp)
    at[slot] = np.arange(n)  # the last event of each slot
    used = np.flatnonzero(at >= 0)
    index = at  # reused: slot -> its group's number (slots not used are never read)
    rep = at[used]
    index[used] = np.arange(len(used))
    inv = index[slot]
    if not np.array_equal(words[rep][inv], words):
        return None
    return inv, rep


def _groups(col: Any) -> tuple[int, Any]:
    """(number of distinct values, index of each value's group) of a key column, as
    ``np.unique(col, return_inverse=True)`` counts them, in some order, unsorted."""
    import numpy as np

    if col.dtype.kind in "iu":
        # Integers: a table over a small range, else sorted (numpy sorts integers
        # several times faster than it hashes them here).
        u, inv = _distinct(col)
        return len(u), inv.reshape(-1)
    got = _hash_group(_words(col)) if len(col) else None
    if got is None:
        u, inv = np.unique(col, return_inverse=True)
        return len(u), inv.reshape(-1)
    inv, rep = got
    return len(rep), inv


class Histogram:
    """One histogram over the rows of one schema."""

    # Count packed batches by sorting (np.unique) as before: the oracle of the tests.
    _sorting = False

    def __init__(self, spec: HistSpec, schema: Schema, keys: KeyCache | None = None) -> None:
        schema.check_hist(spec)
        check_hist_limits(spec)
        self.spec = spec
        self.schema = schema
        self.keys = keys if keys is not None else KeyCache()
        self._vi = schema.index(spec.value) if spec.value else None
        self._ki = tuple(schema.index(k) for k in spec.by)
        self._key_fields = tuple(schema.fields[i] for i in self._ki)
        self.data: dict[tuple[Any, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.cells = 0
        self.folded = 0  # events counted under OTHER_KEYS

    def bucket(self, v: int) -> int:
        s = self.spec
        if s.kind == "log2":
            return v.bit_length() if v > 0 else 0
        if s.kind == "linear":
            if v < s.lo:
                return -1
            if v >= s.hi:
                return (s.hi - s.lo) // s.step
            return (v - s.lo) // s.step
        return 0

    def _key_getter(self) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        ki = self._ki
        if len(ki) > 1:
            return itemgetter(*ki)  # type: ignore[return-value]
        if len(ki) == 1:
            i = ki[0]
            return lambda r: (r[i],)
        return lambda r: ()

    def add_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        # The hot loop of replay and of live histograms: keys, values and buckets are
        # taken with map/itemgetter and counted with Counter, not row by row in Python
        # (2-3x faster on a million events, see docs/benchmarks.md).
        rows = rows if isinstance(rows, list) else list(rows)
        keys = map(self._key_getter(), rows)
        if self._vi is None:
            counted = Counter(zip(keys, repeat(0, len(rows)), strict=True))
        else:
            values = map(itemgetter(self._vi), rows)
            counted = Counter(zip(keys, map(self.bucket, values), strict=True))
        # Inlined _add: with keys unique to each row this runs once per event.
        data, cap, intern = self.data, MAX_HIST_CELLS, self.keys.intern
        for (key, b), n in counted.items():
            buckets = data.get(key)
            if buckets is None or b not in buckets:
                if self.cells >= cap:
                    key = OTHER_KEYS
                    self.folded += n
                else:
                    self.cells += 1
                    if buckets is None:
                        key = intern(key)
                buckets = data[key]
            buckets[b] += n

    def add_batch(self, batch: EventBatch) -> None:
        """Count a batch: with numpy over its columns when it is packed, else by rows.

        Buckets and keys become one integer code per event (a mixed radix over each
        key's distinct values and the bucket), counted with ``np.bincount`` or
        ``np.unique``; each code's key is read from one event that has it, and Python
        then runs once per distinct (key, bucket), not per event.
        """
        if not batch.packed or not len(batch):
            self.add_rows(batch.rows)
            return
        import numpy as np

        n = len(batch)
        if self._vi is None:
            buckets = np.zeros(n, dtype=np.int64)
        else:
            got = self._np_buckets(batch.field_array(self._vi))
            if got is None:
                self.add_rows(batch.rows)
                return
            buckets = got
        bmin = int(buckets.min())
        code = buckets - bmin
        radix = int(buckets.max()) - bmin + 1
        cols: list[Any] = []  # each key field's column
        for i in self._ki:
            col = batch.field_array(i)
            if self._sorting and self.schema.fields[i].is_str:
                u, inv = np.unique(col, return_inverse=True)
                k = len(u)
            elif self._sorting:
                u, inv = _distinct(col)
                k = len(u)
            else:
                k, inv = _groups(col)
            cols.append(col)
            if radix * k >= 1 << 62:
                # Renumber what is seen so far: at most n codes, so the product fits.
                seen, code = np.unique(code, return_inverse=True)
                code = code.reshape(-1)
                radix = len(seen)
            code = code * k + inv.reshape(-1)
            radix *= k
        if radix <= _dense_limit(n):
            # Few possible codes: count them without sorting.
            counts = np.bincount(code, minlength=radix)
            codes = np.flatnonzero(counts)
            counts = counts[codes]
            # One event of each code (any: they all have its key and bucket).
            at = np.empty(radix, dtype=np.intp)
            at[code] = np.arange(n)
            rep = at[codes]
        elif (
            got := None if self._sorting else _hash_group(code.astype(np.uint64).reshape(-1, 1))
        ) is not None:
            # Many possible codes, few present: grouped by hashing, not sorted.
            inv, rep = got
            counts = np.bincount(inv, minlength=len(rep))
        else:
            codes, rep, counts = np.unique(code, return_index=True, return_counts=True)
        self._add_groups(cols, buckets, rep, counts)

    def _add_groups(self, cols: list[Any], buckets: Any, rep: Any, counts: Any) -> None:
        """Add ``counts`` for the (key, bucket) of each event ``rep`` stands for."""
        # Keys from the events that stand for each code, a column at a time (no
        # Python step per key field: keys of 256 fields cost 256 divmods each).
        values = [
            decode_strings(col[rep].tolist()) if self.schema.fields[i].is_str else col[rep].tolist()
            for i, col in zip(self._ki, cols, strict=True)
        ]
        keys = zip(*values, strict=True) if values else repeat((), len(rep))
        add = self._add
        for key, b, cnt in zip(keys, buckets[rep].tolist(), counts.tolist(), strict=True):
            add(key, b, cnt)

    def _np_buckets(self, v: Any) -> Any:
        """Bucket of each value, exact as ``bucket`` (None: use the row path)."""
        import numpy as np

        s = self.spec
        signed = v.dtype.kind == "i"
        if s.kind == "log2":
            u = (np.where(v > 0, v, 0) if signed else v).astype(np.uint64)
            # bit_length from the float's exponent (frexp: u = m * 2**e, 0.5 <= m < 1),
            # then made exact: above 2**53 the conversion may round up to the next
            # power of two, which the shift finds (u >> (e - 1) is 0 only then).
            e = np.frexp(u.astype(np.float64))[1].astype(np.int64)
            high = np.maximum(e - 1, 0).astype(np.uint64)
            return e - ((u >> high) == 0) * (e > 0)
        if s.kind == "linear":
            info = np.iinfo(v.dtype)
            if not (int(info.min) <= s.lo and s.hi <= int(info.max) + 1):
                return None  # bounds outside the field's type: the exact row path
            nb = (s.hi - s.lo) // s.step
            # v - lo is exact in uint64 (wrapping) for lo <= v < hi, as hi - lo <= 2^64.
            diff = v.astype(np.uint64) - np.uint64(s.lo % (1 << 64))
            b = (diff // np.uint64(s.step)).astype(np.int64)
            b = np.where(v < np.asarray(s.lo, dtype=v.dtype), -1, b)
            if s.hi <= int(info.max):
                b = np.where(v >= np.asarray(s.hi, dtype=v.dtype), nb, b)
            return b
        return np.zeros(len(v), dtype=np.int64)

    def _add(self, key: tuple[Any, ...], b: int, n: int) -> None:
        buckets = self.data.get(key)
        if buckets is None or b not in buckets:
            if self.cells >= MAX_HIST_CELLS:
                key = OTHER_KEYS
                self.folded += n
            else:
                self.cells += 1
                if buckets is None:
                    key = self.keys.intern(key)
            buckets = self.data[key]
        buckets[b] += n

    def fields(self) -> set[str]:
        return set(self.spec.by) | ({self.spec.value} if self.spec.value else set())

    def add_weighted(self, pairs: Iterable[tuple[tuple[Any, ...], int]]) -> None:
        """Add (row, count) pairs counted elsewhere (in the kernel)."""
        vi, ki, add, bucket = self._vi, self._ki, self._add, self.bucket
        for r, n in pairs:
            add(tuple(r[i] for i in ki), bucket(r[vi]) if vi is not None else 0, n)

    def _label(self, b: int) -> str:
        s = self.spec
        if s.kind == "log2":
            return log2_label(b)
        nb = (s.hi - s.lo) // s.step
        if b < 0:
            return f"(..., {s.lo})"
        if b >= nb:
            return f"[{s.hi}, ...)"
        lo = s.lo + b * s.step
        return f"[{lo}, {lo + s.step})"

    def _key_texts(
        self, keys: list[tuple[Any, ...]], symbols: Mapping[int, str] | None
    ) -> list[str]:
        """The printed form of each key, ``[v, v]``: a column of key values at a
        time, each distinct value formatted once (``KeyCache.texts``)."""
        if not self._ki:
            return ["" for _ in keys]
        real = [k for k in keys if k is not OTHER_KEYS]
        if not real:
            return ["[other keys]" for _ in keys]
        # Each key named (``[cpu=0, before=1]``): the reader need not know the
        # histogram's ``by`` fields to read its keys. Names come from a trace header.
        # "name=value" is made once per distinct value, as the value's text is.
        cols = [
            self.keys.texts(f, list(col), symbols, printable(f.name) + "=")
            for f, col in zip(self._key_fields, zip(*real, strict=True), strict=True)
        ]
        texts = iter(["[" + ", ".join(parts) + "]" for parts in zip(*cols, strict=True)])
        return ["[other keys]" if k is OTHER_KEYS else next(texts) for k in keys]

    def render(self, symbols: Mapping[int, str] | None = None) -> str:
        # Titles, field names and units may come from a trace header: escaped. Keys
        # are escaped by format_value.
        name = printable(self.spec.title or (self.spec.value or "count"))
        unit = ""
        if self.spec.value:
            u = printable(self.schema.field(self.spec.value).unit)
            unit = f" ({u})" if u else ""
        lines: list[str] = []
        if not self.data:
            return f"@{name}{unit}: no events\n"
        if self.folded:
            lines.append(
                f"# @{name}: {self.folded} events with keys seen after {MAX_HIST_CELLS} "
                "counters are counted under [other keys]"
            )
        dense = sum(max(b) - min(b) + 1 for b in self.data.values()) <= MAX_DENSE_LINES
        if not dense:
            lines.append(f"# @{name}: empty buckets left out (too many to print)")
        keys = _sorted_keys(self.data)
        for key, text in zip(keys, self._key_texts(keys, symbols), strict=True):
            buckets = self.data[key]
            head = f"@{name}{text}"
            if self.spec.kind == "count":
                lines.append(f"{head}: {buckets[0]}")
                continue
            lines.append(f"{head}{unit}:")
            lo, hi = min(buckets), max(buckets)
            if self.spec.kind == "log2" and lo > 0:
                lo = max(lo, 0)
            peak = max(buckets.values())
            for b in range(lo, hi + 1) if dense else sorted(buckets):
                n = buckets.get(b, 0)
                bar = "@" * (n * BAR_WIDTH // peak) if peak else ""
                lines.append(f"{self._label(b):<16}{n:>8} |{bar:<{BAR_WIDTH}}|")
            lines.append("")
        return "\n".join(lines).rstrip("\n") + "\n"


def _sorted_keys(data: Mapping[tuple[Any, ...], Any]) -> list[tuple[Any, ...]]:
    """Keys in print order: a field's values are all ints or all strings, so keys
    sort as they are (no sort key per key: for keys of 256 fields that was 256
    pairs each), numbers numerically; the keys folded together last."""
    keys = [k for k in data if k is not OTHER_KEYS]
    try:
        keys.sort()
    except TypeError:  # values of mixed types in one field (rows from a loader)
        keys.sort(key=_sort_key)
    return keys + [OTHER_KEYS] * (OTHER_KEYS in data)


def _sort_key(key: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    # Keys mix ints and strings (interface names); sort ints numerically first, and
    # the keys folded together last.
    if key is OTHER_KEYS:
        return ((2, ""),)
    return tuple((0, k) if isinstance(k, int) else (1, str(k)) for k in key)


def parse_hist_arg(arg: str, schema: Schema) -> HistSpec:
    """Parse ``FIELD[,by=KEY...][,linear=LO:HI:STEP][,log2][,count]`` for ``--sink hist=``.

    ``count`` instead of a field counts events per key.
    """
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty histogram spec")
    value: str | None = parts[0]
    kind, lo, hi, step = "log2", 0, 0, 1
    by: list[str] = []
    if value == "count":
        value, kind = None, "count"
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "by":
            by.extend(x for x in v.split("+") if x)
        elif k == "linear":
            kind = "linear"
            try:
                lo, hi, step = (int(x) for x in v.split(":"))
            except ValueError:
                raise ValueError(f"linear={v!r}: expected LO:HI:STEP") from None
        elif k == "log2":
            kind = "log2"
        else:
            raise ValueError(f"unknown histogram option {p!r} (by=, linear=LO:HI:STEP, log2)")
    spec = HistSpec(value=value, by=tuple(by), kind=kind, lo=lo, hi=hi, step=step)
    schema.check_hist(spec)
    check_hist_limits(spec)
    return spec
