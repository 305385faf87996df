from __future__ import annotations

from typing import Any

import pytest

from tracekit import hookimpl
from tracekit.base.errors import DuplicateError, SinkFailedError, TracekitError
from tracekit.base.session import EventBatch, Session
from tracekit.plugin import bus as bus_module
from tracekit.plugin.bus import build_bus
from tracekit.plugin.registry import ProbeRegistry, SinkRegistry, SinkSpec
from tracekit.testing import feed


class Recorder:
    def __init__(self, arg: str | None) -> None:
        self.batches: list[int] = []
        self.ended = False

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        self.batches.append(len(batch))

    @hookimpl
    def tracekit_session_end(self, session: Session, summary: Any) -> None:
        self.ended = True


class Boom:
    def __init__(self, arg: str | None) -> None:
        pass

    @hookimpl
    def tracekit_events(self, session: Session, batch: EventBatch) -> None:
        raise RuntimeError("disk on fire")


def plugin_with(*specs: SinkSpec) -> object:
    class P:
        @hookimpl
        def tracekit_register_sinks(self, registry: SinkRegistry) -> None:
            for s in specs:
                registry.add(s)

    return P()


def test_builtins_register_through_the_hooks() -> None:
    bus = build_bus(load_entry_points=False)
    assert {s.name for s in bus.sinks} == {"console", "hist", "msgpack", "prometheus"}
    assert "txq-flip" in bus.probes
    assert bus.sinks.plugin_of("hist") == "tracekit.plugins.hist"


def test_duplicate_names_name_both_plugins() -> None:
    dup = plugin_with(SinkSpec("hist", "mine", Recorder))
    with pytest.raises(DuplicateError, match=r"tracekit\.plugins\.hist and myplugin"):
        build_bus(extra_plugins=(("myplugin", dup),), load_entry_points=False)


def test_events_arrive_in_batches(session: Session, rows: list) -> None:
    made: list[Recorder] = []

    def factory(arg: str | None) -> Recorder:
        made.append(Recorder(arg))
        return made[-1]

    bus = build_bus(
        extra_plugins=(("rec", plugin_with(SinkSpec("rec", "r", factory))),),
        load_entry_points=False,
    )
    feed(bus, session, ["rec"], [rows[:200], rows[200:]])
    assert made[0].batches == [200, 300] and made[0].ended


def test_failing_sink_is_isolated_and_reported(
    session: Session, rows: list, capsys: pytest.CaptureFixture[str]
) -> None:
    made: list[Recorder] = []

    def factory(arg: str | None) -> Recorder:
        made.append(Recorder(arg))
        return made[-1]

    bus = build_bus(
        extra_plugins=(
            ("p", plugin_with(SinkSpec("boom", "b", Boom), SinkSpec("rec", "r", factory))),
        ),
        load_entry_points=False,
    )
    with pytest.raises(SinkFailedError, match="sink:boom"):
        feed(bus, session, ["boom", "rec"], [rows[:10], rows[10:20], rows[20:30]])
    assert made[0].batches == [10, 10, 10]  # the other sink kept going
    err = capsys.readouterr().err
    assert err.count("disk on fire") == 1  # reported once, with its name
    assert "sink:boom" in err


def test_disable_plugins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEKIT_DISABLE_PLUGINS", "console, tracekit.plugins.hist")
    bus = build_bus(load_entry_points=False)
    assert {s.name for s in bus.sinks} == {"msgpack", "prometheus"}


class FakeEP:
    def __init__(
        self, name: str, value: str, obj: object = None, exc: Exception | None = None
    ) -> None:
        self.name, self.value, self._obj, self._exc = name, value, obj, exc
        self.dist_name, self.dist_version = "?", "?"

    def load(self) -> object:
        if self._exc:
            raise self._exc
        return self._obj


def test_broken_entry_point_warns_and_others_still_load(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = plugin_with(SinkSpec("csv", "c", Recorder))
    eps = [
        FakeEP("broken", "broken_mod:plugin", exc=ImportError("no module named broken_mod")),
        FakeEP("good", "good_mod", obj=good),
    ]
    monkeypatch.setattr(
        bus_module, "entry_points", lambda group: eps if group == "tracekit" else []
    )
    bus = build_bus()
    assert "csv" in bus.sinks
    err = capsys.readouterr().err
    assert "plugin broken (broken_mod:plugin) failed to load: ImportError" in err


def test_misspelled_hook_is_reported_with_plugin_name() -> None:
    class Typo:
        @hookimpl
        def tracekit_register_sink(self, registry: SinkRegistry) -> None:
            pass

    with pytest.raises(TracekitError, match=r"plugin typo:.*tracekit_register_sink"):
        build_bus(extra_plugins=(("typo", Typo()),), load_entry_points=False)


def test_registry_unknown_name_lists_valid() -> None:
    reg = ProbeRegistry()
    with pytest.raises(TracekitError, match="unknown probe 'x'; valid: none"):
        reg.get("x")
