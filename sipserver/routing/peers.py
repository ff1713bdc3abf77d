"""The allow-list of gateways and PBXs, looked up by source address or FQDN."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from sipserver.config.schema import PeerSettings


class PeerTable:
    def __init__(self, peers: Sequence[PeerSettings]) -> None:
        self.peers = tuple(peers)
        self._by_address: dict[str, PeerSettings | None] = {}

    def by_address(self, address: str) -> PeerSettings | None:
        """The first peer (in config order) whose addresses contain this source IP."""
        try:
            return self._by_address[address]
        except KeyError:
            pass
        peer = self._lookup(address)
        if len(self._by_address) >= 4096:  # sources are unbounded: keep the memo small
            self._by_address.clear()
        self._by_address[address] = peer
        return peer

    def _lookup(self, address: str) -> PeerSettings | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for peer in self.peers:
            if any(ip.version == net.version and ip in net for net in peer.addresses):
                return peer
        return None

    def by_name(self, name: str) -> PeerSettings | None:
        return next((p for p in self.peers if p.name == name), None)

    def by_fqdn(self, fqdn: str) -> PeerSettings | None:
        fqdn = fqdn.lower().rstrip(".")
        return next((p for p in self.peers if p.fqdn == fqdn), None)
