"""The security review's attacks, replayed against a real deployment on 127.0.0.1 (issue 11).

Three deployments (see :mod:`tests.security.conftest`):

- ``strict``: production defaults (no private callbacks, no dashboard credentials, no keys),
  RATE_LIMIT=20/minute; gunicorn only, since nothing it accepts may ever be delivered.
- ``dev``: API keys, dashboard credentials, RATE_LIMIT=20/minute and WEBHOOK_ALLOW_PRIVATE=true,
  with a describe worker and a webhook worker, delivering only to listeners on 127.0.0.1.
- ``down``: gunicorn whose Redis is a closed loopback port.

A callback URL that names a public address is only ever sent to be refused at submit (400),
and the test then checks that no row and no delivery exist for it.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job

from imgsvc.config import PROJECT_ROOT
from tests.conftest import empty_owned_db
from tests.integration.procs import free_port, wait_until
from tests.security.conftest import Attacker, Stack, Tally, make_stack
from tests.security.listener import Listener

PUBLIC = "93.184.216.34"
MARKUP = "<img src=x onerror=alert(document.domain)>"
DASHBOARD_AUTH = ("ops", "dashboard-pw")


def picture(seed: int) -> bytes:
    """A small JPEG whose bytes differ per seed (dedupe keys on the bytes)."""
    image = Image.new("RGB", (48, 40), (seed * 37 % 256, 90, 200 - seed % 200))
    image.putpixel((seed % 48, 7), (255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def redis(owned_redis: Redis) -> Iterator[Redis]:
    """The suite's Redis DB (refused when it holds someone else's keys), emptied around the module."""
    empty_owned_db(owned_redis)
    yield owned_redis
    empty_owned_db(owned_redis)


@pytest.fixture(autouse=True)
def fresh_rate_limits(redis: Redis) -> None:
    """Each test starts with full buckets; rate limits are tested where they are meant to be."""
    for key in redis.scan_iter("*imgsvc:limits*"):
        redis.delete(key)


def running(stack: Stack, *parts: str) -> Iterator[Stack]:
    try:
        for part in parts:
            getattr(stack, f"start_{part}")()
        yield stack
    finally:
        stack.stop()
    assert stack.unhandled_errors() == []  # not one request took the 500 path


@pytest.fixture(scope="module")
def strict(redis, tmp_path_factory, tiny_model_dir) -> Iterator[Stack]:
    stack = make_stack("strict", tmp_path_factory.mktemp("strict"), tiny_model_dir, RATE_LIMIT="20/minute")
    yield from running(stack, "web")


@pytest.fixture(scope="module")
def dev(redis, tmp_path_factory, tiny_model_dir) -> Iterator[Stack]:
    stack = make_stack(
        "dev",
        tmp_path_factory.mktemp("dev"),
        tiny_model_dir,
        API_KEYS="alpha,beta",
        RATE_LIMIT="20/minute",
        RQ_DASHBOARD_USERNAME=DASHBOARD_AUTH[0],
        RQ_DASHBOARD_PASSWORD=DASHBOARD_AUTH[1],
        WEBHOOK_ALLOW_PRIVATE="true",
    )
    yield from running(stack, "web", "worker", "webhook_worker")


@pytest.fixture(scope="module")
def down(redis, tmp_path_factory, tiny_model_dir) -> Iterator[Stack]:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    stack = make_stack("down", tmp_path_factory.mktemp("down"), tiny_model_dir, REDIS_URL=dead_redis)
    yield from running(stack, "web")


@pytest.fixture()
def at_strict(strict: Stack, tally: Tally) -> Attacker:
    return Attacker(strict.url, tally)


@pytest.fixture()
def at_dev(dev: Stack, tally: Tally) -> Attacker:
    return Attacker(dev.url, tally)


def no_delivery_can_follow(redis: Redis, stack: Stack, url: str) -> bool:
    """No row carries the URL (deliveries are made from rows) and no delivery waits anywhere."""
    hooks = Queue(stack.env["WEBHOOK_QUEUE"], connection=redis)
    registries = (hooks.scheduled_job_registry, hooks.failed_job_registry, hooks.started_job_registry)
    return stack.rows("callback_url = ?", url) == [] and hooks.count == 0 and not any(map(len, registries))


# -- Webhook SSRF (HIGH): refused at submit, never queued ---------------------------------------
SSRF_URLS = {
    "backslash-differential": f"http://127.0.0.1:18999\\@{PUBLIC}/j",
    "markup-host": f"http://{MARKUP}\\@{PUBLIC}/",
    "userinfo": f"http://127.0.0.1:18999@{PUBLIC}/j",
    "loopback": "http://127.0.0.1:6379/",
    "metadata": "http://169.254.169.254/latest/meta-data/",
    "ipv4-compatible": "http://[::127.0.0.1]/",
    "ipv4-mapped": "http://[::ffff:127.0.0.1]:6379/",
    "nat64": "http://[64:ff9b::7f00:1]/",
    "6to4": "http://[2002:7f00:1::]/",
    "teredo": "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "integer-ipv4": "http://2130706433/",
    "short-ipv4": "http://127.1:6379/",
    "malformed-ipv6": "http://[::1::2]/",
    "control-character": "http://127.0.0.1/\r\nX-Injected: 1",
    "gopher": "gopher://127.0.0.1:6379/_FLUSHALL",
}


@pytest.mark.parametrize("url", SSRF_URLS.values(), ids=SSRF_URLS.keys())
def test_hostile_callback_urls_are_refused_at_submit_and_nothing_is_queued(at_strict, strict, redis, url):
    response = at_strict.submit(picture(1), callback_url=url)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_callback_url"
    assert "<" not in error["message"] and PUBLIC not in error["message"]
    assert no_delivery_can_follow(redis, strict, url)


def test_private_callbacks_allowed_still_refuse_parser_differentials(at_dev, dev, redis):
    """WEBHOOK_ALLOW_PRIVATE=true (development) keeps the one parser: the old bypass still fails."""
    with Listener() as listener:
        for url in (f"http://127.0.0.1:{listener.port}\\@{PUBLIC}/j", f"http://x@127.0.0.1:{listener.port}/"):
            response = at_dev.submit(picture(2), key="alpha", callback_url=url)
            assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_callback_url"
        assert dev.rows("callback_url IS NOT NULL AND callback_url LIKE ?", f"%{PUBLIC}%") == []
    assert listener.received == []


# -- Stored XSS (HIGH): what a receiver says never reaches the dashboard's HTML ---------------
def failed_delivery(redis: Redis, stack: Stack, job_id: str) -> Job:
    """The RQ job delivering ``job_id``'s webhook, once it has failed for good.

    RQ records the exception (what the dashboard shows) only when no retry is left; rather
    than wait out the backoff (2 s ... 30 min), its first failure leaves it no retries.
    """
    hooks = Queue(stack.env["WEBHOOK_QUEUE"], connection=redis)

    def find(registry) -> Job | None:
        jobs = Job.fetch_many(registry.get_job_ids(), connection=redis)
        return next((j for j in jobs if j and j.description == f"webhook {job_id}"), None)

    assert wait_until(lambda: find(hooks.scheduled_job_registry), timeout=60), "never failed once"
    retrying = find(hooks.scheduled_job_registry)
    retrying.retries_left = 0
    retrying.save()
    assert wait_until(lambda: find(hooks.failed_job_registry), timeout=60), "never failed for good"
    return find(hooks.failed_job_registry)


def test_a_failed_delivery_shows_only_fixed_text_on_the_dashboard_job_page(at_dev, dev, redis, tmp_path):
    # The receiver answers 500 with markup in its reason phrase and body: the review's payload.
    with Listener(status=500, reason=MARKUP, body=MARKUP.encode()) as listener:
        job_id = at_dev.submit(picture(3), key="alpha", callback_url=listener.url()).json()["job_id"]
        assert dev.wait_for_job(job_id)["status"] == "done"
        rq_id = failed_delivery(redis, dev, job_id).id
        assert len(listener.received) == 2  # the first try and the one that failed for good
    data = at_dev.send("GET", f"/rq/0/data/job/{rq_id}.json", auth=DASHBOARD_AUTH, hostile=False).json()
    assert data["exc_info"].strip().endswith("WebhookDeliveryFailed: webhook receiver answered HTTP 500")
    shown = json.dumps(data)
    assert "<" not in shown and "onerror" not in shown and f":{listener.port}" not in shown
    page = at_dev.send("GET", f"/rq/0/view/job/{rq_id}", auth=DASHBOARD_AUTH, hostile=False)
    assert page.status_code == 200 and "onerror" not in page.text
    rendered = render_in_chromium(f"{dev.url}/rq/0/view/job/{rq_id}", tmp_path)
    assert rendered["alerts"] == [] and rendered["images"] == 0
    assert "webhook receiver answered HTTP 500" in rendered["exc_info"]


def render_in_chromium(url: str, tmp_path: Path) -> dict:
    """rq-dashboard renders the job client-side (underscore's raw ``<%= %>``): so look in a browser."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.integration.test_pages import start_chromium

    driver = start_chromium(tmp_path / "chromium-profile")
    try:
        credentials = base64.b64encode(":".join(DASHBOARD_AUTH).encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}}
        )
        driver.execute_cdp_cmd(  # any alert(), confirm() or prompt() an injected tag calls is recorded
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "window.__alerts = []; window.alert = window.confirm = window.prompt = "
                "(m) => window.__alerts.push(String(m));"
            },
        )
        driver.get(url)
        WebDriverWait(driver, 30).until(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "pre.exc_info")
                and d.find_element(By.CSS_SELECTOR, "pre.exc_info").text.strip()
            )
        )
        return {
            "alerts": driver.execute_script("return window.__alerts"),
            "images": len(driver.find_elements(By.CSS_SELECTOR, "#job-data img")),
            "exc_info": driver.find_element(By.CSS_SELECTOR, "pre.exc_info").text,
        }
    finally:
        driver.quit()


