"""The embedded stack's ports: free, distinct, and below the kernel's ephemeral range, where an
outgoing connection could take a port between its choice and the component's bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from orchestrator.stack import free_port

pytestmark = pytest.mark.unit


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= p < low for p in ports)
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # still free: nothing kept it
