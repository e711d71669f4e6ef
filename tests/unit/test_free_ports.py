"""Ports for the test stacks: distinct, and out of the way of the kernel's own port choices."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from octosts.dev import envoy
from octosts.dev.envoy import free_ports
from octosts.dev.stack import StackPorts

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def test_ports_are_picked_below_the_ephemeral_range() -> None:
    # bind(0) and every outgoing connection draw from the ephemeral range: a port picked there
    # and released can be taken by them before the child process binds it.
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    ports = free_ports(40)
    assert len(set(ports)) == 40
    assert all(10_000 <= port < low for port in ports), ports


def test_a_stack_never_gets_one_port_twice() -> None:
    ports = StackPorts.free(3)
    every = [
        ports.issuer,
        ports.github,
        *ports.grpc,
        *ports.metrics,
        ports.gateway,
        ports.envoy_admin,
        *ports.webhook,
        ports.envoy_metrics,
    ]
    assert len(every) == len(set(every)) == 14


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        monkeypatch.setattr(envoy, "_candidates", lambda: iter([busy]))
        (port,) = free_ports(1)
    assert port != busy
