"""The exporter as a service: its systemd unit, Prometheus rules and Grafana dashboard.

The rules are validated by ``promtool check rules`` and unit-tested by ``promtool
test rules`` (tracekit.rules.test.yml); every query of the rules and the dashboard
names only metrics and labels the sink serves, as tracekit's metric model
(tracekit.base.metrics) gives them for the built-in probes, and only counter maps
and counters the probes keep. The unit runs as a dedicated user with capabilities,
never root.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import pytest

from tracekit.base import metrics
from tracekit.plugin.bus import build_bus

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tracekit" / "data"
RULES = DATA / "prometheus" / "tracekit.rules.yml"
RULE_TESTS = DATA / "prometheus" / "tracekit.rules.test.yml"
DASHBOARD = DATA / "grafana" / "tracekit-exporter.json"
UNIT = DATA / "systemd" / "tracekit-exporter@.service"
BUILT_IN = ("txq-flip", "ooo-okay", "rss-cpu", "fq-throttle")
TARGET_LABELS = {"instance", "job"}  # what Prometheus adds to every scraped series


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is missing: scripts/setup.sh installs Debian's prometheus")
    return path


# -- what the sink serves -------------------------------------------------------------


@cache
def served() -> dict[str, set[str]]:
    """Sample name -> its labels, for every metric the sink serves for the built-ins."""
    bus = build_bus()
    out: dict[str, set[str]] = {}
    models = list(metrics.RUN_METRICS)
    for name in BUILT_IN:
        spec = bus.probes.get(name)
        models += metrics.probe_metrics(spec.schema, name)
    for m in models:
        for s in m.samples:
            out[s] = set(m.labels) | ({"le"} if s.endswith("_bucket") else set())
    return out


@cache
def counter_maps() -> dict[str, set[str]]:
    bus = build_bus()
    return {c.map: set(c.labels) for n in BUILT_IN for c in bus.probes.get(n).counters}


# -- a small PromQL reader: selectors and label lists -----------------------------------

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<dur>\[[^\]]*\])|(?P<num>\d+(?:\.\d+)?(?:e\d+)?)'
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)|(?P<op>=~|!~|!=|==|>=|<=|[{}(),=<>/*+^%-]))"
)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_WORDS = {"and", "or", "unless", "bool", "offset"}


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m and m.end() > pos, f"cannot read {expr[pos:]!r}"
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def read(
    expr: str,
) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], list[list[str]]]:
    """(selectors as (metric, [(label, op, value)]), label lists of by/on/...)."""
    toks = tokens(expr)
    selectors: list[tuple[str, list[tuple[str, str, str]]]] = []
    lists: list[list[str]] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in _LABEL_LISTS and nxt == "(":
            j = i + 2
            labels = []
            while toks[j][1] != ")":
                if toks[j][0] == "ident":
                    labels.append(toks[j][1])
                j += 1
            lists.append(labels)
            i = j + 1
            continue
        if kind == "ident" and (nxt == "(" or nxt in _LABEL_LISTS or text in _WORDS):
            i += 1  # a function, an aggregation or an operator
            continue
        if kind == "ident":
            matchers = []
            i += 1
            if i < len(toks) and toks[i][1] == "{":
                i += 1
                while toks[i][1] != "}":
                    if toks[i][1] == ",":
                        i += 1
                        continue
                    label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2][1]
                    matchers.append((label, op, json.loads(value)))
                    i += 3
                i += 1
            selectors.append((text, matchers))
            continue
        i += 1
    return selectors, lists


def test_the_reader_reads() -> None:
    sels, lists = read(
        'sum by (instance, cpu) (rate(tracekit_x_total{map="a", counter!="b"}[1m])) '
        '/ on (instance) tracekit:y:rate1m > 1 and up{job=~"t.*"}'
    )
    assert sels == [
        ("tracekit_x_total", [("map", "=", "a"), ("counter", "!=", "b")]),
        ("tracekit:y:rate1m", []),
        ("up", [("job", "=~", "t.*")]),
    ]
    assert lists == [["instance", "cpu"], ["instance"]]


# -- the rules ---------------------------------------------------------------------------


def rules() -> list[tuple[str, str]]:
    """(record name or alert name prefixed with '!', expr) from the rules file."""
    out: list[tuple[str, str]] = []
    lines = RULES.read_text().splitlines()
    name = ""
    for n, line in enumerate(lines):
        m = re.match(r"\s*- (record|alert): (\S+)", line)
        if m:
            name = m[2] if m[1] == "record" else "!" + m[2]
            continue
        m = re.match(r"(\s*)expr: ?(.*)$", line)
        if m:
            if m[2].strip() not in (">", "|", ">-", "|-"):
                out.append((name, m[2]))
                continue
            indent, body = len(m[1]), []
            for cont in lines[n + 1 :]:
                if cont.strip() and len(cont) - len(cont.lstrip()) <= indent:
                    break
                body.append(cont.strip())
            out.append((name, " ".join(body)))
    return out


def records() -> dict[str, set[str]]:
    """Recording rule -> the labels its series keep (its first ``by`` list)."""
    out = {}
    for name, expr in rules():
        if not name.startswith("!"):
            lists = read(expr)[1]
            out[name] = set(lists[0]) if lists else set()
    return out


def check_query(expr: str, where: str) -> None:
    known = served()
    recs = records()
    sels, lists = read(expr)
    assert sels, f"{where}: no metric in {expr!r}"
    everything = set().union(*known.values(), *recs.values(), TARGET_LABELS)
    for metric, matchers in sels:
        if metric in recs:
            labels = recs[metric]
        else:
            assert metric in known, f"{where}: the sink serves no {metric}"
            labels = known[metric] | TARGET_LABELS
        for label, op, value in matchers:
            assert label in labels, f"{where}: {metric} has no label {label}"
            if label == "map" and op == "=":
                assert value in counter_maps(), f"{where}: no counter map {value}"
                counter = dict((lb, v) for lb, o, v in matchers if o == "=").get("counter")
                if counter is not None:
                    assert counter in counter_maps()[value], f"{where}: no {value}.{counter}"
    for labels in lists:
        for label in labels:
            # label_replace in the rules makes "reason" from "counter".
            assert label in everything | {"reason"}, f"{where}: no metric has a label {label}"


def test_promtool_checks_the_rules() -> None:
    p = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert p.returncode == 0 and "SUCCESS: 10 rules found" in p.stdout, p.stdout + p.stderr


def test_promtool_unit_tests_the_rules() -> None:
    p = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
    )
    if p.returncode != 0 and _only_rounding(p.stdout + p.stderr):
        return  # newer promtools compare floats exactly: 2E+00 against 1.9999999999999998
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def _only_rounding(said: str) -> bool:
    """Whether every failure promtool reports is an expected value against one that
    differs from it only in the last bits of a float (same series, same count)."""
    import math
    import re

    exp = re.findall(r"exp: (.*)", said)
    got = re.findall(r"got: (.*)", said)
    if not exp or len(exp) != len(got) or "FAILED" not in said:
        return False
    sample = re.compile(r"(\{[^}]*\}) ([-+0-9.eE]+|NaN|[+-]Inf)")
    for e, g in zip(exp, got, strict=True):
        es, gs = sample.findall(e), sample.findall(g)
        if not es or len(es) != len(gs):
            return False
        for (el, ev), (gl, gv) in zip(es, gs, strict=True):
            if el != gl or not math.isclose(float(ev), float(gv), rel_tol=1e-9):
                return False
    return True


def test_every_rule_and_alert_is_unit_tested() -> None:
    tested = RULE_TESTS.read_text()
    for name, _ in rules():
        if name.startswith("!"):
            assert f"alertname: {name[1:]}" in tested, name
        else:
            assert f"expr: {name}" in tested, name


def test_rules_query_what_the_sink_serves() -> None:
    got = rules()
    assert len(got) == 10
    for name, expr in got:
        check_query(expr, f"rule {name}")


def test_a_query_naming_what_is_not_served_fails() -> None:
    """The check is not vacuous."""
    for bad in (
        "rate(tracekit_txq_flip_flips_total[1m])",  # no such metric
        'tracekit_events_total{cpu="0"}',  # no such label
        'tracekit_kernel_counter_total{map="rss_counts", counter="drops"}',  # no such counter
        "sum by (socket) (tracekit_events_total)",
    ):
        with pytest.raises(AssertionError):
            check_query(bad, "test")


# -- the dashboard -----------------------------------------------------------------------


def test_dashboard_queries_what_the_sink_serves() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dash["panels"]:
        for t in panel.get("targets", ()):
            exprs.append((panel["title"], t["expr"].replace("$instance", "x")))
    assert len(exprs) >= 12
    for title, expr in exprs:
        check_query(expr, f"panel {title!r}")
    # Every recording rule is on the dashboard, and so is every metric of the model
    # that is not probe-specific.
    text = "\n".join(e for _, e in exprs)
    for name in records():
        assert name in text, name
    for m in metrics.RUN_METRICS:
        assert m.exposed in text or m.name in text, m.name
    for var in dash["templating"]["list"]:
        q = var.get("query")
        if isinstance(q, dict):
            m = re.fullmatch(r"label_values\((\w+), (\w+)\)", q["query"])
            assert m and m[1] in served() and m[2] in TARGET_LABELS | served()[m[1]], q


# -- the systemd unit --------------------------------------------------------------------


def unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_runs_without_root_with_only_its_capabilities() -> None:
    u = unit()
    assert u["User"] == ["tracekit"] and u["Group"] == ["tracekit"]
    assert u["NoNewPrivileges"] == ["yes"]
    ambient = set(u["AmbientCapabilities"][0].split())
    assert {"CAP_BPF", "CAP_PERFMON"} <= ambient
    assert ambient == set(u["CapabilityBoundingSet"][0].split())
    assert not ambient & {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE"}
    # Settings that take CAP_SYSLOG from the bounding set would undo it.
    if "CAP_SYSLOG" in ambient:
        assert "ProtectKernelLogs" not in u
    exec_start = u["ExecStart"][0]
    assert " run %i --sink prometheus=${LISTEN}" in exec_start
    assert u["Environment"] == ["LISTEN=127.0.0.1:9435"]  # loopback unless chosen


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """An instance of the template, with an ExecStart that exists here."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        # The rows' guest roots (the suite's second Pythons) have no systemd; the host
        # has it (scripts/setup.sh, checked by tests/test_setup.py).
        pytest.skip("systemd-analyze is not installed here")
    inst = tmp_path / "tracekit-exporter@rss-cpu.service"
    inst.write_text(UNIT.read_text().replace("/opt/tracekit/bin/tracekit", "/bin/true"))
    p = subprocess.run([analyze, "verify", str(inst)], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


def test_the_wheel_carries_the_service_files() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["tracekit"]
    files = [p.relative_to(ROOT / "tracekit").as_posix() for p in DATA.rglob("*") if p.is_file()]
    assert len(files) == 4
    for f in files:
        assert any(fnmatch.fnmatch(f, g) for g in globs), f


def test_docs_describe_every_rule_alert_and_run_metric() -> None:
    doc = (ROOT / "docs" / "prometheus.md").read_text()
    for name, _ in rules():
        assert f"`{name.lstrip('!')}`" in doc, name
    for m in metrics.RUN_METRICS:
        labels = ", ".join(m.labels) or "-"
        row = f"| `{m.exposed}` | {m.kind}"
        assert row in doc, row
        if m.name not in ("tracekit_run_info", "tracekit_lost_events"):  # annotated there
            assert f"{row} | {labels} |" in doc, m.name


def test_only_rounding_tells_float_noise_from_a_wrong_value() -> None:
    head = '  FAILED:\n    expr: "x", time: 5m,\n'
    noise = head + '        exp: {a="1"} 2E+00\n        got: {a="1"} 1.9999999999999998E+00\n'
    wrong = head + '        exp: {a="1"} 2E+00\n        got: {a="1"} 3E+00\n'
    other = head + '        exp: {a="1"} 2E+00\n        got: {a="2"} 2E+00\n'
    assert _only_rounding(noise)
    assert not _only_rounding(wrong) and not _only_rounding(other)
