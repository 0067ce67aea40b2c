"""Client addresses: the one normalisation every part that matches or groups addresses shares."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(text: str) -> Address | None:
    """The address a client key stands for (an IPv4-mapped IPv6 address is its IPv4 address), or None when the key
    is not an address. Ranges, exports, the CrowdSec importer and the group counter all normalise through this."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
