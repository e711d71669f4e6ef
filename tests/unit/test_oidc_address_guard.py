from __future__ import annotations

import pytest

from octosts.adapters.oidc import _refuse_address


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "2002:a9fe:a9fe::1",  # 6to4 wrapping 169.254.169.254
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo: client 10.0.0.1
        "fec0::1",  # deprecated site-local
        "fe80::1",
        "fd00::1",
        "0.0.0.0",
        "not-an-ip",
    ],
)
def test_refused(ip: str) -> None:
    assert _refuse_address(ip)


@pytest.mark.parametrize("ip", ["140.82.112.3", "2606:4700::1111", "2002:8c52:7003::1"])
def test_public_addresses_pass(ip: str) -> None:
    assert not _refuse_address(ip)
