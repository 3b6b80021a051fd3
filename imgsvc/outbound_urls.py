"""URLs the service connects to: the one parser and the address vetting (the SSRF guard).

Two kinds of URL come from clients and are connected to later by a worker: a job's
``callback_url`` (the webhook delivery, ``queue/webhooks.py``) and its ``image_url`` (the
image fetch, ``queue/fetches.py``). The web side checks either when a job is submitted
(:func:`check_url`) and the worker parses and vets it again before connecting (DNS may have
changed); all of them import this module, so a URL is read by the same code on both sides
and the address connected to is one this code judged. The refusal's class says which field
it was about (:class:`UnsafeCallbackURL`, :class:`UnsafeImageURL`). Why the grammar is so
narrow and which IPv6 forms count as their IPv4: see ``queue/webhooks.py``'s docstring.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from imgsvc.errors import BadRequest

MAX_URL_LENGTH = 2048
#: Seconds one name lookup may take (see :func:`resolve_host`).
RESOLVE_TIMEOUT = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: host, port -> the addresses it resolves to (injectable: tests never use real DNS)
Resolver = Callable[[str, int], list[str]]

# RFC 3986's unreserved, reserved and percent characters; nothing else, in any part.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_NETLOC = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
# WHATWG URL and inet_aton read a numeric last label as IPv4 (127.1, 2130706433, 0x7f.1).
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: site-local translators
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")


class UnsafeURL(BadRequest):
    """A URL refused by the guard; a subclass names the field (its messages start with it)."""

    field = "url"
    #: The development setting that lifts the address check for this field (named in refusals).
    allowance = "WEBHOOK_ALLOW_PRIVATE"


class UnsafeCallbackURL(UnsafeURL):
    code = "invalid_callback_url"
    field = "callback_url"


class UnsafeImageURL(UnsafeURL):
    """422: the request is well formed, but the service will not fetch from there."""

    status = 422
    code = "invalid_image_url"
    field = "image_url"
    allowance = "IMAGE_URL_ALLOW_PRIVATE"


@dataclass(frozen=True)
class OutboundURL:
    """A URL as the one parser read it; the HTTP client gets these parts, not the URL."""

    scheme: str
    host: str  # lower-case DNS name, or an IP address without brackets
    port: int
    target: str  # path and query, as sent in the request line
    address: IPAddress | None  # set when the host is an IP literal: nothing to resolve


def parse_url(url: str, refuse: type[UnsafeURL] = UnsafeCallbackURL) -> OutboundURL:
    """Read a URL, or raise ``refuse`` with a message that names its field and does not quote it."""
    name = refuse.field
    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"{name} is longer than {MAX_URL_LENGTH} characters")
    if not _URL_CHARACTERS.fullmatch(url):
        raise refuse(
            f"{name} may only contain URL characters (RFC 3986): no spaces, backslashes, "
            "quotes, angle brackets, control or non-ASCII characters"
        )
    try:
        parts = urlsplit(url)
    except ValueError:  # it validates bracketed hosts itself: http://[::1::2]/
        raise refuse(f"{name} has a malformed host") from None
    scheme = parts.scheme.lower()
    if scheme not in {"http", "https"} or not parts.netloc:
        raise refuse(f"{name} must be an absolute http:// or https:// URL")
    if "@" in parts.netloc:
        raise refuse(f"{name} must not carry a user name or password")
    netloc = _NETLOC.fullmatch(parts.netloc)
    if netloc is None:
        raise refuse(f"{name} has a malformed host or port")
    host, address = _parse_host(netloc["host"], refuse)
    port = int(netloc["port"]) if netloc["port"] else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise refuse(f"{name} has a port outside 1-65535")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return OutboundURL(scheme, host, port, target, address)


def parse_callback_url(url: str) -> OutboundURL:
    return parse_url(url, UnsafeCallbackURL)


def _parse_host(raw: str, refuse: type[UnsafeURL]) -> tuple[str, IPAddress | None]:
    name = refuse.field
    if raw.startswith("["):
        try:
            address = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise refuse(f"{name} has a malformed IPv6 address") from None
        return str(address), address
    host = raw.lower()
    if not _HOSTNAME.fullmatch(host):
        raise refuse(f"{name} host must be a DNS name or an IP address")
    if _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        try:  # only the plain dotted quad: no octal, hex, short or integer forms
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise refuse(f"{name} has a malformed IPv4 address") from None
        return str(address), address
    return host, None


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through (mapped, NAT64, 6to4, Teredo ...)."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _IPV4_COMPATIBLE or address in _IPV4_TRANSLATED or address in _NAT64:
        return [low32]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)  # (server, client)
    return []


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast, judged by the IPv4 inside for IPv6 forms that carry one."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id or address in _LOCAL_NAT64 or address.is_site_local:
            return False
        if embedded := embedded_ipv4(address):
            return all(is_public(inner) for inner in embedded)
    return address.is_global and not (
        address.is_multicast
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_unspecified
    )


def resolve_host(host: str, port: int) -> list[str]:
    """The host's addresses, or ``TimeoutError`` after :data:`RESOLVE_TIMEOUT` seconds.

    ``getaddrinfo`` has no deadline: a name server that never answers (one a client runs for its
    own domain) would hold the submit, or a hop of the worker's fetch past IMAGE_URL_TIMEOUT, for
    as long as the system resolver retries. The lookup runs on a thread left to finish alone.
    """
    answer: list[list[str] | OSError | UnicodeError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            answer.append(list(dict.fromkeys(str(info[4][0]) for info in infos)))
        except (OSError, UnicodeError) as exc:
            answer.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="imgsvc-resolve", daemon=True).start()
    if not done.wait(RESOLVE_TIMEOUT):
        raise TimeoutError(f"no answer from the resolver in {RESOLVE_TIMEOUT:g} s")
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


def vetted_addresses(
    url: OutboundURL,
    allow_private: bool,
    resolve: Resolver = resolve_host,
    refuse: type[UnsafeURL] = UnsafeCallbackURL,
) -> list[IPAddress]:
    """Resolve once; every address must be public unless ``allow_private`` (development)."""
    name = refuse.field
    if url.address is not None:
        addresses: list[IPAddress] = [url.address]
    else:
        try:
            addresses = [ipaddress.ip_address(a) for a in resolve(url.host, url.port)]
        except (OSError, UnicodeError, ValueError):
            raise refuse(f"{name} host does not resolve") from None
        if not addresses:
            raise refuse(f"{name} host does not resolve")
    if not allow_private and not all(is_public(a) for a in addresses):
        raise refuse(
            f"{name} resolves to an address that is not public "
            f"({refuse.allowance}=true allows loopback and private addresses, for development)"
        )
    return addresses


def check_url(
    url: str,
    allow_private: bool,
    refuse: type[UnsafeURL] = UnsafeCallbackURL,
    resolve: Resolver = resolve_host,
) -> str:
    """At submit: refuse now what the worker would refuse (it checks again: DNS may change).

    Nothing is connected to: the host is only resolved (and not even that with ``allow_private``).
    """
    parsed = parse_url(url, refuse)
    if not allow_private:
        vetted_addresses(parsed, allow_private, resolve, refuse)
    return url


def check_callback_url(url: str, allow_private: bool, resolve: Resolver = resolve_host) -> str:
    return check_url(url, allow_private, UnsafeCallbackURL, resolve)