# -- The dashboard (HIGH): never open by accident, no cross-site state changes --------------------
DASHBOARD_ROUTES = [
    ("GET", "/rq/"),
    ("GET", "/rq/0/data/queues.json"),
    ("POST", "/rq/queue/sec-strict/queued/empty"),
    ("POST", "/rq/job/00000000-0000-0000-0000-000000000000/delete"),
    ("GET", "/rq/requeue/sec-strict"),
]


@pytest.mark.parametrize(("method", "path"), DASHBOARD_ROUTES)
def test_without_credentials_the_dashboard_is_not_mounted_whatever_is_sent(at_strict, method, path):
    basic = "Basic " + base64.b64encode(b"admin:admin").decode()
    for headers in ({}, {"X-API-Key": "anything"}, {"Authorization": basic}):
        response = at_strict.send(method, path, headers=headers)
        assert response.status_code == 404 and response.json()["error"]["status"] == 404


def test_the_dashboard_needs_credentials_and_a_same_origin_request_to_change_state(at_dev, dev, redis):
    sentinel = Queue("sec-dev-sentinel", connection=redis)  # no worker listens: it only waits
    job = sentinel.enqueue("builtins.len", "x")
    anonymous = at_dev.send("GET", "/rq/")
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert at_dev.send("GET", "/rq/", auth=("ops", "wrong")).status_code == 401
    assert at_dev.send("GET", "/rq/", auth=DASHBOARD_AUTH, hostile=False).status_code == 200

    state_changes = [
        ("POST", "/rq/queue/sec-dev-sentinel/queued/empty"),
        ("POST", f"/rq/job/{job.id}/delete"),
        ("GET", "/rq/requeue/sec-dev-sentinel"),  # rq-dashboard changes state on this GET too
    ]
    cross_site = [
        {},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Referer": "http://evil.example/dashboard-csrf.html"},
        {"Origin": f"http://127.0.0.1:{free_port()}"},  # same host, another port: another origin
    ]
    for method, path in state_changes:
        assert at_dev.send(method, path, headers={"Origin": dev.url}).status_code == 401
        for headers in cross_site:
            refused = at_dev.send(method, path, auth=DASHBOARD_AUTH, headers=headers)
            assert refused.status_code == 403, (method, path, headers)
            assert refused.json()["error"]["code"] == "forbidden"
    assert sentinel.count == 1 and job.get_status(refresh=True) == "queued"

    for headers in ({"Origin": dev.url}, {"Referer": f"{dev.url}/rq/0/view/queues"}):
        emptied = at_dev.send(
            "POST", "/rq/queue/sec-dev-sentinel/queued/empty", auth=DASHBOARD_AUTH, headers=headers
        )
        assert emptied.status_code == 200 and emptied.json() == {"status": "OK"}
    assert sentinel.count == 0


