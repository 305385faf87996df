"""The hook bus: one pluggy plugin manager with the built-in and third-party plugins.

Built-ins (``DEFAULT_PLUGINS``, derived from the installed ``tracekit.plugins`` and
``tracekit.probes``) are registered the same way as plugins
found through the ``tracekit`` entry-point group. A plugin that fails to import is
reported as a warning and skipped; ``TRACEKIT_DISABLE_PLUGINS=name,...`` skips
plugins by entry-point name or module name.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from tracekit import __version__, hookspecs
from tracekit.base.errors import PluginError, TracekitError
from tracekit.base.text import printable
from tracekit.plugin.entry_points import entry_points
from tracekit.plugin.registry import PlotRegistry, ProbeRegistry, SinkRegistry

if TYPE_CHECKING:
    import click

ENTRY_POINT_GROUP = "tracekit"


def builtin_plugins(containers: tuple[str, ...], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The built-in plugins, read from the installed package: every module of each
    container package that is not private (``tracekit.plugins``: one sink module
    each) and every subpackage (``tracekit.probes``: one folder per probe), then
    ``extra``. Adding a probe folder or a sink module is all it takes."""
    out: list[str] = []
    for container in containers:
        pkg = importlib.import_module(container)
        for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not m.name.startswith("_"):
                out.append(f"{container}.{m.name}")
    return (*out, *extra)


# The one list of built-ins, derived from plugins/ and probes/*/ (tests/test_builtins.py
# checks it against the folders and pyproject.toml).
DEFAULT_PLUGINS: tuple[str, ...] = builtin_plugins(
    ("tracekit.plugins", "tracekit.probes"), extra=("tracekit.lab",)
)


def _warn(msg: str) -> None:
    print(f"tracekit: warning: {msg}", file=sys.stderr)


@dataclass
class PluginInfo:
    name: str
    version: str
    origin: str  # "builtin" or the distribution name
    # tracekit's deprecation warnings raised while the plugin loaded and registered
    # (old module paths, 0.1.0's enrich, ProbeSpec.setup): `tracekit list` flags them.
    deprecated: list[str] = field(default_factory=list)


@contextmanager
def _deprecations(into: list[str]) -> Iterator[None]:
    """Note tracekit's DeprecationWarnings raised in the block (each once), and pass
    every warning on as it would have gone without this."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        text = str(w.message)
        ours = issubclass(w.category, DeprecationWarning) and "since tracekit" in text
        if ours and text not in into:
            into.append(text)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


@dataclass
class SinkFailures:
    """The session plugins that raised during one session (a ``Pipeline`` owns one)."""

    # Plugin name -> its first error.
    errors: dict[str, str] = field(default_factory=dict)
    # The failures that were TracekitErrors, already printed in one line each.
    explained: dict[str, TracekitError] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.errors)


@dataclass
class Bus:
    """The plugin manager plus the registries its plugins filled."""

    pm: pluggy.PluginManager
    probes: ProbeRegistry
    sinks: SinkRegistry
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    plots: PlotRegistry = field(default_factory=PlotRegistry)
    warn: Callable[[str], None] = _warn

    def call(self, hook: str, failures: SinkFailures, **kwargs: Any) -> None:
        """Call every implementation of a session hook, isolating failures.

        A plugin that raises is recorded in ``failures`` (the session's, owned by its
        ``Pipeline``) and not called again with it.

        pluggy stops at the first implementation that raises; a sink that fails must
        not take the others (or the run) down, so the bus walks the implementations
        itself, in pluggy's order, and reports each failing plugin once. Walking them
        by hand skips pluggy's wrapper machinery, which is why ``_refuse_wrappers``
        refuses hookwrappers when a plugin registers instead of ignoring them.
        """
        caller = getattr(self.pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            if impl.plugin_name in failures.errors:
                continue
            try:
                impl.function(*[kwargs[a] for a in impl.argnames])
            except BrokenPipeError:
                # The reader of our output went away (``| head``): not a sink bug.
                # Unix tools stop quietly; the CLI does, from wherever this lands.
                raise
            except TracekitError as exc:
                # A failure the sink explained (disk full while recording): its own
                # line, once, and the run ends with that error's status.
                failures.errors[impl.plugin_name] = str(exc)
                failures.explained[impl.plugin_name] = exc
                print(f"tracekit: {printable(str(exc))}", file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 - any sink bug is reported, not raised
                msg = f"{type(exc).__name__}: {exc}"
                failures.errors[impl.plugin_name] = msg
                self.warn(
                    printable(f"sink {impl.plugin_name} failed in {hook} and was stopped: {msg}")
                )

    def implements(self, hook: str) -> bool:
        """Whether any registered plugin (session sinks included) implements ``hook``."""
        return bool(getattr(self.pm.hook, hook).get_hookimpls())

    @contextmanager
    def session_plugins(self, objs: dict[str, object]) -> Iterator[None]:
        """Register per-session sink objects under their names for the session's length."""
        registered: list[object] = []
        try:
            for name, obj in objs.items():
                self.pm.register(obj, name=name)
                _refuse_wrappers(self.pm, obj, name)  # unregisters it when refused
                registered.append(obj)
            self.pm.check_pending()
            yield
        finally:
            for obj in registered:
                self.pm.unregister(obj)


