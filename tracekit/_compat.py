"""Old public paths that keep working for a minor version, with a DeprecationWarning.

tracekit's modules moved into subpackages by concern in 0.2.0 (``tracekit.bus`` is
now ``tracekit.plugin.bus``). A plugin that imported an old deep path keeps working
until 0.3.0: importing it warns once, naming the new path, and hands over the very
module the new path names (one module object, never a copy). The policy is written
in docs/writing-plugins.md ("Deprecations").
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

# The release in which the deprecated names below stop working.
REMOVED_IN = "0.3.0"

# Old module path -> its home since 0.2.0.
MOVED_MODULES: dict[str, str] = {
    "tracekit.errors": "tracekit.base.errors",
    "tracekit.safe_text": "tracekit.base.text",
    "tracekit.kernel": "tracekit.base.kernel",
    "tracekit.cdecl": "tracekit.base.cdecl",
    "tracekit.schema": "tracekit.base.schema",
    "tracekit.session": "tracekit.base.session",
    "tracekit.stats": "tracekit.base.stats",
    "tracekit.hist": "tracekit.base.hist",
    "tracekit.registry": "tracekit.plugin.registry",
    "tracekit.contract": "tracekit.plugin.contract",
    "tracekit.entry_points": "tracekit.plugin.entry_points",
    "tracekit.bus": "tracekit.plugin.bus",
    "tracekit.pipeline": "tracekit.plugin.pipeline",
    "tracekit.btf": "tracekit.bpf.btf",
    "tracekit.libbpf": "tracekit.bpf.libbpf",
    "tracekit.ringbuf": "tracekit.bpf.ringbuf",
    "tracekit.perfbuf": "tracekit.bpf.perfbuf",
    "tracekit.records": "tracekit.bpf.records",
    "tracekit.probe_base": "tracekit.bpf.probe_base",
    "tracekit.loader": "tracekit.bpf.bcc",
    "tracekit.clang_messages": "tracekit.bpf.clang_messages",
    "tracekit.core_build": "tracekit.bpf.core_build",
    "tracekit.core_loader": "tracekit.bpf.core",
    "tracekit.core_stacks": "tracekit.bpf.core_stacks",
    "tracekit.stacks": "tracekit.bpf.stacks",
    "tracekit.ksyms": "tracekit.bpf.ksyms",
    "tracekit.preflight": "tracekit.bpf.preflight",
    "tracekit.tracefile": "tracekit.traces.tracefile",
    "tracekit.trace_framing": "tracekit.traces.framing",
    "tracekit.trace_checks": "tracekit.traces.checks",
    "tracekit.replay": "tracekit.traces.replay",
    "tracekit.info": "tracekit.traces.info",
    "tracekit.run": "tracekit.live.run",
    "tracekit.export": "tracekit.fleet.export",
    "tracekit.plot": "tracekit.fleet.plot",
    "tracekit.cli_options": "tracekit.cli.options",
    "tracekit.scaffold": "tracekit.cli.scaffold",
}


def _internal(filename: str) -> bool:
    return "importlib" in filename and "_bootstrap" in filename


def _caller_stacklevel() -> int:
    """``stacklevel`` for warnings.warn from our caller: the first frame outside the
    import system and this module. ``warnings`` itself skips the import system's frames
    when it counts, so they are not counted here either."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        name = frame.f_code.co_filename
        if not _internal(name):
            # Our own frames and importlib.import_module's count, yet are not the caller.
            if name != __file__ and name != importlib.__file__:
                return level
            level += 1
        frame = frame.f_back  # type: ignore[assignment]
    return 1


def warn_deprecated(what: str, instead: str, *, stacklevel: int | None = None) -> None:
    """Warn that ``what`` is deprecated: use ``instead``; it goes in ``REMOVED_IN``."""
    warnings.warn(
        f"{what} is deprecated since tracekit 0.2.0 and goes in {REMOVED_IN}: use {instead}",
        DeprecationWarning,
        stacklevel=(stacklevel if stacklevel is not None else _caller_stacklevel()),
    )


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        warn_deprecated(f"the module {module.__name__}", self.new)
        # The import system takes what sys.modules holds after exec_module: the real
        # module, under its old name too.
        sys.modules[module.__name__] = importlib.import_module(self.new)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds each old module path of ``MOVED_MODULES`` and loads its new home."""

    def find_spec(
        self, fullname: str, path: Any = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import tracekit`` does)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())


def moved_attribute(old: str, new: str, name: str) -> Any:
    """``getattr`` for a module whose names moved to ``new``: warns, then forwards."""
    if name.startswith("__"):
        raise AttributeError(f"module {old!r} has no attribute {name!r}")
    module = importlib.import_module(new)
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {old!r} has no attribute {name!r}") from None
    warn_deprecated(f"{old}.{name}", f"{new}.{name}", stacklevel=3)
    return value