# -- Rate limits: per valid key, per address otherwise ------------------------------------------
def test_made_up_key_headers_open_no_new_bucket(at_strict):
    assert {at_strict.send("GET", "/api/v1/jobs", hostile=False).status_code for _ in range(20)} == {200}
    junk = [
        at_strict.send("GET", "/api/v1/jobs", headers={"X-API-Key": f"junk{n}"}).status_code
        for n in range(20)
    ]
    junk.append(at_strict.send("GET", "/api/v1/jobs", headers={"Authorization": "Bearer junk"}).status_code)
    assert set(junk) == {429}  # before: 20/20 answered 200
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):  # never limited
        assert at_strict.send("GET", path, hostile=False).status_code == 200, path


def test_guessing_keys_runs_into_the_limit_and_valid_keys_keep_their_own_bucket(at_dev):
    codes = [
        at_dev.send("GET", "/api/v1/jobs", headers={"X-API-Key": f"guess{n}"}).status_code for n in range(30)
    ]
    assert codes == [401] * 20 + [429] * 10  # before: 30 x 401
    assert (
        at_dev.send("GET", "/api/v1/jobs", headers={"X-API-Key": "alpha"}, hostile=False).status_code == 200
    )


# -- Malformed input: 4xx, never 500, no silent coercion ----------------------------------------
@pytest.mark.parametrize(
    "header", [b"Authorization: Bearer \xc3\xa9", b"X-API-Key: \xff\xfe", b"Authorization: Bearer \x80alpha"]
)
def test_a_non_ascii_key_is_401(at_dev, header):
    request = b"GET /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    assert at_dev.raw(request) == 401


