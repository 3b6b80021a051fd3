"""An ``image_url`` job's image: fetched by the worker through the SSRF guard, then checked and
stored exactly as an upload, so the rest of the job runs as for one.

The web side only vets the URL at submit (:func:`imgsvc.outbound_urls.check_url`); it never
connects. Here, as the job's first step:

- **Resolve once, connect to what was vetted.** Each hop's URL goes through the one parser and
  :func:`~imgsvc.outbound_urls.vetted_addresses` again (DNS may have changed since the submit);
  the socket connects to a vetted address (:mod:`imgsvc.queue.pinned_http`; ``Host``, SNI and the
  certificate check use the URL's name), and the address it reached is judged once more.
- **Redirects are followed by hand**, at most :data:`MAX_REDIRECTS`, each target through the same
  guard: a public URL that redirects to ``169.254.169.254`` is refused like that URL itself.
- **Bounded.** ``MAX_FILE_SIZE`` is enforced while the body streams in (reading stops one byte past
  it; a larger ``Content-Length`` is refused before the body), ``IMAGE_URL_CONNECT_TIMEOUT`` bounds
  each connect and ``IMAGE_URL_TIMEOUT`` the whole fetch, redirects included: a timer shuts the
  socket down at that deadline, so a server that drips a byte at a time is cut there (a batch's
  fetches run side by side: ``tasks.py``). A body cut short of its ``Content-Length`` is a failed
  try, not a complete image.
- **The upload's checks.** The bytes land in a staging file of the upload store and go through
  the same header check (:func:`imgsvc.images.inspect_image`) and trimming as an upload; the
  worker's decoder limits then apply as to any upload.

A failure is a :class:`FetchFailed`, whose text ``fetch_failed: <reason>`` becomes the job's
error. Its reason is fixed wording and numbers, never the URL or anything the server sent (the
error is shown by the API and, as HTML, by rq-dashboard). ``permanent`` failures (a 4xx, too
large, a refused address, not an image) fail the job for good; the others (a timeout, a 5xx, a
refused connection) are retried as any job is (TASK_MAX_RETRIES).
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import ssl
import time
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin

from imgsvc.config import Settings
from imgsvc.errors import EmptyFile, ImageTooLarge, UnsupportedImage
from imgsvc.images import ImageInfo, inspect_image
from imgsvc.outbound_urls import (
    IPAddress,
    OutboundURL,
    Resolver,
    UnsafeImageURL,
    is_public,
    parse_url,
    resolve_host,
    vetted_addresses,
)
from imgsvc.queue.pinned_http import Cutoff, pinned_connection
from imgsvc.storage.uploads import CHUNK, StagingFile, UploadStore, trim_staged

log = logging.getLogger("imgsvc.fetches")

MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Answers that say "later", not "never": retried like a 5xx.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: A host name with many addresses is tried on at most this many (each is vetted first).
MAX_ADDRESSES_TRIED = 3
USER_AGENT = "imgsvc-fetch"


class FetchFailed(Exception):
    """Why an image URL gave no image; ``str()`` is the job's error, ``fetch_failed: <reason>``."""

    code = "fetch_failed"

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(f"{self.code}: {reason}")
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    connect_timeout: float
    deadline_s: float
    allow_private: bool

    @classmethod
    def of(cls, settings: Settings) -> FetchLimits:
        """The fetch runs inside its batch's job: a deadline past half of JOB_TIMEOUT would let one
        slow URL get the whole batch (other clients' jobs) killed by RQ, so it is cut there."""
        return cls(
            settings.max_file_size,
            settings.image_url_connect_timeout,
            min(settings.image_url_timeout, settings.job_timeout / 2),
            settings.image_url_allow_private,
        )


@dataclass(frozen=True)
class FetchedImage:
    """A fetched image, stored under ``upload_name``: what the job row records of an upload."""

    upload_name: str
    info: ImageInfo
    size: int
    sha256: str


def fetch_image(
    url: str,
    uploads: UploadStore,
    settings: Settings,
    *,
    resolve: Resolver = resolve_host,
    tls: ssl.SSLContext | None = None,
) -> FetchedImage:
    """Fetch ``url``, check it as an upload is checked and store it; or raise :class:`FetchFailed`.

    A store that does not answer raises its own ``StorageUnavailable`` (retried, as for uploads).
    """
    limits = FetchLimits.of(settings)
    staging = StagingFile(uploads.staging_dir, limits.max_bytes)
    try:
        download(url, staging, limits, resolve=resolve, tls=tls)
        staged = staging.staged()
    except EmptyFile:  # (past MAX_FILE_SIZE, download() has stopped already)
        raise FetchFailed("the server answered with an empty body", permanent=True) from None
    finally:
        staging.close()
    try:
        info = inspect_image(
            staged.path,
            settings.max_image_pixels,
            settings.max_image_frames,
            time.monotonic() + settings.header_check_ms / 1000,
        )
        staged = trim_staged(staged, info.end)
    except (UnsupportedImage, ImageTooLarge) as exc:
        uploads.discard(staged)
        raise FetchFailed(f"not an image that can be described: {exc.message}", permanent=True) from None
    except BaseException:
        uploads.discard(staged)
        raise
    name = uploads.commit(staged, info.extension)
    return FetchedImage(name, info, staged.size, staged.sha256)


