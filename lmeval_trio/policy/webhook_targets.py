"""Which webhook targets the server may reach: no loopback, private or otherwise non-public
address (SSRF), unless the operator exempts it (LMEVAL_WEBHOOK_ALLOWED_HOSTS).

A target is judged on the addresses its host name resolves to, and the caller connects to the
address judged here (``Target.address``), never resolving again: a name that answers a public
address to the check and a private one to the connection (DNS rebinding) gains nothing.
Every address a name resolves to must pass, so a name with one private answer is refused.
An exempted address or CIDR block exempts URLs that name such an address literally; a host
name is exempted by name only (whoever controls its DNS could otherwise point it anywhere
in an exempted block).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from lmeval_trio.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RESOLVE_TIMEOUT_S = 5.0


class TargetRefused(InvalidRequest, ValueError):
    """A webhook URL the server will not send to; the message says why."""


class Unresolvable(TargetRefused):
    """The host name did not resolve (in time): judged again at the next attempt."""


@dataclass(frozen=True)
class Exemptions:
    """LMEVAL_WEBHOOK_ALLOWED_HOSTS parsed: host names (exact, any case) and networks."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Exemptions:
        """Each entry a host name, an address or a CIDR block; raises ValueError naming a
        bad one (config.py turns it into a settings error)."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in entries):
            text = entry.strip("[]")
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            if not text or "/" in text or any(c.isspace() for c in text):
                raise ValueError(f"{entry!r} is not a host name, address or CIDR block")
            names.add(text.lower().rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def exempts_name(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    def exempts_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class Target:
    """A URL judged: where to connect (the checked address) and what to call the host."""

    url: str
    scheme: str
    host: str  # as the URL names it (the Host header and TLS name)
    port: int
    address: IPAddress


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or _teredo_client(address)
        if embedded is not None:
            why = refusal(embedded)
            return None if why is None else f"embeds {embedded}, which {why}"
    for flag, why in (
        ("is_unspecified", "is unspecified"),
        ("is_loopback", "is a loopback address"),
        ("is_link_local", "is a link-local address"),
        ("is_multicast", "is a multicast address"),
        ("is_private", "is a private address"),
        ("is_reserved", "is a reserved address"),
    ):
        if getattr(address, flag):
            return why
    if not address.is_global:
        return "is not a public address"
    return None


def _teredo_client(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    teredo = address.teredo
    return None if teredo is None else teredo[1]


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally, or None for a host name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def split(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL (already validated by jobs/notify.py)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, host, port


def judge(url: str, address: IPAddress, exemptions: Exemptions) -> None:
    """Raise TargetRefused unless ``url`` may be sent to ``address``."""
    _, host, _ = split(url)
    literal = literal_address(host) is not None
    if exemptions.exempts_name(host) or (literal and exemptions.exempts_address(address)):
        return
    why = refusal(address)
    if why is not None:
        if literal_address(host) is None:
            why = f"resolves to {address}, which {why}"
        raise TargetRefused(
            f"{host} {why}; the server sends webhooks to public addresses only "
            "(LMEVAL_WEBHOOK_ALLOWED_HOSTS exempts hosts)"
        )


async def resolve(url: str, exemptions: Exemptions) -> Target:
    """Resolve ``url``'s host once and judge every address it has; the Target to connect
    to, or TargetRefused (also when the name does not resolve in time)."""
    scheme, host, port = split(url)
    literal = literal_address(host)
    if literal is not None:
        judge(url, literal, exemptions)
        return Target(url, scheme, host, port, literal)
    addresses = await _addresses(host, port)
    for address in addresses:
        judge(url, address, exemptions)
    return Target(url, scheme, host, port, addresses[0])


async def _addresses(host: str, port: int) -> list[IPAddress]:
    import trio  # here: settings validation imports this module, and needs no event loop

    with trio.move_on_after(RESOLVE_TIMEOUT_S):
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise Unresolvable(f"{host} cannot be resolved ({error})") from None
        found: list[IPAddress] = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if address not in found:
                found.append(address)
        if not found:
            raise Unresolvable(f"{host} resolves to no address")
        return found
    raise Unresolvable(f"{host} did not resolve within {RESOLVE_TIMEOUT_S:g} s")
