"""Items named by an `https://` URL (a shop's own image URL): fetched with a deadline, a size limit, redirects
re-checked, a cap on connections per host, and a guard against server-side request forgery.

The guard: a URL's host is resolved once, every address it resolves to must be public (not loopback, private,
link-local -- the cloud metadata address 169.254.169.254 is link-local --, multicast, reserved or unspecified)
unless `FetchPolicy.allowed_networks` names it, and the connection goes to that very address (the Host header and
TLS server name stay the URL's host), so a DNS answer that changes between the check and the connection cannot
lead anywhere else. Every redirect is checked the same way before it is followed. `http://` is refused unless
`FetchPolicy.allow_http` is set.

Every failure is an `ImageError` whose text is the item's reason; `TransientFetch` (a subclass) marks the ones
worth trying again (connection refused or reset, 5xx, 429), which `fetch` retries with backoff within its
deadline before it gives up.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from shared.images.imaging import ImageError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_REDIRECTS = (301, 302, 303, 307, 308)
_TRANSIENT = (429, 500, 502, 503, 504)


class TransientFetch(ImageError):
    """A failure that may pass (refused, reset, 5xx, 429): retried while the deadline allows."""


@dataclass(frozen=True)
class FetchPolicy:
    timeout: float = 30.0  # the whole fetch, redirects and retries included
    max_bytes: int = 50 * 1024 * 1024
    allow_http: bool = False
    allowed_networks: tuple[Network, ...] = ()  # addresses the guard lets through (tests: 127.0.0.0/8)
    max_redirects: int = 5
    per_host: int = 8  # connections in flight to one host, across the process's threads
    retries: int = 3
    backoff: float = 0.25  # seconds before the first retry; doubles each time
    ca_file: str | None = None  # trust this CA bundle instead of the system's (a private CA)


def parse_networks(text: str) -> tuple[Network, ...]:
    """`127.0.0.1/32,10.0.0.0/8` -> networks (a bare address is a /32 or /128); ValueError names a bad entry."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or network: {part!r}") from None
    return tuple(out)


def is_web_url(uri: str) -> bool:
    return uri[:8].lower() == "https://" or uri[:7].lower() == "http://"


_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _slot(host: str, limit: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(host, threading.BoundedSemaphore(limit))


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The body at `url`, following checked redirects; ImageError with the item's reason otherwise."""
    deadline = time.monotonic() + policy.timeout
    delay = policy.backoff
    for attempt in range(policy.retries + 1):
        try:
            return _follow(url, policy, deadline)
        except TransientFetch as exc:
            if attempt == policy.retries or time.monotonic() + delay >= deadline:
                raise ImageError(f"{exc} (after {attempt + 1} tries)") from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _follow(url: str, policy: FetchPolicy, deadline: float) -> bytes:
    for _ in range(policy.max_redirects + 1):
        status, location, body = _get(url, policy, deadline)
        if status not in _REDIRECTS:
            return body
        if not location:
            raise ImageError(f"HTTP {status} redirect without a Location from {_shown(url)}")
        url = urljoin(url, location)
    raise ImageError(f"more than {policy.max_redirects} redirects from {_shown(url)}")


def _shown(url: str) -> str:
    """The URL as an error names it: scheme, host and path, never a query string (it may hold a signature)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:300]


def _target(url: str, policy: FetchPolicy) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of an acceptable URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or (scheme == "http" and not policy.allow_http):
        raise ImageError(f"only https:// image URLs are fetched{'' if policy.allow_http else ' (http:// is off)'}, "
                         f"not {_shown(url)}")
    if not parts.hostname:
        raise ImageError(f"no host in {_shown(url)}")
    if parts.username or parts.password:
        raise ImageError(f"credentials in an image URL are refused: {_shown(url)}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ImageError(f"bad port in {_shown(url)}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port, path


def resolve_public(host: str, port: int, policy: FetchPolicy) -> str:
    """One address `host` resolves to, after proving that every address it resolves to may be reached."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImageError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not _reachable(address, policy):
            raise ImageError(f"{host} resolves to {address}, a {_kind(address)} address: refused "
                             "(IMGQ_HTTP_ALLOW_NETWORKS lets named networks through)")
    return str(addresses[0])


def _reachable(address, policy: FetchPolicy) -> bool:
    if any(address in net for net in policy.allowed_networks):
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        return _reachable(mapped, policy)
    return address.is_global and not address.is_multicast


def _kind(address) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "non-public"


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to a fixed address that still checks the certificate against the URL's host."""

    def __init__(self, address: str, host: str, port: int, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address, self._context = address, context

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, address: str, host: str, port: int, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self):
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def _get(url: str, policy: FetchPolicy, deadline: float) -> tuple[int, str | None, bytes]:
    scheme, host, port, path = _target(url, policy)
    address = resolve_public(host, port, policy)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageError(f"fetching {_shown(url)} timed out after {policy.timeout:g} s")
    with _slot(host, policy.per_host):
        conn = (_PinnedHTTPS(address, host, port, remaining, ssl.create_default_context(cafile=policy.ca_file))
                if scheme == "https" else _PinnedHTTP(address, host, port, remaining))
        try:
            conn.request("GET", path, headers={"User-Agent": "imgq", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in _REDIRECTS:
                return response.status, response.getheader("Location"), b""
            _check_status(response.status, url)
            return response.status, None, _read_body(response, policy, deadline, url)
        except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected) as exc:
            raise TransientFetch(f"cannot reach {_shown(url)}: {type(exc).__name__}") from None
        except TimeoutError:
            raise ImageError(f"fetching {_shown(url)} timed out after {policy.timeout:g} s") from None
        except ssl.SSLError as exc:
            raise ImageError(f"TLS failed for {_shown(url)}: {exc.reason or exc}") from None
        except OSError as exc:
            raise TransientFetch(f"cannot reach {_shown(url)}: {exc.strerror or exc}") from None
        finally:
            conn.close()


def _check_status(status: int, url: str) -> None:
    if status in _TRANSIENT:
        raise TransientFetch(f"HTTP {status} from {_shown(url)}")
    if status == 404 or status == 410:
        raise ImageError(f"not found (HTTP {status}): {_shown(url)}")
    if status in (401, 403):
        raise ImageError(f"forbidden (HTTP {status}): {_shown(url)}")
    if not 200 <= status < 300:
        raise ImageError(f"HTTP {status} from {_shown(url)}")


def _read_body(response, policy: FetchPolicy, deadline: float, url: str) -> bytes:
    length = response.getheader("Content-Length")
    if length and length.isdigit() and int(length) > policy.max_bytes:
        raise ImageError(f"{_shown(url)} is {int(length):,} bytes, over the limit of {policy.max_bytes:,}")
    body = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise ImageError(f"fetching {_shown(url)} timed out after {policy.timeout:g} s")
        piece = response.read(65536)
        if not piece:
            return bytes(body)
        body += piece
        if len(body) > policy.max_bytes:
            raise ImageError(f"{_shown(url)} is over the limit of {policy.max_bytes:,} bytes")
