"""A lab whose workload did not run is a lab error, never a result (real iperf3, loopback)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from tracekit.base.errors import LabError
from tracekit.lab.netns import finish_client, parse_iperf

pytestmark = pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _client(port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-J", "-t", "1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_client_with_no_server_is_a_lab_error_with_iperfs_words() -> None:
    with pytest.raises(LabError, match="iperf3 failed: unable to connect to server"):
        finish_client(_client(_free_port()), timeout=60)


def test_udp_client_against_a_real_server_moves_traffic() -> None:
    port = _free_port()
    server = subprocess.Popen(
        ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Readiness from the kernel's socket table: a test connection would be the
        # one client a one-off (-1) server serves.
        deadline = time.monotonic() + 60
        while not subprocess.run(
            ["ss", "-ltnH", "sport", "=", f":{port}"], capture_output=True, text=True
        ).stdout.strip():
            assert server.poll() is None, "iperf3 server exited"
            assert time.monotonic() < deadline, "iperf3 server never listened"
            time.sleep(0.05)
        res = finish_client(_client(port, "-u", "-b", "1M", "-l", "1000"), timeout=60)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert res.bytes_sent > 0
    assert res.packets_received is not None and res.packets_received > 0


def test_reports_that_moved_nothing_are_refused() -> None:
    tcp_empty = '{"end": {"sum_sent": {"bits_per_second": 0, "seconds": 4, "bytes": 0}}}'
    with pytest.raises(LabError, match="iperf3 gave no result"):
        parse_iperf("")
    with pytest.raises(LabError, match="iperf3 failed: the server is busy"):
        parse_iperf('{"start": {}, "error": "the server is busy running a test. try again later"}')
    assert parse_iperf(tcp_empty).bytes_sent == 0
    udp_lost_all = (
        '{"start": {"test_start": {"protocol": "UDP"}}, "end": {'
        '"sum_sent": {"bits_per_second": 8e6, "seconds": 4, "bytes": 4000000, "packets": 4000},'
        '"sum_received": {"packets": 4000, "lost_packets": 4000}}}'
    )
    assert parse_iperf(udp_lost_all).packets_received == 0