MALFORMED_OPTIONS = {
    "nested-100000-deep": {"options": "[" * 100_000 + "]" * 100_000},
    "nested-object-deep": {"options": '{"a":' * 50_000 + "1" + "}" * 50_000},
    "overflowing-float": {"options": '{"max_length": 1e400}'},
    "nan": {"options": '{"max_length": NaN}'},
    "bool-for-int": {"options": '{"max_length": true}'},
    "fraction-for-int": {"options": '{"max_length": 5.9}'},
    "huge-int": {"options": '{"max_length": ' + "9" * 5000 + "}"},
    "number-for-string": {"options": '{"prompt": 5}'},
    "list-for-string": {"options": '{"prompt": ["a"]}'},
    "field-fraction": {"max_length": "5.9"},
    "field-bool": {"max_length": "true"},
    "field-float-overflow": {"max_length": "1e400"},
    "field-unicode-digits": {"max_length": "\u0661\u0662"},
}


@pytest.mark.parametrize("fields", MALFORMED_OPTIONS.values(), ids=MALFORMED_OPTIONS.keys())
def test_malformed_options_are_400(at_dev, dev, fields):
    response = at_dev.submit(picture(4), key="beta", **fields)
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request"


def test_well_formed_options_still_work_as_fields_or_json(at_dev):
    for fields in ({"max_length": "12"}, {"options": '{"max_length": 12}'}):
        response = at_dev.submit(picture(5), key="beta", hostile=False, **fields)
        assert response.status_code == 202, response.text


# -- Dedupe scoped to the owner: no cross-key oracle --------------------------------------------
def test_another_key_never_learns_that_the_same_bytes_were_uploaded(at_dev, dev):
    image = picture(6)
    first = at_dev.submit(image, key="alpha", hostile=False).json()["job_id"]
    assert dev.wait_for_job(first)["status"] == "done"
    again = at_dev.submit(image, key="alpha", hostile=False).json()
    assert again.get("cached") is True  # dedupe still works within one key
    other = at_dev.submit(image, key="beta")
    assert other.status_code == 202
    assert other.json()["status"] == "queued" and "cached" not in other.json()  # before: cached at once
    assert at_dev.send("GET", f"/api/v1/status/{first}", headers={"X-API-Key": "beta"}).status_code == 404


# -- Infrastructure faults: 503 + Retry-After, no address; /metrics degrades --------------------
def test_redis_down_is_503_without_its_address_and_metrics_still_answer(down, tally):
    attacker = Attacker(down.url, tally)
    response = attacker.send(
        "POST", "/api/v1/submit", files={"file": ("x.jpg", picture(7))}, hostile=False, expect_503=True
    )
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "queue_unavailable"
    dead_port = down.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    assert "127.0.0.1" not in response.text and dead_port not in response.text
    assert down.rows() == [] and list((Path(down.env["UPLOAD_DIR"])).iterdir()) == []
    metrics = attacker.send("GET", "/metrics", hostile=False)
    assert metrics.status_code == 200 and "imgsvc_redis_up 0.0" in metrics.text
    ready = attacker.send("GET", "/readyz", hostile=False, expect_503=True)
    assert ready.status_code == 503 and "127.0.0.1" not in ready.text
    assert attacker.send("GET", "/healthz", hostile=False).status_code == 200


def test_metrics_say_redis_is_up_when_it_is(at_strict):
    assert "imgsvc_redis_up 1.0" in at_strict.send("GET", "/metrics", hostile=False).text


# -- gunicorn 27's control socket: one per instance ---------------------------------------------
def test_two_gunicorns_on_one_host_keep_their_own_control_sockets(tmp_path, tiny_model_dir):
    from gunicorn.ctl.client import ControlClient

    home = tmp_path / "shared-home"  # the same user: gunicorn's default would be one path for both
    first, second = (
        make_stack(name, tmp_path / name, tiny_model_dir, HOME=str(home)) for name in ("ctl-a", "ctl-b")
    )
    sockets = {s.name: PROJECT_ROOT / "instance" / f"gunicorn-{s.port}.ctl" for s in (first, second)}
    try:
        first.start_web()
        second.start_web()
        assert wait_until(lambda: all(p.exists() for p in sockets.values()), timeout=30)
        first.stop()
        assert not sockets["ctl-a"].exists()  # the first removed its own socket ...
        with ControlClient(str(sockets["ctl-b"]), timeout=10) as client:  # ... and only its own
            assert client.send_command("show workers")
    finally:
        first.stop()
        second.stop()
    assert not sockets["ctl-b"].exists()
