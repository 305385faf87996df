"""Loading into the kernel: both loaders, what they share, and the checks before them.

What it holds: the BCC loader (``bcc``) and the CO-RE loader (``core``) with its
object builder (``core_build``), libbpf through ctypes (``libbpf``), BTF layouts
(``btf``), ring and perf buffers read from their pages (``ringbuf``, ``perfbuf``),
kernel records to packed batches (``records``), what both loaders share
(``probe_base``), stacks and kernel symbols (``stacks``, ``core_stacks``, ``ksyms``),
BCC's compiler messages (``clang_messages``) and the checks before a load
(``preflight``).

May import: ``tracekit.base`` and ``tracekit.plugin``.
"""
