"""A NIC's per-queue packet counters from the netdev netlink family's queue statistics.

From 6.10, virtio_net reports per-queue packets and bytes only through the netdev
generic netlink family (``NETDEV_CMD_QSTATS_GET``, scope queue; the command came in
6.9): the kernel's rule is that statistics the netlink API carries are not repeated
in ``ethtool -S``, which keeps only ``rxN_drops``, ``rxN_kicks`` and the XDP ones
there. Before that (6.1) they are ``rx_queue_N_packets`` in ``ethtool -S``, and the
family does not exist. Debian ships no client of the family (the kernel's ynl is
not packaged), so this is one: a request and a dump over an ``AF_NETLINK`` socket,
standard library only.

A netlink socket talks to the network namespace it was made in: the lab runs this
module in its namespace (``ip netns exec NS python -m tracekit.lab.qstats DEV``),
which prints ``{"rx": {queue: packets}}`` as JSON, or one ``tracekit:`` line and
status 3 when the kernel or the driver has no queue statistics.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

NETLINK_GENERIC = 16
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
# include/uapi/linux/netdev.h (the same numbers in 6.12 and 7.2)
NETDEV_CMD_QSTATS_GET = 12
A_IFINDEX, A_QUEUE_TYPE, A_QUEUE_ID, A_SCOPE = 1, 2, 3, 4
A_RX_PACKETS = 8
SCOPE_QUEUE = 1
QUEUE_TYPE_RX = 0

_NLMSGHDR = struct.Struct("=IHHII")
_GENLHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")


class QstatsUnavailable(Exception):
    """The kernel has no netdev family or qstats command, or the driver no queue stats."""


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in ``buf``; flag bits of the type dropped."""
    off = 0
    while off + _NLATTR.size <= len(buf):
        length, kind = _NLATTR.unpack_from(buf, off)
        if length < _NLATTR.size or off + length > len(buf):
            raise ValueError(f"netlink attribute of length {length} at {off} overruns its message")
        yield kind & 0x3FFF, buf[off + _NLATTR.size : off + length]
        off += (length + 3) & ~3


def messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in a reply; errors raised as OSError."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            raise ValueError(f"netlink message of length {length} at {off} overruns the reply")
        payload = data[off + _NLMSGHDR.size : off + length]
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", payload)
            if code:
                raise OSError(-code, os.strerror(-code))
        elif kind != NLMSG_DONE:
            yield kind, payload
        off += (length + 3) & ~3


def _uint(payload: bytes) -> int:
    # The family's counters are NLA_UINT: 4 or 8 bytes, host order.
    return int.from_bytes(payload, sys.byteorder)


def parse_rx_packets(reply: bytes) -> dict[int, int]:
    """RX queue -> packets, from the messages of a queue-scope qstats dump."""
    out = {}
    for _kind, payload in messages(reply):
        fields = dict(attrs(payload[_GENLHDR.size :]))
        if A_QUEUE_ID not in fields or A_RX_PACKETS not in fields:
            continue
        if _uint(fields.get(A_QUEUE_TYPE, b"\xff")) != QUEUE_TYPE_RX:
            continue
        out[_uint(fields[A_QUEUE_ID])] = _uint(fields[A_RX_PACKETS])
    return out


class _Genl:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, family: int, cmd: int, body: bytes, dump: bool = False) -> bytes:
        """Send one request; the reply's messages up to the end of the dump (or the one)."""
        self.seq += 1
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
        payload = _GENLHDR.pack(cmd, 1, 0) + body
        hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), family, flags, self.seq, 0)
        self.sock.send(hdr + payload)
        reply = b""
        while True:
            chunk = self.sock.recv(1 << 16)
            reply += chunk
            kinds = [k for k, _ in _raw_kinds(chunk)]
            # A single answer is one message; a dump ends with NLMSG_DONE. An error
            # ends either (messages() raises it when the reply is read).
            if not dump or NLMSG_DONE in kinds or NLMSG_ERROR in kinds:
                return reply

    def family_id(self, name: str) -> int | None:
        try:
            reply = self.request(
                GENL_ID_CTRL,
                CTRL_CMD_GETFAMILY,
                _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"),
            )
            for _kind, payload in messages(reply):
                for kind, value in attrs(payload[_GENLHDR.size :]):
                    if kind == CTRL_ATTR_FAMILY_ID:
                        return int(struct.unpack("=H", value[:2])[0])
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return None


def _raw_kinds(chunk: bytes) -> Iterator[tuple[int, int]]:
    off = 0
    while off + _NLMSGHDR.size <= len(chunk):
        length, kind = _NLMSGHDR.unpack_from(chunk, off)[:2]
        if length < _NLMSGHDR.size:
            return
        yield kind, length
        off += (length + 3) & ~3


def family_id(name: str) -> int | None:
    """The generic netlink family's id in this kernel, None if it has none by that name."""
    g = _Genl()
    try:
        return g.family_id(name)
    finally:
        g.close()


def qstats_dump(ifindex: int) -> bytes:
    """The raw reply of a queue-scope qstats dump of one device (in this namespace)."""
    g = _Genl()
    try:
        fam = g.family_id("netdev")
        if fam is None:
            raise QstatsUnavailable("this kernel has no netdev netlink family (6.3+)")
        body = _attr(A_IFINDEX, struct.pack("=I", ifindex)) + _attr(
            A_SCOPE, struct.pack("=I", SCOPE_QUEUE)
        )
        try:
            reply = g.request(fam, NETDEV_CMD_QSTATS_GET, body, dump=True)
            list(messages(reply))  # raise the kernel's error, if it sent one
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                raise QstatsUnavailable(
                    f"no queue statistics over netlink here ({exc.strerror}): "
                    "the kernel predates them (6.9) or the driver has none"
                ) from None
            raise
        return reply
    finally:
        g.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 3) or (len(argv) == 3 and argv[1] != "--raw"):
        print("usage: python -m tracekit.lab.qstats DEV [--raw FILE]", file=sys.stderr)
        return 2
    dev = argv[0]
    try:
        ifindex = int(Path(f"/sys/class/net/{dev}/ifindex").read_text())
    except (OSError, ValueError):
        print(f"tracekit: no network device {dev!r} in this namespace", file=sys.stderr)
        return 2
    try:
        reply = qstats_dump(ifindex)
    except QstatsUnavailable as exc:
        print(f"tracekit: {dev}: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"tracekit: {dev}: netdev qstats failed: {exc}", file=sys.stderr)
        return 1
    if len(argv) == 3:
        Path(argv[2]).write_bytes(reply)
    print(json.dumps({"rx": parse_rx_packets(reply)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
