"""Which TCP ports this test process and its descendants (the Ray it started: GCS, raylets, agents, workers)
listen on, read from /proc (Linux): Ray's ports have no authentication of their own, so a Ray started by the
tests or by fastvit-detect must listen on loopback only."""

from __future__ import annotations

import ipaddress
import os
import sys

import pytest


def own_processes() -> set[int]:
    """This process and every process descended from it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:  # gone meanwhile
                continue
            parents[int(entry)] = int(stat[stat.rindex(b")") + 2:].split()[1])  # the field after the state
    family = {os.getpid()}
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in family}
        grown = not children <= family
        family |= children
    return family


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)  # the kernel's words, each in host (little-endian) order
    ordered = b"".join(raw[index:index + 4][::-1] for index in range(0, len(raw), 4))
    return ipaddress.ip_address(ordered)


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of each listening TCP socket that one of ``pids`` holds."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    owner = {}
    for pid in pids:
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[int(target[8:-1])] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], int(fields[9])
                if state == "0A" and inode in owner:  # 0A: LISTEN
                    address, port = local.split(":")
                    found.append((owner[inode], str(_address(address)), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's view of IPv4
    return (mapped or parsed).is_loopback


def check_loopback_only(minimum_listeners: int = 3) -> list[tuple[int, str, int]]:
    """Assert every listening socket of this process tree is on loopback, and that there are Ray's (at least
    the GCS, a raylet and this driver's core worker): a check that finds no sockets proves nothing."""
    sockets = listening_sockets(own_processes())
    assert len({pid for pid, _address, _port in sockets}) >= minimum_listeners, sockets
    exposed = [entry for entry in sockets if not is_loopback(entry[1])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    return sockets
