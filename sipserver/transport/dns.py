"""Locating a target by its FQDN (RFC 3263 §4): NAPTR for the SRV name of the transport we
use, SRV (RFC 2782: priority, then weight), then each SRV target's A/AAAA records; without
SRV, the FQDN's own addresses at the configured port. Every lookup is bounded by
`dns.timeout`; a failure is an answer that says why, never an exception or a hang. A NAPTR
query that fails (SERVFAIL or REFUSED, as many corporate resolvers answer it, or no answer
within a third of the time) is no NAPTR record: SRV and then A/AAAA are asked, as RFC 3263
and Kamailio do.

dnspython's async resolver runs on trio. With `dns.nameservers` set, every query (A/AAAA
too) goes to those servers; otherwise NAPTR/SRV follow /etc/resolv.conf and addresses come
from the system (getaddrinfo), so /etc/hosts keeps working."""

from __future__ import annotations

import random
import socket
from dataclasses import replace

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdtypes.IN.NAPTR
import dns.rdtypes.IN.SRV
import dns.resolver
import trio

from sipserver.proxy.locations import Located, Lookup
from sipserver.sip.flow import Transport

SRV_PREFIX = {Transport.TLS: "_sips._tcp", Transport.TCP: "_sip._tcp", Transport.UDP: "_sip._udp"}
NAPTR_SERVICE = {Transport.TLS: "SIPS+D2T", Transport.TCP: "SIP+D2T", Transport.UDP: "SIP+D2U"}
NAPTR_SHARE = 1 / 3  # of dns.timeout: the rest is left for SRV and addresses
SYSTEM_ADDRESS_TTL = 60.0  # getaddrinfo tells no TTL


class LookupFailed(Exception):
    pass


class Resolver:
    def __init__(self, nameservers: tuple[str, ...], timeout: float) -> None:
        self.timeout = timeout
        self.own_servers = bool(nameservers)
        if nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host.strip("[]"), int(port))
                for host, _, port in (server.rpartition(":") for server in nameservers)
            ]
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.lifetime = timeout

    async def locate(self, lookup: Lookup) -> Located:
        try:
            with trio.fail_after(self.timeout):
                return await self._locate(lookup)
        except trio.TooSlowError:
            reason = f"DNS lookup of {lookup.fqdn} took more than {self.timeout:g} s (dns.timeout)"
        except LookupFailed as exc:
            reason = str(exc)
        return Located((), 0.0, "failed", reason)

    async def _locate(self, lookup: Lookup) -> Located:
        srv_name = f"{SRV_PREFIX[lookup.transport]}.{lookup.fqdn}"
        how = "srv"
        naptr_error = None
        try:
            naptr, _ = await self._records(lookup.fqdn, "NAPTR", self.timeout * NAPTR_SHARE)
        except LookupFailed as exc:
            naptr, naptr_error = [], str(exc)
        wanted = NAPTR_SERVICE[lookup.transport].lower()
        usable = sorted(
            (
                r
                for r in naptr
                if isinstance(r, dns.rdtypes.IN.NAPTR.NAPTR)
                and r.flags.decode().lower() == "s"
                and r.service.decode().lower() == wanted
            ),
            key=lambda r: (r.order, r.preference),
        )
        if usable:
            srv_name, how = usable[0].replacement.to_text(omit_final_dot=True), "naptr+srv"
        srv, srv_ttl = await self._records(srv_name, "SRV")
        if srv:
            located = await self._srv_destinations(lookup, srv_name, srv, srv_ttl, how)
            return replace(located, naptr_error=naptr_error)
        addresses, ttl = await self._addresses(lookup.fqdn)
        if not addresses:
            raise LookupFailed(f"{lookup.fqdn} has no SRV record ({srv_name}) and no address")
        destinations = tuple((ip, lookup.port) for ip in addresses)
        return Located(destinations, ttl, "a", naptr_error=naptr_error)

    async def _srv_destinations(
        self, lookup: Lookup, srv_name: str, srv: list[object], srv_ttl: float, how: str
    ) -> Located:
        records = [r for r in srv if isinstance(r, dns.rdtypes.IN.SRV.SRV)]
        if all(r.target.to_text() == "." for r in records):
            raise LookupFailed(f"{srv_name} says the service is not offered (target '.')")
        destinations: list[tuple[str, int]] = []
        ttl = srv_ttl
        for record in rfc2782_order(records):
            host = record.target.to_text(omit_final_dot=True)
            addresses, address_ttl = await self._addresses(host)
            destinations += [(ip, record.port) for ip in addresses]
            ttl = min(ttl, address_ttl) if addresses else ttl
        if not destinations:
            raise LookupFailed(f"no SRV target of {srv_name} has an address")
        return Located(tuple(destinations), ttl, how)

    async def _records(
        self, name: str, rdtype: str, lifetime: float | None = None
    ) -> tuple[list[object], float]:
        """The records of that type, and their TTL; none when the name or type does not
        exist. A server failure or timeout raises LookupFailed."""
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, lifetime=lifetime)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], 0.0
        except dns.resolver.NoNameservers as exc:
            why = f"DNS {rdtype} query for {name} failed: no server answered ({exc})"
            raise LookupFailed(why) from exc
        except dns.exception.Timeout as exc:
            raise LookupFailed(f"DNS {rdtype} query for {name} timed out") from exc
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"DNS {rdtype} query for {name} failed: {exc}") from exc
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
        return list(answer), ttl

    async def _addresses(self, host: str) -> tuple[list[str], float]:
        if not self.own_servers:
            try:
                infos = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:
                return [], 0.0
            return list(dict.fromkeys(str(info[4][0]) for info in infos)), SYSTEM_ADDRESS_TTL
        found: list[str] = []
        ttls: list[float] = []
        for rdtype in ("A", "AAAA"):
            records, ttl = await self._records(host, rdtype)
            found += [r.to_text() for r in records]  # type: ignore[attr-defined]
            if records:
                ttls.append(ttl)
        return found, min(ttls, default=0.0)


def rfc2782_order(records: list[dns.rdtypes.IN.SRV.SRV]) -> list[dns.rdtypes.IN.SRV.SRV]:
    """Lowest priority first; within a priority, a weighted random order (RFC 2782)."""
    ordered: list[dns.rdtypes.IN.SRV.SRV] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = random.uniform(0, total) if total else 0
            running = 0
            for record in group:
                running += record.weight
                if running >= pick:
                    break
            group.remove(record)
            ordered.append(record)
    return [r for r in ordered if r.target.to_text() != "."]
