"""tracekit/base/kernel.py: the one module that reads facts about the running kernel."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tracekit.base import kernel

ROOT = Path(__file__).resolve().parents[1]


def test_versions_from_releases() -> None:
    assert kernel.kernel_version("6.1.0-18-amd64") == (6, 1, 0)
    assert kernel.kernel_version("6.12.5+deb13-amd64") == (6, 12, 5)
    assert kernel.kernel_version("5.8") == (5, 8)
    assert kernel.kernel_version("custom-kernel") is None


def test_at_least_follows_the_running_release(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "release", lambda: "5.4.0-150-generic")
    assert kernel.at_least(5, 4) and not kernel.at_least(5, 8)
    monkeypatch.setattr(kernel, "release", lambda: "my-build")
    assert not kernel.at_least(1, 0)  # a feature is not assumed on an unknown version


def test_online_cpus_ranges(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "online").write_text("0-2,5,7-8\n")
    monkeypatch.setattr(kernel, "ONLINE_CPUS", tmp_path / "online")
    assert kernel.online_cpus() == [0, 1, 2, 5, 7, 8]
    monkeypatch.setattr(kernel, "ONLINE_CPUS", tmp_path / "absent")
    assert kernel.online_cpus() == list(range(kernel.ncpus()))


# tcp_retransmit_skb's format as 7.2 prints it (6.17 added err): header fields,
# pointers with spaces, arrays.
TCP_RETRANSMIT_FORMAT = """name: tcp_retransmit_skb
ID: 1589
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;

print fmt: "skbaddr=%p sport=%hu err=%d", REC->skbaddr, REC->sport, REC->err
"""


def test_tracepoint_fields_from_the_format(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fmt = tmp_path / "events" / "tcp" / "tcp_retransmit_skb" / "format"
    fmt.parent.mkdir(parents=True)
    fmt.write_text(TCP_RETRANSMIT_FORMAT)
    monkeypatch.setattr(kernel, "tracefs", lambda: tmp_path)
    assert kernel.tracepoint_fields("tcp:tcp_retransmit_skb") == {
        "common_type",
        "skbaddr",
        "sport",
        "saddr_v6",
        "err",
    }
    assert kernel.tracepoint_fields("tcp:tcp_probe") is None
    monkeypatch.setattr(kernel, "tracefs", lambda: None)
    assert kernel.tracepoint_fields("tcp:tcp_retransmit_skb") is None


# Calls and paths that read the running kernel; anywhere but tracekit/base/kernel.py they
# would be a second place to keep right (and to patch in tests).
READERS = {"platform.release", "os.uname", "os.cpu_count"}
PATHS = (
    "/proc/kallsyms",
    "/sys/kernel/tracing",
    "/sys/kernel/debug/tracing",
    "/sys/kernel/btf",
    "/sys/module",
    "/sys/devices/system/cpu",
)
# Every module asks tracekit.base.kernel; none is allowed to read these itself.
ALLOWED: dict[str, set[str]] = {}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_kernel_facts_are_read_only_in_tracekit_kernel() -> None:
    found = []
    for base in ("tracekit", "probes", "plugins"):
        for path in sorted((ROOT / base).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel == "tracekit/base/kernel.py":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {
                id(n.body[0].value)
                for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef)
                and n.body
                and isinstance(n.body[0], ast.Expr)
            }
            for node in ast.walk(tree):
                what = None
                if isinstance(node, ast.Attribute) and _dotted(node) in READERS:
                    what = _dotted(node)
                elif (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and node.value.startswith(PATHS)
                ):
                    what = node.value
                if what and what not in ALLOWED.get(rel, set()):
                    found.append(f"{rel}:{node.lineno}: {what}")
    assert not found, "read the kernel through tracekit.base.kernel:\n" + "\n".join(found)
