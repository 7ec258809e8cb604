"""The TCP sockets a process holds, read from /proc: what it listens on, whom it talks to.

A process's sockets are the `socket:[inode]` links in /proc/PID/fd; /proc/PID/net/tcp and tcp6
(the tables of its network namespace) give each inode's addresses and state.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

LISTEN, ESTABLISHED = "0A", "01"


@dataclass(frozen=True)
class TcpSocket:
    local: ipaddress.IPv4Address | ipaddress.IPv6Address
    local_port: int
    remote: ipaddress.IPv4Address | ipaddress.IPv6Address
    remote_port: int
    state: str  # the kernel's hex state: LISTEN, ESTABLISHED, ...

    @property
    def listening(self) -> bool:
        return self.state == LISTEN

    @property
    def loopback(self) -> bool:
        mapped = self.local.ipv4_mapped if isinstance(self.local, ipaddress.IPv6Address) else None
        return (mapped or self.local).is_loopback


def _address(field: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host (little-endian) order.
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(ordered), int(port, 16)


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def tcp_sockets(pid: int) -> list[TcpSocket]:
    inodes = socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[9]) in inodes:
                (local, local_port), (remote, remote_port) = _address(fields[1]), _address(fields[2])
                found.append(TcpSocket(local, local_port, remote, remote_port, fields[3]))
    return found
