"""The worker's fetch of an ``image_url`` (imgsvc/queue/fetches.py), against a loopback server.

The server is on 127.0.0.1, so these tests turn the private-address allowance on, except where
a refusal is the point: there 127.0.0.1 stands in for a public host (``public_loopback``) and
every other private address is still refused.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket

import pytest

from imgsvc import outbound_urls
from imgsvc.config import Settings
from imgsvc.queue import fetches
from imgsvc.queue.fetches import FetchFailed, FetchLimits, download, fetch_image
from imgsvc.storage.uploads import LocalUploadStore
from tests.conftest import image_bytes
from tests.image_server import ImageServer, Page

JPEG = image_bytes("JPEG")
LIMIT = 64 * 1024


def limits(**changes) -> FetchLimits:
    return FetchLimits(
        **({"max_bytes": LIMIT, "connect_timeout": 5, "deadline_s": 10, "allow_private": True} | changes)
    )


class Sink:
    """What download() writes into: the bytes, in memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)

    def tell(self) -> int:
        return len(self.data)


def fetch(url: str, **changes) -> bytes:
    sink = Sink()
    download(url, sink, limits(**changes))
    return bytes(sink.data)


@pytest.fixture()
def public_loopback(monkeypatch):
    """127.0.0.1 counts as public (the loopback server plays an internet host); nothing else changes."""
    real = outbound_urls.is_public
    loopback = ipaddress.ip_address("127.0.0.1")

    def is_public(address) -> bool:
        return address == loopback or real(address)

    monkeypatch.setattr(outbound_urls, "is_public", is_public)
    monkeypatch.setattr(fetches, "is_public", is_public)


@pytest.fixture()
def no_connect_except_loopback(monkeypatch):
    """Fail the test if anything connects anywhere but the loopback server."""
    real = socket.create_connection
    tried: list[object] = []

    def create_connection(address, *args, **kwargs):
        if address[0] != "127.0.0.1":
            tried.append(address)
            raise AssertionError(f"connected to {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return tried


def test_the_image_is_fetched_checked_and_stored_like_an_upload(tmp_path):
    store = LocalUploadStore(tmp_path / "uploads", LIMIT)
    settings = Settings(image_url_allow_private=True, max_file_size=LIMIT)
    with ImageServer({"/cat.jpg": Page(body=JPEG + b"trailing padding")}) as server:
        fetched = fetch_image(server.url("/cat.jpg"), store, settings)
    assert (fetched.info.format, fetched.info.width, fetched.info.height) == ("JPEG", 64, 48)
    stored = (tmp_path / "uploads" / fetched.upload_name).read_bytes()
    assert stored == JPEG  # trimmed at the image's end, as an upload is
    assert fetched.sha256 == hashlib.sha256(JPEG).hexdigest() and fetched.size == len(JPEG)
    assert server.requests[0]["User-Agent"] == "imgsvc-fetch"


def test_the_host_name_is_sent_while_the_socket_goes_to_the_vetted_address():
    with ImageServer({"/a.jpg": Page(body=JPEG)}) as server:
        sink = Sink()
        resolve = lambda host, port: ["127.0.0.1"]  # noqa: E731
        download(f"http://images.example:{server.port}/a.jpg", sink, limits(), resolve=resolve)
    assert bytes(sink.data) == JPEG
    assert server.requests[0]["Host"] == f"images.example:{server.port}"


def test_redirects_are_followed_up_to_the_cap():
    pages = {f"/r{i}": Page(status=302, headers={"Location": f"/r{i + 1}"}) for i in range(5)}
    with ImageServer(pages | {"/r3": Page(body=JPEG)}) as server:
        assert fetch(server.url("/r0")) == JPEG  # three redirects: allowed
        server.pages["/r3"] = pages["/r3"]
        with pytest.raises(FetchFailed, match="more than 3 redirects") as failed:
            fetch(server.url("/r0"))
    assert failed.value.permanent
    assert server.hits[-1] == "/r3"  # the fourth redirect is not followed


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[fd00::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://internal.example/",  # resolves to 192.168.1.1
    ],
)
def test_a_redirect_to_a_refused_address_is_refused_without_connecting(
    public_loopback, no_connect_except_loopback, location
):
    resolve = lambda host, port: ["192.168.1.1"] if host == "internal.example" else ["127.0.0.1"]  # noqa: E731
    with (
        ImageServer({"/go": Page(status=302, headers={"Location": location})}) as server,
        pytest.raises(FetchFailed) as failed,
    ):
        download(server.url("/go"), Sink(), limits(allow_private=False), resolve=resolve)
    assert failed.value.permanent
    assert str(failed.value).startswith(
        "fetch_failed: refused: image_url resolves to an address that is not public"
    )
    assert location.split("/")[2] not in str(failed.value)  # the message never quotes the address
    assert server.hits == ["/go"] and no_connect_except_loopback == []