def _disabled() -> set[str]:
    raw = os.environ.get("TRACEKIT_DISABLE_PLUGINS", "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def _refuse_wrappers(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Refuse ``hookwrapper=True`` / ``wrapper=True`` implementations of ``plugin``.

    Every hook is called implementation by implementation (``Bus.call`` isolates a
    failing sink; registration names the plugin adding each probe): a wrapper would
    be called as a plain function, its code after ``yield`` never run. Refused
    loudly rather than half-run silently.
    """
    for caller in pm.get_hookcallers(plugin) or ():
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                pm.unregister(plugin)
                raise PluginError(
                    f"plugin {name}: {caller.name} is a hookwrapper; tracekit calls each "
                    "implementation on its own and does not support wrappers"
                )


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(plugin)
        raise PluginError(f"plugin {name}: {exc}") from None
    _refuse_wrappers(pm, plugin, name)


def build_bus(
    extra_plugins: tuple[tuple[str, object], ...] = (),
    load_entry_points: bool = True,
) -> Bus:
    """Load built-in and third-party plugins and run the registration hooks."""
    pm = pluggy.PluginManager("tracekit")
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    infos: dict[str, PluginInfo] = {}

    for modname in DEFAULT_PLUGINS:
        short = modname.rsplit(".", 1)[-1]
        if modname in disabled or short in disabled:
            continue
        _register(pm, importlib.import_module(modname), modname)
        infos[modname] = PluginInfo(modname, __version__, "builtin")

    if load_entry_points:
        for ep in entry_points(ENTRY_POINT_GROUP):
            if ep.name in disabled or ep.value.split(":")[0] in disabled:
                continue
            if pm.has_plugin(ep.name):
                continue
            noted: list[str] = []
            try:
                with _deprecations(noted):
                    plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop tracekit
                _warn(f"plugin {ep.name} ({ep.value}) failed to load: {type(exc).__name__}: {exc}")
                continue
            try:
                _register(pm, plugin, ep.name)
            except TracekitError as exc:
                _warn(f"{exc} (skipped)")
                continue
            infos[ep.name] = PluginInfo(ep.name, ep.dist_version, ep.dist_name, noted)

    for name, plugin in extra_plugins:
        if name in disabled:
            continue
        _register(pm, plugin, name)
        infos[name] = PluginInfo(name, "?", "extra")

    probes, sinks, plots = ProbeRegistry(), SinkRegistry(), PlotRegistry()
    _call_registration(pm, "tracekit_register_probes", probes, infos)
    _call_registration(pm, "tracekit_register_sinks", sinks, infos)
    _call_registration(pm, "tracekit_register_plots", plots, infos)
    return Bus(pm=pm, probes=probes, sinks=sinks, plugins=infos, plots=plots)


def _call_registration(
    pm: pluggy.PluginManager,
    hook: str,
    registry: ProbeRegistry | SinkRegistry | PlotRegistry,
    infos: dict[str, PluginInfo] | None = None,
) -> None:
    # Called implementation by implementation so the registry knows who registers
    # what, and a clash can name both plugins. Registration order: built-ins first,
    # so a third-party plugin cannot silently take over a built-in's name.
    for impl in getattr(pm.hook, hook).get_hookimpls():
        registry.current_plugin = impl.plugin_name
        info = (infos or {}).get(impl.plugin_name)
        if info is None:
            impl.function(registry)
            continue
        with _deprecations(info.deprecated):
            impl.function(registry)
    registry.current_plugin = "?"


def current_bus(ctx: click.Context | None = None) -> Bus:
    """The bus of the running ``tracekit`` command line, for a plugin's click command.

    Built once per process, on first use, and shared by every command: the commands a
    plugin adds with ``tracekit_add_commands`` see the same probes and sinks as
    ``tracekit run``. ``ctx`` defaults to click's current context.
    """
    import click

    root = (ctx or click.get_current_context()).find_root()
    obj = root.ensure_object(dict)
    if "bus" not in obj:
        obj["bus"] = build_bus()
    bus: Bus = obj["bus"]
    return bus
