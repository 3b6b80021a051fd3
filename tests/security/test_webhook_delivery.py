"""Webhook delivery against listeners on 127.0.0.1: resolve once, connect to the vetted address.

Names are resolved by injected resolvers (never real DNS), and every connection these tests
allow goes to loopback; where a test needs the client to *choose* a public address, the
socket opener is replaced by a recorder that refuses instead of connecting.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import traceback

import pytest
from rq import Queue, SimpleWorker
from rq.job import JobStatus

from imgsvc.config import Settings
from imgsvc.outbound_urls import check_callback_url, parse_callback_url
from imgsvc.queue import webhooks
from imgsvc.queue.webhooks import (
    SIGNATURE_HEADER,
    WebhookDeliveryFailed,
    enqueue_delivery,
    post_signed,
    sign,
)
from tests.conftest import TEST_REDIS_URL
from tests.integration.procs import wait_until
from tests.security.listener import DripReceiver, Listener, self_signed_certificate

PUBLIC = "93.184.216.34"
BODY = b'{"job_id": "j", "status": "done"}'


class Resolver:
    """Answers a name from a script of answers, one per lookup, and counts the lookups."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers[min(len(self.calls), len(self.answers)) - 1]


def deliver_to(url: str, allow_private: bool, resolve: Resolver, **kwargs) -> int:
    return post_signed(
        parse_callback_url(url), BODY, sign(BODY, "k"), allow_private, resolve=resolve, **kwargs
    )


def test_delivery_resolves_once_and_connects_to_that_address_with_the_names_host_header():
    # A second lookup would answer 127.0.0.2, where nothing listens: the POST only arrives
    # if the connection went to the address of the one and only lookup.
    resolve = Resolver(["127.0.0.1"], ["127.0.0.2"])
    with Listener() as listener:
        url = f"http://hooks.example.test:{listener.port}/hook?x=1"
        assert deliver_to(url, allow_private=True, resolve=resolve) == 204
    assert resolve.calls == ["hooks.example.test"]
    (received,) = listener.received
    assert received.path == "/hook?x=1" and received.body == BODY
    assert received.headers["Host"] == f"hooks.example.test:{listener.port}"
    assert received.headers[SIGNATURE_HEADER] == sign(BODY, "k")


def test_dns_rebinding_to_an_internal_address_is_refused_at_delivery():
    """Public when checked at submit, 127.0.0.1 when delivered: refused, nothing sent."""
    resolve = Resolver([PUBLIC], ["127.0.0.1"])
    with Listener() as listener:
        url = f"http://rebind.example.test:{listener.port}/hook"
        assert check_callback_url(url, allow_private=False, resolve=resolve)
        with pytest.raises(WebhookDeliveryFailed, match="not allowed"):
            deliver_to(url, allow_private=False, resolve=resolve)
    assert listener.received == []


