"""The address manager's pieces: network groups (and, below, the address book).

A *network group* is the part of an address that one operator can hardly choose many of: the
/16 of an IPv4 address, the /32 of an IPv6 one (Bitcoin Core's GetGroup without its ASN map).
Eviction and outbound selection spread over groups, so many addresses from one group count as
about one.
"""

from __future__ import annotations

import ipaddress


def netgroup(host: str) -> str:
    """'10.1' for '10.1.2.3', '2001:0db8::/32' for '2001:db8::1' (an IPv4-mapped IPv6 address
    counts as its IPv4 address); a name that is not an IP literal is its own group."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        a, b = ip.packed[:2]
        return f"{a}.{b}"
    high = ip.packed[:4].hex()
    return f"{high[:4]}:{high[4:]}::/32"