def download(
    url: str,
    into: BinaryIO | StagingFile,
    limits: FetchLimits,
    *,
    resolve: Resolver = resolve_host,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Write the body of ``url`` (after at most :data:`MAX_REDIRECTS` redirects) into ``into``;
    return its size. Every hop is vetted; the whole fetch ends by ``limits.deadline_s``."""
    deadline = time.monotonic() + limits.deadline_s
    for _hop in range(MAX_REDIRECTS + 1):
        target = _vetted(url, limits, resolve)
        location = _get(target, into, limits, tls, deadline)
        if location is None:
            return into.tell()
        url = urljoin(url, location)
    raise FetchFailed(f"more than {MAX_REDIRECTS} redirects", permanent=True)


def _vetted(url: str, limits: FetchLimits, resolve: Resolver) -> tuple[OutboundURL, list[IPAddress]]:
    try:
        parsed = parse_url(url, UnsafeImageURL)
        return parsed, vetted_addresses(parsed, limits.allow_private, resolve, UnsafeImageURL)
    except UnsafeImageURL as exc:
        # The guard's message names the field, the rule and the setting, never the URL.
        raise FetchFailed(f"refused: {exc.message}", permanent=True) from None


def _get(
    target: tuple[OutboundURL, list[IPAddress]],
    into: BinaryIO | StagingFile,
    limits: FetchLimits,
    tls: ssl.SSLContext | None,
    deadline: float,
) -> str | None:
    """One GET: the body written into ``into`` (None returned), or a redirect's Location."""
    url, addresses = target
    where = {"host": url.host, "port": url.port}
    failure: str | None = None
    for address in addresses[:MAX_ADDRESSES_TRIED]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection = pinned_connection(url, address, tls, min(limits.connect_timeout, remaining))
        with Cutoff(connection, deadline) as cutoff:
            try:
                connection.connect()
            except ssl.SSLCertVerificationError:
                connection.close()
                raise FetchFailed(
                    "the server's TLS certificate is not valid for its name", permanent=True
                ) from None
            except OSError as exc:
                failure = "no connection within the deadline" if cutoff.cut else type(exc).__name__
                log.warning("image fetch connect failed", extra=where | {"error": failure})
                connection.close()
                continue
            try:
                _check_peer(connection, limits)
                connection.sock.settimeout(max(0.001, deadline - time.monotonic()))
                connection.request("GET", url.target, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
                response = connection.getresponse()
                location = _answer(response, into, limits)
                if cutoff.cut:  # a body without a length ends at the cut as if it were complete
                    raise TimeoutError
                return location
            except (OSError, http.client.HTTPException) as exc:
                if cutoff.cut or time.monotonic() >= deadline:
                    raise FetchFailed(_too_slow(limits), permanent=False) from None
                log.warning("image fetch failed", extra=where | {"error": repr(exc)})
                raise FetchFailed(f"the connection failed ({type(exc).__name__})", permanent=False) from None
            finally:
                connection.close()
    if failure is None or time.monotonic() >= deadline:
        raise FetchFailed(_too_slow(limits), permanent=False)
    raise FetchFailed(f"could not connect ({failure})", permanent=False)


def _too_slow(limits: FetchLimits) -> str:
    return f"no complete answer within {limits.deadline_s:g} s (IMAGE_URL_TIMEOUT)"


def _check_peer(connection: http.client.HTTPConnection, limits: FetchLimits) -> None:
    """The address the socket reached, judged again at connect time (it must be the vetted one)."""
    peer = ipaddress.ip_address(connection.sock.getpeername()[0])
    if not limits.allow_private and not is_public(peer):
        raise FetchFailed("refused: the connection reached an address that is not public", permanent=True)


def _answer(
    response: http.client.HTTPResponse, into: BinaryIO | StagingFile, limits: FetchLimits
) -> str | None:
    """A redirect's Location, or None once the body is in ``into``; any other answer fails."""
    status = response.status
    if status in REDIRECTS:
        location = response.getheader("Location")
        if not location:
            raise FetchFailed(f"HTTP {status} without a Location", permanent=True)
        return location
    if status != 200:
        transient = status >= 500 or status in TRANSIENT_STATUSES
        raise FetchFailed(f"the server answered HTTP {status}", permanent=not transient)
    too_large = FetchFailed(
        f"the image is larger than MAX_FILE_SIZE ({limits.max_bytes} bytes)", permanent=True
    )
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large
    size = 0
    while chunk := response.read(min(CHUNK, limits.max_bytes + 1 - size)):
        size += len(chunk)
        if size > limits.max_bytes:  # one byte past the limit: nothing more is read
            raise too_large
        into.write(chunk)
    if response.length:  # http.client ends a body cut short of its Content-Length without a word
        raise http.client.IncompleteRead(b"", response.length)
    return None
