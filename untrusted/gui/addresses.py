"""Who counts as one client for the GUI's bounds: an IPv4 address, or an IPv6 host's /64 (one
host may use a whole /64 and so look like millions of addresses)."""

from __future__ import annotations

import ipaddress

__all__ = ["address_key"]


def address_key(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
