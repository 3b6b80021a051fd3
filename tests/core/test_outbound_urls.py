"""The SSRF guard for ``image_url`` at submit (imgsvc/outbound_urls.py): refusals happen on the
URL and its resolved addresses alone; nothing is ever connected to."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from imgsvc import outbound_urls
from imgsvc.outbound_urls import UnsafeCallbackURL, UnsafeImageURL, check_url

REFUSED_ADDRESSES = [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata: link-local
    "http://10.0.0.1/cat.jpg",
    "http://127.0.0.1:8000/cat.jpg",
    "http://[::1]/cat.jpg",
    "http://[fd00::1]/cat.jpg",  # unique local
    "http://[fe80::1]/cat.jpg",  # link-local
    "http://[::ffff:127.0.0.1]/cat.jpg",  # IPv4-mapped loopback
    "http://[::ffff:169.254.169.254]/",
    "http://224.0.0.1/",  # multicast
    "http://0.0.0.0/",  # unspecified
    "http://240.0.0.1/",  # reserved
    "https://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
]


@pytest.fixture()
def no_connections(monkeypatch):
    """Any connection attempt fails the test (the guard must decide without one)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the guard connected to something")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError("an IP literal needs no lookup")


@pytest.mark.parametrize("url", REFUSED_ADDRESSES)
def test_private_and_special_addresses_are_refused_without_connecting(no_connections, url):
    with pytest.raises(UnsafeImageURL) as refused:
        check_url(url, False, UnsafeImageURL, resolve=no_dns)
    error = refused.value.to_dict()["error"]
    assert (error["status"], error["code"]) == (422, "invalid_image_url")
    assert error["message"].startswith("image_url resolves to an address that is not public")
    assert url.split("/")[2] not in error["message"]  # never quoted back


@pytest.mark.parametrize("answer", [["10.0.0.1"], ["93.184.216.34", "192.168.0.7"], ["fd00::1"]])
def test_a_name_is_refused_when_any_of_its_addresses_is_private(no_connections, answer):
    with pytest.raises(UnsafeImageURL, match="not public"):
        check_url("https://images.example/cat.jpg", False, UnsafeImageURL, resolve=lambda h, p: answer)


def test_a_public_address_passes_and_the_url_is_kept_as_given(no_connections):
    url = "https://images.example:8443/a/cat.jpg?size=large"
    assert check_url(url, False, UnsafeImageURL, resolve=lambda h, p: ["93.184.216.34"]) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://images.example/cat.jpg", "image_url must be an absolute http:// or https:// URL"),
        ("file:///etc/passwd", "image_url must be an absolute http:// or https:// URL"),
        ("http:///cat.jpg", "image_url must be an absolute http:// or https:// URL"),
        ("/cat.jpg", "image_url must be an absolute http:// or https:// URL"),
        ("http://user:pw@images.example/", "image_url must not carry a user name or password"),
        ("http://127.1/", "image_url has a malformed IPv4 address"),
        ("http://images.example/a b.jpg", "image_url may only contain URL characters"),
    ],
)
def test_malformed_urls_are_refused_naming_the_field(no_connections, url, says):
    with pytest.raises(UnsafeImageURL) as refused:
        check_url(url, False, UnsafeImageURL, resolve=no_dns)
    assert refused.value.message.startswith(says)


def test_a_host_that_does_not_resolve_is_refused(no_connections):
    def nothing(host: str, port: int) -> list[str]:
        raise socket.gaierror("Name or service not known")

    with pytest.raises(UnsafeImageURL, match="image_url host does not resolve"):
        check_url("http://nowhere.example/", False, UnsafeImageURL, resolve=nothing)


def test_the_allowance_lets_loopback_through_but_not_the_url_rules(no_connections):
    assert check_url("http://127.0.0.1:9/cat.jpg", True, UnsafeImageURL, resolve=no_dns)
    with pytest.raises(UnsafeImageURL, match="http:// or https://"):
        check_url("gopher://127.0.0.1/", True, UnsafeImageURL, resolve=no_dns)


def test_callback_urls_keep_their_own_code_and_status(no_connections):
    with pytest.raises(UnsafeCallbackURL) as refused:
        check_url("http://10.0.0.1/hook", False, resolve=no_dns)
    assert (refused.value.status, refused.value.code) == (400, "invalid_callback_url")
    assert refused.value.message.startswith("callback_url resolves")


def test_a_name_server_that_never_answers_is_given_up_on(monkeypatch, no_connections):
    """getaddrinfo has no deadline of its own: a hostile name server would hold the submit (and
    each hop of the worker's fetch) as long as the system resolver retries, past every timeout."""
    released = threading.Event()

    def hanging(*args, **kwargs):
        released.wait(10)
        raise socket.gaierror("Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    monkeypatch.setattr(outbound_urls, "RESOLVE_TIMEOUT", 0.2)
    started = time.monotonic()
    try:
        with pytest.raises(UnsafeImageURL, match="image_url host does not resolve"):
            check_url("http://slow-dns.example/cat.jpg", False, UnsafeImageURL)
        assert time.monotonic() - started < 2
    finally:
        released.set()