def test_the_first_url_is_vetted_again_in_the_worker(no_connect_except_loopback):
    """The web side checked it at submit, but DNS may answer otherwise now: refused, unconnected."""
    resolve = lambda host, port: ["10.1.2.3"]  # noqa: E731
    with pytest.raises(FetchFailed, match="not public") as failed:
        download("http://images.example/a.jpg", Sink(), limits(allow_private=False), resolve=resolve)
    assert failed.value.permanent and no_connect_except_loopback == []


def test_a_body_past_max_file_size_is_cut_there_while_streaming(tmp_path):
    """No Content-Length, and the server would send for ever: reading stops one byte past the limit."""
    store = LocalUploadStore(tmp_path / "uploads", LIMIT)
    settings = Settings(image_url_allow_private=True, max_file_size=LIMIT, image_url_timeout=20)
    with (
        ImageServer({"/huge.jpg": Page(body=JPEG, endless=True)}) as server,
        pytest.raises(FetchFailed, match=f"larger than MAX_FILE_SIZE \\({LIMIT} bytes\\)") as failed,
    ):
        fetch_image(server.url("/huge.jpg"), store, settings)
    assert failed.value.permanent
    assert list((tmp_path / "uploads").iterdir()) == []  # the partial file is gone


def test_a_declared_length_past_max_file_size_is_refused_before_the_body():
    with (
        ImageServer({"/big.jpg": Page(body=b"x" * (LIMIT + 1))}) as server,
        pytest.raises(FetchFailed, match="larger than MAX_FILE_SIZE") as failed,
    ):
        fetch(server.url("/big.jpg"))
    assert failed.value.permanent


def test_a_slow_server_is_cut_at_the_total_deadline():
    """A byte every 50 ms never trips a per-read timeout; the whole fetch has 1 s."""
    with ImageServer({"/slow.jpg": Page(body=JPEG, chunk=1, drip=0.05)}) as server:
        with pytest.raises(FetchFailed, match=r"within 1 s \(IMAGE_URL_TIMEOUT\)") as failed:
            fetch(server.url("/slow.jpg"), deadline_s=1)
        sent_by_then = server.sent["/slow.jpg"]
    assert not failed.value.permanent  # a timeout may pass: retried as the job's other faults are
    assert 0 < sent_by_then < len(JPEG)


def test_a_slow_server_without_a_length_is_not_taken_for_a_complete_body():
    with (
        ImageServer({"/slow.jpg": Page(body=JPEG, chunk=1, drip=0.05, length=False)}) as server,
        pytest.raises(FetchFailed, match="IMAGE_URL_TIMEOUT"),
    ):
        fetch(server.url("/slow.jpg"), deadline_s=1)