def test_rebinding_after_the_check_cannot_move_the_connection(monkeypatch):
    """Vetted public, then internal on any later lookup: the socket goes to the vetted address."""
    attempts: list[tuple[str, int]] = []

    def recorder(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        raise ConnectionRefusedError("recorded, not connected")

    monkeypatch.setattr(socket, "create_connection", recorder)
    resolve = Resolver([PUBLIC], ["127.0.0.1"])
    with pytest.raises(WebhookDeliveryFailed, match="ConnectionRefusedError"):
        deliver_to("http://rebind.example.test:8080/hook", allow_private=False, resolve=resolve)
    assert attempts == [(PUBLIC, 8080)] and resolve.calls == ["rebind.example.test"]


def test_https_sends_the_name_as_sni_and_checks_the_certificate_against_it(tmp_path):
    cert, key = self_signed_certificate(tmp_path, "hooks.example.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    loopback = Resolver(["127.0.0.1"])
    with Listener(tls=server_tls) as listener:
        url = listener.url("/hook", host="hooks.example.test")
        assert deliver_to(url, allow_private=True, resolve=loopback, tls=client_tls) == 204
        assert listener.server_names == ["hooks.example.test"]
        assert listener.received[0].headers["Host"] == f"hooks.example.test:{listener.port}"
        # The same address under another name: the certificate does not match, nothing is sent.
        with pytest.raises(WebhookDeliveryFailed, match="SSLCertVerificationError"):
            deliver_to(listener.url("/hook", host="other.example.test"), True, loopback, tls=client_tls)
    assert len(listener.received) == 1


def test_redirects_are_never_followed():
    with (
        Listener() as internal,
        Listener(status=302, headers={"Location": internal.url("/admin")}) as hook,
        pytest.raises(WebhookDeliveryFailed, match="HTTP 302"),
    ):
        deliver_to(hook.url(), allow_private=True, resolve=Resolver())
    assert len(hook.received) == 1 and internal.received == []


def test_a_failed_delivery_raises_fixed_text_and_logs_the_details(caplog):
    markup = "<img src=x onerror=alert(document.domain)>"
    with (
        Listener(status=500, reason=markup, body=markup.encode()) as listener,
        caplog.at_level(logging.WARNING, "imgsvc.webhooks"),
        pytest.raises(WebhookDeliveryFailed) as failed,
    ):
        deliver_to(listener.url(), allow_private=True, resolve=Resolver())
    assert str(failed.value) == "webhook receiver answered HTTP 500"
    assert _chain(failed.value) == [
        "imgsvc.queue.webhooks.WebhookDeliveryFailed: webhook receiver answered HTTP 500\n"
    ]
    (record,) = caplog.records
    assert (record.host, record.port, record.status) == ("127.0.0.1", listener.port, 500)

    closed = Listener()
    with closed:
        port = closed.port  # nothing listens there any more once the block ends
    with pytest.raises(WebhookDeliveryFailed) as refused:
        deliver_to(f"http://127.0.0.1:{port}/hook", allow_private=True, resolve=Resolver())
    assert _chain(refused.value) == [
        "imgsvc.queue.webhooks.WebhookDeliveryFailed: webhook delivery failed: ConnectionRefusedError\n"
    ]


def _chain(exc: BaseException) -> list[str]:
    """The exception lines of what RQ stores (and rq-dashboard shows): no chained cause or context."""
    return [line for line in traceback.format_exception(exc) if not line.startswith(("  ", "Traceback"))]


def test_an_address_refused_at_delivery_fails_the_job_without_retries(redis_db):
    """Through RQ: enqueued (as if DNS changed after submit), refused, failed at once, nothing sent."""
    settings = Settings(redis_url=TEST_REDIS_URL)
    with Listener() as listener:
        enqueue_delivery(redis_db, settings, listener.url(), {"job_id": "j", "status": "done"})
        hooks = Queue(settings.webhook_queue_name, connection=redis_db)
        (job,) = hooks.get_jobs()
        SimpleWorker([hooks], connection=redis_db).work(burst=True)
    assert listener.received == []
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert hooks.scheduled_job_registry.get_job_ids() == []
    assert (
        job.latest_result()
        .exc_string.strip()
        .endswith("WebhookDeliveryFailed: webhook refused: the callback address is not allowed")
    )


def test_the_body_sent_is_the_body_signed():
    payload = {"image_description": "a <b>bold</b> & 'quoted' cat", "job_id": "j"}
    with Listener() as listener:
        body = webhooks.json_body(payload)
        post_signed(parse_callback_url(listener.url()), body, sign(body, "k"), True, resolve=Resolver())
    (received,) = listener.received
    assert json.loads(received.body) == payload
    assert received.headers[SIGNATURE_HEADER] == sign(received.body, "k")


def test_a_receiver_that_drips_its_status_line_is_cut_at_the_total_deadline(caplog):
    """Each byte comes well within the per-read timeout; the attempt still ends at its deadline."""
    with DripReceiver() as receiver, caplog.at_level(logging.WARNING, logger="imgsvc.webhooks"):
        with pytest.raises(WebhookDeliveryFailed, match="within the delivery deadline"):
            post_signed(
                parse_callback_url(receiver.url),
                BODY,
                sign(BODY, "k"),
                True,
                resolve=Resolver(),
                deadline_s=2,
            )
        assert wait_until(lambda: receiver.drips and receiver.drips[0].ended, timeout=30)
    (drip,) = receiver.drips
    assert drip.cut_by_client and drip.sent < 60  # before: read on until the receiver stopped
    (record,) = [r for r in caplog.records if r.getMessage() == "webhook delivery failed"]
    assert record.error == "deadline"


def test_deliveries_to_one_host_are_limited_and_others_are_not(redis_db):
    """Past WEBHOOK_PER_HOST, a host's deliveries wait aside; another host's go on the queue."""
    settings = Settings(redis_url=TEST_REDIS_URL, webhook_per_host=2)
    for i in range(4):
        enqueue_delivery(redis_db, settings, "http://slow.example.test/hook", {"job_id": f"s{i}"})
    enqueue_delivery(redis_db, settings, "http://fine.example.test/hook", {"job_id": "f"})
    hooks = Queue(settings.webhook_queue_name, connection=redis_db)
    queued = [job.description for job in hooks.get_jobs()]
    assert queued == ["webhook s0", "webhook s1", "webhook f"]
