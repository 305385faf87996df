"""tracekit/bpf/clang_messages.py: the kernel's header warnings dropped, the probe's kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracekit.bpf.bcc import own_files
from tracekit.bpf.clang_messages import sort_messages, sorted_compiler_messages

# What BCC 0.37's clang printed compiling the tcp-retrans example on Debian's 7.2 (CI,
# 2026-12): a warning in a kernel header, reached through net/tcp.h, then one in the
# probe's own source; as clang wrote it.
CLANG_7_2 = (Path(__file__).parent / "data" / "clang-7.2.txt").read_text()

ERROR = """\
In file included from /virtual/main.c:3:
include/linux/skbuff.h:40:1: error: unknown type name 'bogus_t'
   40 | bogus_t x;
      | ^
1 error generated.
"""


def own(path: str) -> bool:
    return own_files("probe.bpf.c", ["/src/probes"])(path)


def test_the_kernels_header_warning_goes_the_probes_own_stays() -> None:
    shown, dropped = sort_messages(CLANG_7_2, own)
    assert dropped == 1
    assert shown[0].startswith("probe.bpf.c:57:56: warning: passing 'volatile")
    assert len(shown) == 3 and not any("ip6_fib" in s or "jiffies" in s for s in shown)


def test_errors_stay_wherever_they_are() -> None:
    shown, dropped = sort_messages(CLANG_7_2 + ERROR, own)
    assert dropped == 1
    assert "include/linux/skbuff.h:40:1: error: unknown type name 'bogus_t'" in shown
    assert shown[shown.index("In file included from /virtual/main.c:3:") + 1].endswith("'bogus_t'")


def test_a_message_without_a_location_is_not_lost_with_the_warning_before_it() -> None:
    shown, dropped = sort_messages(CLANG_7_2.replace("2 warnings", "error: too many"), own)
    assert dropped == 1 and shown[-1] == "error: too many generated."
    shown, _ = sort_messages(CLANG_7_2.split("probe.bpf.c")[0] + "fatal error: stop\n", own)
    assert shown == ["fatal error: stop"]


def test_other_output_stays() -> None:
    shown, _ = sort_messages("bcc: something BCC said\n" + CLANG_7_2, own)
    assert shown[0] == "bcc: something BCC said"


def test_own_files() -> None:
    assert own("/virtual/main.c") and own("probe.bpf.c") and own("/src/probes/tk_compat.h")
    assert own("tracekit.h")
    assert not own("include/net/ip6_fib.h")
    assert not own("/usr/src/linux-headers-7.2.13/include/linux/jiffies.h")


def test_every_warning_with_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEKIT_CLANG_WARNINGS", "all")
    shown, dropped = sort_messages(CLANG_7_2, own_files("probe.bpf.c", []))
    assert dropped == 0 and any("ip6_fib" in s for s in shown)


def test_what_clang_writes_to_descriptor_2_is_sorted(capfd: pytest.CaptureFixture[str]) -> None:
    """Clang writes to the descriptor itself, past sys.stderr: caught there, sorted,
    printed, and the descriptor is the terminal's again afterwards, on failure too."""
    with pytest.raises(RuntimeError), sorted_compiler_messages(own):
        os.write(2, CLANG_7_2.encode())
        raise RuntimeError("compile failed")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "probe.bpf.c:57:56: warning" in err and "ip6_fib" not in err
    assert err.endswith("after\n") and "generated" not in err