def test_a_body_that_is_not_an_image_fails_for_good(tmp_path):
    store = LocalUploadStore(tmp_path / "uploads", LIMIT)
    settings = Settings(image_url_allow_private=True, max_file_size=LIMIT)
    with (
        ImageServer({"/page": Page(body=b"<html><body>hello</body></html>")}) as server,
        pytest.raises(FetchFailed, match="not an image that can be described: the file is") as failed,
    ):
        fetch_image(server.url("/page"), store, settings)
    assert failed.value.permanent
    assert list((tmp_path / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("status", "permanent"), [(404, True), (403, True), (410, True), (503, False), (500, False), (429, False)]
)
def test_client_errors_fail_for_good_and_server_errors_are_retried(status, permanent):
    with (
        ImageServer({"/x": Page(status=status, body=b"no")}) as server,
        pytest.raises(FetchFailed, match=f"the server answered HTTP {status}") as failed,
    ):
        fetch(server.url("/x"))
    assert failed.value.permanent is permanent


def test_a_refused_connection_is_transient():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(FetchFailed, match="could not connect \\(ConnectionRefusedError\\)") as failed:
        fetch(f"http://127.0.0.1:{port}/x.jpg")
    assert not failed.value.permanent


def test_the_address_reached_is_judged_again_at_connect_time(monkeypatch):
    """Should the network deliver the connection elsewhere than the vetted address (a transparent
    proxy, a NAT), the peer the socket reached is checked too: a private one is refused."""
    real = socket.create_connection
    with ImageServer({"/a.jpg": Page(body=JPEG)}) as server:
        monkeypatch.setattr(
            socket, "create_connection", lambda address, *a, **k: real(("127.0.0.1", server.port), *a, **k)
        )
        resolve = lambda host, port: ["93.184.216.34"]  # noqa: E731
        with pytest.raises(FetchFailed, match="reached an address that is not public") as failed:
            download(
                f"http://images.example:{server.port}/a.jpg",
                Sink(),
                limits(allow_private=False),
                resolve=resolve,
            )
    assert failed.value.permanent and server.hits == []


def test_an_empty_body_fails_for_good(tmp_path):
    store = LocalUploadStore(tmp_path / "uploads", LIMIT)
    settings = Settings(image_url_allow_private=True, max_file_size=LIMIT)
    with ImageServer({"/empty": Page(body=b"")}) as server, pytest.raises(FetchFailed) as failed:
        fetch_image(server.url("/empty"), store, settings)
    assert str(failed.value) == "fetch_failed: the server answered with an empty body"
    assert failed.value.permanent


def test_a_body_cut_short_of_its_content_length_is_not_taken_for_the_image():
    """The connection closes after half the declared length (a reset, a server that dies): the fetch
    fails this try and is retried, instead of a truncated image being stored and described."""
    half = JPEG[: len(JPEG) // 2]
    page = Page(body=half, length=False, headers={"Content-Length": str(len(JPEG))})
    with ImageServer({"/cut.jpg": page}) as server, pytest.raises(FetchFailed) as failed:
        fetch(server.url("/cut.jpg"))
    assert str(failed.value) == "fetch_failed: the connection failed (IncompleteRead)"
    assert not failed.value.permanent


def test_the_fetch_goes_straight_to_the_host_and_asks_for_no_compression(
    monkeypatch, no_connect_except_loopback
):
    """Proxy variables in the worker's environment are not followed (a proxy would connect where
    the guard never looked), and the body is asked for as is: no gzip to inflate past MAX_FILE_SIZE."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://10.9.9.9:3128")
    with ImageServer({"/a.jpg": Page(body=JPEG)}) as server:
        assert fetch(server.url("/a.jpg")) == JPEG
    assert server.requests[0]["Accept-Encoding"] == "identity"
    assert no_connect_except_loopback == []


def test_the_fetch_deadline_never_reaches_past_half_the_job_timeout():
    """A slow URL must not outlast its batch's job: RQ would kill the batch and every job in it."""
    assert FetchLimits.of(Settings(image_url_timeout=30, job_timeout=300)).deadline_s == 30
    assert FetchLimits.of(Settings(image_url_timeout=30, job_timeout=20)).deadline_s == 10
