"""The one callback-URL parser and the address vetting, without any network (resolvers are injected)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from imgsvc.outbound_urls import (
    UnsafeCallbackURL,
    check_callback_url,
    embedded_ipv4,
    is_public,
    parse_callback_url,
    vetted_addresses,
)
from imgsvc.queue.webhooks import json_body

PUBLIC = "93.184.216.34"  # never contacted: every URL naming it must be refused or only parsed

# Each was accepted by the old check (urlsplit) or read differently by the HTTP client.
HOSTILE_URLS = {
    "backslash-userinfo": f"http://127.0.0.1:18999\\@{PUBLIC}/j",
    "markup-host": f"http://<img src=x onerror=alert(document.domain)>\\@{PUBLIC}/",
    "userinfo": f"http://user:pw@{PUBLIC}/",
    "userinfo-to-loopback": f"http://{PUBLIC}@127.0.0.1/",
    "space": "http://127.0.0.1 /x",
    "tab": "http://127.0.0.1/\tx",
    "newline-header-injection": "http://127.0.0.1/x\r\nX-Injected: 1",
    "nul": "http://127.0.0.1\x00.example.com/",
    "non-ascii": "http://ex\u0430mple.com/",
    "fullwidth-dot": "http://127\uff0e0\uff0e0\uff0e1/",
    "quote-in-path": 'http://example.com/"onmouseover=alert(1)',
    "angle-in-query": "http://example.com/?q=<script>",
    "short-ipv4": "http://127.1/",
    "integer-ipv4": "http://2130706433/",
    "hex-ipv4": "http://0x7f.0.0.1/",
    "octal-ipv4": "http://0177.0.0.1/",
    "leading-zero-ipv4": "http://08.1.1.1/",
    "zero-ipv4": "http://0/",
    "percent-encoded-host": "http://%31%32%37.0.0.1/",
    "encoded-slash-before-userinfo": "http://1.1.1.1%2f@127.0.0.1/",
    "ipv6-zone": "http://[fe80::1%25eth0]/",
    "bad-ipv6": "http://[::1::2]/",
    "two-ports": "http://127.0.0.1:80:81/",
    "port-zero": "http://127.0.0.1:0/",
    "port-too-big": "http://127.0.0.1:65536/",
    "empty-host": "http:///x",
    "no-scheme": "//127.0.0.1/",
    "ftp": "ftp://example.com/x",
    "javascript": "javascript:alert(1)",
    "file": "file:///etc/passwd",
    "gopher": "gopher://127.0.0.1:6379/_FLUSHALL",
    "underscore-host": "http://a_b.example.com/",
    "label-with-hyphen-edge": "http://-a.example.com/",
    "empty-label": "http://a..example.com/",
    "too-long": "http://example.com/" + "a" * 2048,
}


@pytest.mark.parametrize("url", HOSTILE_URLS.values(), ids=HOSTILE_URLS.keys())
@pytest.mark.parametrize("allow_private", [False, True])
def test_hostile_urls_are_refused_by_the_one_parser_even_when_private_is_allowed(url, allow_private):
    with pytest.raises(UnsafeCallbackURL) as refused:
        check_callback_url(url, allow_private, resolve=_no_dns)
    assert PUBLIC not in refused.value.message and "<" not in refused.value.message


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "target"),
    [
        ("HTTPS://Hooks.Example.COM:8443/a/b?c=d#frag", "https", "hooks.example.com", 8443, "/a/b?c=d"),
        ("http://example.com", "http", "example.com", 80, "/"),
        ("https://example.com/x", "https", "example.com", 443, "/x"),
        (f"http://{PUBLIC}:8080/hook", "http", PUBLIC, 8080, "/hook"),
        ("http://[2606:4700::1111]/h", "http", "2606:4700::1111", 80, "/h"),
        ("http://[::FFFF:127.0.0.1]/", "http", "::ffff:7f00:1", 80, "/"),
    ],
)
def test_the_parser_hands_the_client_parts_not_a_url(url, scheme, host, port, target):
    parsed = parse_callback_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.target) == (scheme, host, port, target)


NOT_PUBLIC = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",  # multicast is "global" to Python
    "255.255.255.255",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fec0::1",  # site-local
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible ([::127.0.0.1] in a URL)
    "::ffff:0:10.0.0.1",  # IPv4-translated
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::5db8:d822",  # local-use NAT64, whatever it embeds
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo whose client is 192.0.2.45
]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_internal_addresses_and_ipv6_forms_that_reach_them_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", [PUBLIC, "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_public_addresses_stay_public_also_inside_ipv6(address):
    assert is_public(ipaddress.ip_address(address))


def test_embedded_ipv4_is_what_the_ipv6_form_reaches():
    assert embedded_ipv4(ipaddress.IPv6Address("64:ff9b::7f00:1")) == [ipaddress.IPv4Address("127.0.0.1")]
    assert embedded_ipv4(ipaddress.IPv6Address("2002:7f00:1::")) == [ipaddress.IPv4Address("127.0.0.1")]
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1111")) == []


@pytest.mark.parametrize(
    "url",
    ["http://[::127.0.0.1]/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://10.0.0.1/"],
)
def test_internal_literals_are_refused_at_submit_without_any_lookup(url):
    with pytest.raises(UnsafeCallbackURL, match="not public") as refused:
        check_callback_url(url, allow_private=False, resolve=_no_dns)
    # Issue 22: a developer with a listener on loopback learns which setting allows it.
    assert "WEBHOOK_ALLOW_PRIVATE=true" in refused.value.message


def test_a_name_is_refused_when_any_of_its_addresses_is_internal():
    answers = {"hooks.example.test": [PUBLIC, "10.0.0.7"], "good.example.test": [PUBLIC, "2606:4700::1111"]}

    def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    with pytest.raises(UnsafeCallbackURL, match="not public") as refused:
        check_callback_url("https://hooks.example.test/h", allow_private=False, resolve=resolve)
    assert "10.0.0.7" not in refused.value.message and "hooks" not in refused.value.message
    assert check_callback_url("https://good.example.test/h", False, resolve=resolve)
    good = parse_callback_url("https://good.example.test/h")
    assert [str(a) for a in vetted_addresses(good, False, resolve)] == [PUBLIC, "2606:4700::1111"]


def test_a_name_that_does_not_resolve_is_refused_without_quoting_it():
    def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(UnsafeCallbackURL, match="does not resolve") as refused:
        check_callback_url("http://nowhere.example.test/", allow_private=False, resolve=fails)
    assert "nowhere" not in refused.value.message


def test_allow_private_skips_vetting_but_not_parsing():
    assert check_callback_url("http://127.0.0.1:9/h", allow_private=True, resolve=_no_dns)
    with pytest.raises(UnsafeCallbackURL):
        check_callback_url("http://127.0.0.1:9\\@example.com/", allow_private=True, resolve=_no_dns)


def test_webhook_body_is_json_that_is_inert_in_html():
    payload = {"image_description": "<img src=x onerror=alert(1)> & 'quoted'", "job_id": "j"}
    body = json_body(payload)
    assert json.loads(body) == payload
    assert not set(body.decode()) & set("<>&'")


def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"no lookup should happen for {host}")
